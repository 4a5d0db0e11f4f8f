"""The files a FileSink has open: opened on demand, reopened when replaced, rotated when due."""

from __future__ import annotations

import errno
import io
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from .._threads import Worker, WorkerBusyError
from . import _flock, _rotation
from ._file_upkeep import ROTATE_RETRY_S, Housekeeper, Reporter, RotationPolicy, Syncer

__all__ = ["LiveFile", "LiveFiles", "NoReaderError", "filesystem_type", "is_remote"]

_MAX_OPEN: Final = 64
_MAX_ATTEMPTS: Final = 16  # reopens and rotations for one append; 3 suffice unless pathological


# Walk the directories a template fills in one by one, each opened without following a link.
_WALK: Final = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)


def split_path(path: str, trusted: str | None) -> tuple[str, list[str]]:
    """Return the directory of ``path`` that the configuration names, and the parts below it.

    ``trusted`` is the directory part of a path template before its first placeholder: what
    comes after it was filled in from entries, and may meet a planted link.
    """
    if trusted is not None:
        prefix = trusted if not trusted or trusted.endswith(os.sep) else trusted + os.sep
        if path.startswith(prefix):
            parts = [part for part in path[len(prefix) :].split(os.sep) if part]
            if parts:
                return trusted, parts
    base, name = os.path.split(path)
    return base, [name]


def _open_no_link(
    path: str, flags: int, mode: int = 0o666, trusted: str | None = None, mkdir: bool = False
) -> int:
    """Open as ``open()`` would, but never through a symlink at ``path`` itself, nor at a
    directory that a placeholder filled in (made here when ``mkdir``).

    The file names are predictable (``log_{date}.jsonl``) and the library often runs as root:
    a link planted there must not get log text appended to its target.
    """
    flags |= _rotation.NOFOLLOW | os.O_CLOEXEC
    try:
        if not _WALK:  # pragma: no cover - no openat (Windows): the last part only
            return os.open(path, flags, mode)
        base, parts = split_path(path, trusted)
        # The configured directory may itself be a link: that is the user's choice.
        dir_fd = os.open(base or ".", os.O_RDONLY | _DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                if mkdir:
                    try:
                        os.mkdir(part, 0o777, dir_fd=dir_fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(
                        part,
                        os.O_RDONLY | _DIRECTORY | _rotation.NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dir_fd,
                    )
                except NotADirectoryError as exc:  # what Linux says for a link and O_DIRECTORY
                    if stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from exc
                    raise
                os.close(dir_fd)
                dir_fd = child
            return os.open(parts[-1], flags, mode, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _rotation.refused_link(path) from exc
        if exc.filename != path:  # name the whole path, not the part the walk was at
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise


# Filesystems where a write, a stat or an fsync can block for as long as a server or another
# process takes to answer (a hung NFS server, a stalled FUSE daemon): "auto" writes their files
# on the sink's thread, never on the loop. By the type /proc/self/mountinfo gives the mount.
_REMOTE: Final = frozenset(
    {
        "9p", "afs", "beegfs", "ceph", "cifs", "coda", "davfs", "fuse", "fuseblk", "gfs2",
        "glusterfs", "gpfs", "lustre", "ncpfs", "nfs", "nfs4", "ocfs2", "orangefs", "smb3",
        "smbfs", "virtiofs",
    }
)  # fmt: skip


def filesystem_type(dev: int) -> str | None:
    """Return the type of the filesystem of device ``dev`` (a file's ``st_dev``): ``"ext4"``,
    ``"nfs4"``..., if known."""
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                # "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw"
                fields = line.split()
                if len(fields) > 3 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split(None, 1)[0]
    except OSError:  # not Linux, or no /proc
        return None
    return None


def is_remote(fs_type: str | None) -> bool:
    """Whether a filesystem of ``fs_type`` may keep a write or a stat waiting for long."""
    return fs_type is not None and (fs_type in _REMOTE or fs_type.startswith("fuse."))


def _close_all(files: list[io.FileIO]) -> None:
    for fh in files:
        try:
            fh.close()
        except OSError:  # closed all the same (a failed flush at close is reported by NFS)
            pass


def _open_and_inspect(
    path: str, opener: Callable[[str, int], int], makedirs: str
) -> tuple[io.FileIO, os.stat_result, bool]:
    # On the sink's thread, as everything here: on a hung mount even a stat never returns.
    if makedirs:
        os.makedirs(makedirs, exist_ok=True)
    fh = open(path, "ab", buffering=0, opener=opener)  # noqa: SIM115 - returned open
    try:
        st = os.fstat(fh.fileno())
        return fh, st, is_remote(filesystem_type(st.st_dev))
    except BaseException:
        fh.close()
        raise


class NoReaderError(OSError):
    """The file is a FIFO that nothing has open for reading (yet)."""


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


class LiveFile:
    """One open file: its descriptor, which inode it is, and when it is due for rotation.

    ``threaded``: written (and stat'ed) on the sink's thread, never on the loop: the sink's
    ``write_mode="thread"``, or ``"auto"`` on a network or FUSE filesystem.
    """

    __slots__ = ("fd", "fh", "identity", "period_end", "regular", "retry_at", "threaded")

    def __init__(self, fh: io.FileIO, st: os.stat_result, period_end: float, threaded: bool):
        self.fh = fh
        self.fd = fh.fileno()
        self.identity = (st.st_dev, st.st_ino)
        self.regular = stat.S_ISREG(st.st_mode)
        self.period_end = period_end
        self.retry_at = 0.0
        self.threaded = threaded


class LiveFiles:
    """Open files by path (the most recently used 64), with reopen and rotation.

    Args:
        name: the sink's name (for task names).
        write_mode: the sink's ``write_mode`` (``"thread"``, and ``"auto"`` on a network or
            FUSE filesystem: files stay blocking and are written on ``worker``).
        mkdir: create missing parent directories when opening.
        reopen: check before each append that the path still names the open file.
        policy: when to rotate; ``housekeeper`` then compresses and expires rotated files.
        syncer: flushes a file before it is rotated or closed.
        report: ``report(message, cause)`` for incidents.
        clock: seconds since the epoch (``time.time``; tests inject their own).
        lock_wait: the longest a worker thread waits for a peer's lock.
        trusted: the directory the path template names before its first placeholder (None:
            no placeholder); the directories below it are opened without following links.
        worker: the sink's own thread for opening, locking, rotating and closing (and the
            writes of ``write_mode="thread"``): a hung filesystem holds it alone.
    """

    def __init__(
        self,
        *,
        name: str,
        write_mode: str,
        mkdir: bool,
        reopen: bool,
        policy: RotationPolicy,
        housekeeper: Housekeeper,
        syncer: Syncer,
        report: Reporter,
        clock: Callable[[], float],
        lock_wait: float = _flock.LOCK_WAIT_S,
        trusted: str | None = None,
        worker: Worker,
    ) -> None:
        self.worker = worker
        self.write_mode = write_mode
        self.trusted = trusted
        self.lock_wait = lock_wait
        self.mkdir = mkdir
        self.reopen = reopen or policy.enabled
        self.policy = policy
        self.housekeeper = housekeeper
        self.syncer = syncer
        self.report = report
        self.clock = clock
        self.sink_name = name
        self._files: OrderedDict[str, LiveFile] = OrderedDict()
        self._rotation_failing = False
        # Permission bits of a rotated file, for the file that replaces it: a log the admin
        # made 0600 must not come back 0644 at the next rotation.
        self._modes: dict[str, int] = {}
        self.torn: set[str] = set()
        # Files forgotten while the thread was stuck in a call (a hung mount): closed on the
        # thread once it is free, never on the loop (NFS flushes at close, and would hang it).
        self._unclosed: list[io.FileIO] = []
        self.counters = {"rotations": 0, "reopens": 0}

    async def get(self, path: str) -> LiveFile:
        """Return the open file for ``path``, opening it (and its directories) if needed."""
        live = self._files.get(path)
        if live is not None:
            self._files.move_to_end(path)
            return live
        trusted = self.trusted
        if self._unclosed:
            await self._close_unclosed()
        base = split_path(path, trusted)[0] if self.mkdir else ""
        mode = self._modes.get(path, 0o666)
        mkdir = self.mkdir
        # Non-blocking, so that a FIFO with no reader fails now (ENXIO) instead of holding a
        # worker thread until one comes (the logger's start waited for it, for ever).
        opener = lambda name, flags: _open_no_link(  # noqa: E731
            name, flags | _NONBLOCK, mode, trusted, mkdir
        )
        try:
            fh, st, remote = await self.worker.run(_open_and_inspect, path, opener, base)
        except OSError as exc:
            if exc.errno == errno.ENXIO and _is_fifo(path):
                why = "a FIFO with no reader (nothing has it open)"
                raise NoReaderError(exc.errno, why, path) from exc
            raise  # ENXIO for a socket, a device with nothing behind it: as the OS says
        self._modes.pop(path, None)
        threaded = self.write_mode == "thread" or (self.write_mode == "auto" and remote)
        # A regular file is written as if blocking whatever the flag says; a FIFO, socket or
        # device written from the loop stays non-blocking: when its reader falls behind, the
        # sink waits for room on the loop (FileSink._write) rather than blocking it.
        if _NONBLOCK and (stat.S_ISREG(st.st_mode) or threaded):
            try:
                os.set_blocking(fh.fileno(), True)
            except OSError:
                fh.close()
                raise
        due = self.policy.first_period_end(self.clock(), st.st_size, st.st_mtime)
        live = self._files[path] = LiveFile(fh, st, due, threaded)
        if len(self._files) > _MAX_OPEN:
            await self.forget(next(iter(self._files)))
        return live

    async def ready(self, path: str, size: int) -> tuple[LiveFile, bool]:
        """Return the file to append ``size`` bytes to for ``path``, and whether it is locked.

        Reopens the path if it names another file now (deleted, renamed, rotated by another
        process) and rotates the file if it is due. While rotating, the file comes back under
        a shared lock, which the caller releases after the append: no process can rotate it
        in between, so no append ever lands in a rotated file.
        """
        for attempt in range(_MAX_ATTEMPTS):
            live = await self.get(path)
            if not self.reopen or attempt == _MAX_ATTEMPTS - 1:
                # Rotated and reopened, yet the path changed again (or a filesystem whose inode
                # numbers are not stable): append to what is open rather than spin.
                return live, False
            locked = self.policy.enabled and live.regular
            if locked and not _flock.try_lock_shared(live.fd):
                # A rotation holds it. A peer stuck in one (stopped mid-rename) must not stall
                # this sink: past LOCK_WAIT_S, append without the lock (the path check stays).
                locked = await self.worker.run(_flock.lock_shared, live.fd, self.lock_wait)
            try:
                # lstat: a symlink put in the file's place is another file, reopened (and
                # refused) rather than followed. On the sink's thread where a stat may hang.
                st: os.stat_result | None = (
                    await self.worker.run(os.lstat, path) if live.threaded else os.lstat(path)
                )
            except FileNotFoundError:
                st = None
            except OSError:
                if locked:
                    _flock.unlock(live.fd)
                raise
            if st is None or (st.st_dev, st.st_ino) != live.identity:
                if locked:
                    _flock.unlock(live.fd)
                self.counters["reopens"] += 1
                self.torn.discard(path)  # a torn line stays behind in the old file
                await self.forget(path)
                continue
            if locked and self._due(live, st.st_size, size):
                _flock.unlock(live.fd)
                await self._rotate(path, live)
                continue
            return live, locked
        raise AssertionError("unreachable")  # pragma: no cover

    def _due(self, live: LiveFile, current: int, size: int) -> bool:
        now = self.clock()
        if not current:  # an empty file is never rotated; its period starts over
            if now >= live.period_end:
                live.period_end = self.policy.first_period_end(now, 0, now)
            return False
        if now < live.retry_at:
            return False
        limit = self.policy.max_bytes
        return (limit is not None and current + size > limit) or now >= live.period_end

    async def _rotate(self, path: str, live: LiveFile) -> None:
        now = self.clock()
        # Not before ROTATE_RETRY_S if this attempt fails or is cancelled (the lane's timeout):
        # a success forgets this LiveFile anyway.
        live.retry_at = now + ROTATE_RETRY_S
        await self.syncer.release(live.fd)  # the rotated file is complete on the disk
        try:
            rotated = await self.worker.run(
                _rotation.rotate,
                path,
                live.fd,
                live.identity,
                int(now * 1_000_000),
                self.lock_wait,
            )
        except OSError as exc:
            if not self._rotation_failing:
                self._rotation_failing = True
                self.report(
                    f"could not rotate {path!r}; appending to it, retrying every "
                    f"{ROTATE_RETRY_S:g} s (further failures are not printed)",
                    exc,
                )
            return
        self._rotation_failing = False
        self.torn.discard(path)
        self._modes[path] = stat.S_IMODE(os.fstat(live.fd).st_mode) & 0o666
        await self.forget(path)  # rotated here or by another process: reopen the path
        if rotated is not None:
            self.counters["rotations"] += 1
            self.housekeeper.after_rotation(path, rotated, self.sink_name)

    async def forget(self, path: str) -> None:
        """Close the file of ``path`` (flushed first if ``fsync`` asks for it)."""
        live = self._files.pop(path, None)
        if live is not None:
            await self.syncer.release(live.fd)
            self._unclosed.append(live.fh)
            await self._close_unclosed()

    async def _close_unclosed(self) -> None:
        files, self._unclosed = self._unclosed, []
        try:
            await self.worker.run(_close_all, files)
        except WorkerBusyError:  # stuck in a call on this filesystem: later
            self._unclosed.extend(files)

    def drop(self) -> None:
        """Close every descriptor at once, without flushing or I/O on the loop (a forked
        child's inherited files, or a loop that is gone); the next append reopens."""
        # Through the file objects: an os.close() behind their backs left them owning the
        # numbers, and each closed its number again when freed, by then another file's (in a
        # forked child, the new event loop's wake-up socket: the logger hung). Unbuffered:
        # nothing to flush, no I/O but close(2).
        _close_all([live.fh for live in self._files.values()] + self._unclosed)
        self._unclosed.clear()
        self._files.clear()
        self.torn.clear()

    async def close(self) -> None:
        """Close every file."""
        for path in list(self._files):
            await self.forget(path)
