"""Claim a dead-letter file for one replay: lock, move aside, put back what was not re-sent.

The file is renamed aside and copied into ``FILE.replaying``, a working copy locked with
``flock`` for the duration of the replay. A logger that keeps running meanwhile appends its new
dead letters to a fresh ``FILE`` (its writer opens the path for every append), so nothing written
concurrently is lost or replayed twice. At the end the letters that were not re-sent are appended
to ``FILE`` and the working copy is removed: the file is never truncated before that point. A
replay that is interrupted leaves ``FILE.replaying`` behind, and the next replay of ``FILE``
takes it up again (re-sending what was already delivered: at-least-once).

The renamed file is ``FILE.replaying.in.N``, where ``N`` is the working copy's size just before
it was renamed: the rename both moves the letters aside and records where their copy starts. It
stays until the end of the replay, so that a logger that opened ``FILE`` just before the rename
can still append to it (its late letters are picked up at the end). A replay killed at any point
leaves the copy of it, whole or partial, past byte ``N`` of the working copy: the next replay
cuts the working copy back to ``N`` and copies the file again, so no letter is held twice.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Final

from ._oswrite import write_all

if sys.platform != "win32":
    import fcntl

__all__ = ["WORK_SUFFIX", "Claim"]

WORK_SUFFIX: Final = ".replaying"
_INCOMING_SUFFIX: Final = ".replaying.in"  # + "." + the working copy's size before the copy
_BLOCK: Final = 1 << 20
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
# Never through a symlink: a replay often runs as root, and the names here are predictable.
_FLAGS: Final = _NOFOLLOW | os.O_CLOEXEC


def _refused(path: str) -> OSError:
    return OSError(errno.ELOOP, "is a symbolic link or no regular file: not replayed", path)


def _open_regular(path: str, flags: int, mode: int = 0o600) -> int:
    """Open ``path`` if it is a regular file, never through a symlink; return the descriptor.

    Raises:
        OSError: ``ELOOP`` (see :func:`_refused`) for a link or anything not a regular file.
    """
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the replay in open().
        fd = os.open(path, flags | _FLAGS | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(path)
    os.set_blocking(fd, True)
    return fd


class Claim:
    """Exclusive ownership of a dead-letter file's content for one replay."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.work = path + WORK_SUFFIX
        self.incoming: str | None = None  # the file renamed aside by this replay
        self.fd = -1
        self.copied = 0
        self.resumed = False
        # Permission bits for the file rebuilt at release: those of the file claimed, so
        # that letters put back are never readable by more people than before.
        self.mode = 0o600

    def acquire(self) -> None:
        """Lock the working copy and move the file's content into it."""
        self._lock()
        try:
            left = self._left_incoming()
            self.resumed = os.fstat(self.fd).st_size > 0 or bool(left)
            for name, base in left:
                # An interrupted replay renamed this file aside and may have copied some or all
                # of it (and a logger may have appended to it since): copy it again, whole,
                # over what it left past `base`.
                if base is not None and base < os.fstat(self.fd).st_size:
                    os.ftruncate(self.fd, base)
                self._copy(name)
                os.unlink(name)
            incoming = f"{self.path}{_INCOMING_SUFFIX}.{os.fstat(self.fd).st_size}"
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                if not self.resumed:
                    raise FileNotFoundError(
                        errno.ENOENT, os.strerror(errno.ENOENT), self.path
                    ) from None
            else:
                if not stat.S_ISREG(st.st_mode):
                    # Renaming a link aside and copying it would put its target's content in
                    # the files written back, with other permissions.
                    raise _refused(self.path)
                self.mode = stat.S_IMODE(st.st_mode) & 0o666
                # New dead letters of a running logger now go to a fresh file at `path`.
                os.rename(self.path, incoming)
                self.incoming = incoming
                self.copied = self._copy(incoming)
        except BaseException:
            self._unlock(remove=not self.resumed and os.fstat(self.fd).st_size == 0)
            raise

    def _left_incoming(self) -> list[tuple[str, int | None]]:
        """Return the files an interrupted replay renamed aside, with where their copy starts.

        ``None``: a plain ``FILE.replaying.in`` of an older version, which does not say.
        """
        folder, base = os.path.split(self.path)
        prefix = base + _INCOMING_SUFFIX
        found: list[tuple[str, int | None]] = []
        for name in os.listdir(folder or "."):
            if name == prefix:
                found.append((os.path.join(folder, name), None))
            elif name.startswith(prefix + "."):
                size = name[len(prefix) + 1 :]
                if size.isascii() and size.isdigit():
                    found.append((os.path.join(folder, name), int(size)))
        # Only one is ever left by this version; the oldest first otherwise.
        found.sort(key=lambda item: -1 if item[1] is None else item[1])
        return found

    def _lock(self) -> None:
        while True:
            fd = _open_regular(self.work, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            if sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise BlockingIOError(
                        errno.EWOULDBLOCK,
                        f"another replay of {self.path} is running ({self.work} is locked)",
                    ) from None
            try:
                # A replay that just finished may have removed the name we opened: retry.
                if os.path.samestat(os.fstat(fd), os.lstat(self.work)):
                    self.fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def _copy(self, source: str) -> int:
        """Append ``source`` to the working copy, ending it with a newline; return its size."""
        size = 0
        with open(_open_regular(source, os.O_RDONLY), "rb") as fh:
            last = b"\n"
            while block := fh.read(_BLOCK):
                _write_all(self.fd, block)
                size += len(block)
                last = block[-1:]
        if last != b"\n":
            _write_all(self.fd, b"\n")
        os.fsync(self.fd)
        return size

    def _late(self) -> bytes:
        """Return what a logger appended to the renamed file after it was copied."""
        if self.incoming is None:
            return b""
        try:
            with open(_open_regular(self.incoming, os.O_RDONLY), "rb") as fh:
                # Written by a logger that opened the file just before it was renamed.
                fh.seek(self.copied)
                late = fh.read()
        except FileNotFoundError:
            return b""
        return late + b"\n" if late and not late.endswith(b"\n") else late

    def release(self, leftovers: list[bytes]) -> None:
        """Put what was not re-sent back into the file, then drop the working copy."""
        data = b"".join(leftovers) + self._late()
        if data:
            fd = _open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._drop_incoming()
        self._unlock(remove=True)

    def abandon(self) -> None:
        """Keep everything in the working copy for the next replay, and unlock it."""
        late = self._late()
        if late:
            _write_all(self.fd, late)
            os.fsync(self.fd)
        self._drop_incoming()
        self._unlock(remove=False)

    def _drop_incoming(self) -> None:
        if self.incoming is not None:
            try:
                os.unlink(self.incoming)
            except FileNotFoundError:
                pass
            self.incoming = None

    def _unlock(self, *, remove: bool) -> None:
        if remove:
            try:
                os.unlink(self.work)
            except FileNotFoundError:
                pass
        os.close(self.fd)  # releases the flock
        self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    _, error = write_all(fd, data)
    if error is not None:
        raise error
