"""FileSink's rotation: rotated names, UTC periods, the cross-process rename, gzip, retention.

Everything here that touches the disk blocks, and runs on a worker thread, never on the loop.
"""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import math
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from typing import IO, Final

from .._threads import DaemonExecutor
from ._flock import lock_exclusive, unlock

__all__ = [
    "NOFOLLOW",
    "PERIODS",
    "Siblings",
    "compress",
    "executor",
    "expire",
    "is_refused_link",
    "period_end",
    "refused_link",
    "rotate",
    "sync_and_close",
    "uncompressed",
]

PERIODS: Final = {"hourly": 3600.0, "daily": 86400.0}
GZIP_LEVEL: Final = 6  # zlib's default: ~3x faster than gzip's 9 for a few % larger files
_STAMP: Final = r"\d{8}T\d{6}\.\d{6}Z"
_COPY_CHUNK: Final = 1 << 20
STALE_TMP_S: Final = 600.0
NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_REFUSED: Final = "is a symbolic link: FileSink does not follow links"


def refused_link(path: str) -> OSError:
    """Return the error for a symlink found where FileSink opens, renames or compresses."""
    return OSError(errno.ELOOP, _REFUSED, path)


def is_refused_link(exc: BaseException) -> bool:
    """Return whether ``exc`` is FileSink refusing a symlink (see :func:`refused_link`)."""
    return isinstance(exc, OSError) and exc.errno == errno.ELOOP


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def period_end(t: float, interval: float) -> float:
    """Return the end of the UTC-aligned period holding ``t`` (periods start at the epoch)."""
    return (math.floor(t / interval) + 1) * interval


def format_stamp(us: int) -> str:
    """Return ``20261124T101500.123456Z`` for a time in microseconds since the epoch."""
    seconds, micro = divmod(us, 1_000_000)
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=micro)
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def parse_stamp(stamp: str) -> int:
    """Return the microseconds since the epoch that a rotated file's stamp stands for."""
    moment = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.UTC)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class Siblings:
    """The rotated files of one live file: ``app.jsonl`` -> ``app.<stamp>.jsonl[.gz]``.

    The stamp sits before the extension, so sorting names sorts files by rotation time,
    plain and gzipped alike, and a new rotation never renames an older file.
    """

    def __init__(self, path: str) -> None:
        self.directory, name = os.path.split(path)
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:  # "app" or ".app": no extension to keep at the end
            stem, ext = name, ""
        self.stem = stem
        self.suffix = f".{ext}" if ext else ""
        self._pattern = re.compile(
            re.escape(stem) + rf"\.({_STAMP})" + re.escape(self.suffix) + r"(\.gz(?:\.tmp)?)?\Z"
        )

    def name(self, us: int) -> str:
        """Return the rotated file's path for a rotation at ``us``."""
        return os.path.join(self.directory, f"{self.stem}.{format_stamp(us)}{self.suffix}")

    def scan(self, *, anything: bool = False) -> dict[int, list[str]]:
        """Return the rotated files on disk by stamp: plain, ``.gz`` and ``.gz.tmp`` alike.

        Only regular files count: a symlink (or anything else) with a rotated file's name was
        not made by a rotation, and is never read, compressed or deleted. ``anything=True``
        lists them too (names a new rotation must not take).
        """
        found: dict[int, list[str]] = {}
        for stamp, name, regular in self._entries():
            if regular or anything:
                found.setdefault(stamp, []).append(name)
        return found

    def strangers(self) -> list[str]:
        """Return what has a rotated file's name but is no regular file (a planted symlink)."""
        return sorted(name for _, name, regular in self._entries() if not regular)

    def _entries(self) -> Iterator[tuple[int, str, bool]]:
        with os.scandir(self.directory or ".") as entries:
            for entry in entries:
                match = self._pattern.match(entry.name)
                if match is None:
                    continue
                try:
                    stamp = parse_stamp(match.group(1))
                except ValueError:  # digits in the right places, but no date: not ours
                    continue
                try:
                    regular = entry.is_file(follow_symlinks=False)
                except OSError:  # gone meanwhile
                    continue
                yield stamp, os.path.join(self.directory, entry.name), regular

    def files(self) -> list[str]:
        """Return the finished rotated files (no ``.gz.tmp``), oldest first."""
        found = self.scan()
        return [
            path
            for stamp in sorted(found)
            for path in sorted(found[stamp])
            if not path.endswith(".tmp")
        ]


def rotate(
    path: str, fd: int, identity: tuple[int, int], now_us: int, lock_wait: float
) -> str | None:
    """Rename the live file ``fd`` to a new rotated name; None if it is no longer at ``path``.

    Another process may have rotated it while this one waited for the lock: the path then names
    another inode (or nothing), and this process only has to reopen.

    Raises:
        TimeoutError: another process held a lock on the file for ``lock_wait`` seconds.
    """
    lock_exclusive(fd, lock_wait)
    try:
        try:
            st = os.lstat(path)  # a symlink in the file's place is not the file: reopen
        except FileNotFoundError:
            return None
        if _identity(st) != identity:
            return None
        siblings = Siblings(path)
        # Later than every rotated file on disk, even if the clock stepped back: names stay in
        # order, and the target cannot exist (rename would silently replace it).
        newest = max(siblings.scan(anything=True), default=-1)
        target = siblings.name(max(now_us, newest + 1))
        os.rename(path, target)
        try:
            moved = os.lstat(target)
        except FileNotFoundError:
            moved = None
        if moved is None or _identity(moved) != identity:
            # Swapped between the check and the rename: what moved is not the file written
            # here, so it must not be compressed or expired as if it were (and a link is not).
            raise OSError(errno.EAGAIN, f"{path!r} was replaced while it was being rotated")
        return target
    finally:
        unlock(fd)


def sync_fd(fd: int) -> None:
    """Flush a file's data to the disk (``fdatasync`` where the OS has it)."""
    sync = getattr(os, "fdatasync", None) or os.fsync
    sync(fd)


def sync_and_close(fd: int) -> None:
    """Flush, then close, a duplicated descriptor."""
    try:
        sync_fd(fd)
    finally:
        os.close(fd)


def _sync_directory(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def _copy(src: IO[bytes], dst: gzip.GzipFile) -> None:
    # zlib releases the GIL while it deflates each 1 MiB chunk: the loop thread keeps running.
    shutil.copyfileobj(src, dst, _COPY_CHUNK)


def compress(path: str) -> str | None:
    """Gzip a rotated file to ``path.gz`` through ``path.gz.tmp``, then delete ``path``.

    The plain file is deleted only once the gzip file is complete, synced and renamed into
    place, and only if ``path`` still names the file that was read. The ``.gz`` gets the plain
    file's owner and permissions (owner-only if its owner cannot be kept): never wider. Returns
    None when there is nothing to do: the file is gone, or another process is compressing it
    (its ``.gz.tmp`` exists and was written to in the last 10 minutes).

    Raises:
        OSError: the compression failed, or ``path`` is a symlink or no regular file (refused:
            its target is never read); ``path`` is kept and the temporary file removed.
    """
    target = path + ".gz"
    tmp = target + ".tmp"
    try:
        # O_NONBLOCK: a FIFO swapped in must not hang the rotation thread in open().
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if is_refused_link(exc):
            raise refused_link(path) from exc
        raise
    with open(fd, "rb") as src:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file: not compressed", path)
        if _regular(target):
            # A crash between the rename and the delete: the .gz is complete, the plain file a
            # copy.
            _remove_if(path, st)
            return None
        try:
            raw = _create(tmp)
        except FileExistsError:
            return None
        try:
            with raw:
                name = os.path.basename(path)
                with gzip.GzipFile(name, "wb", GZIP_LEVEL, raw) as out:
                    _copy(src, out)
                raw.flush()
                _same_access(raw.fileno(), st)
                os.fsync(raw.fileno())
            os.rename(tmp, target)
        except FileNotFoundError:
            # Another process's retention deleted this file (and our .tmp) meanwhile.
            _remove(tmp)
            return None
        except BaseException:
            _remove(tmp)
            raise
    _sync_directory(os.path.dirname(path))
    _remove_if(path, st)
    return target


def _create(tmp: str) -> IO[bytes]:
    # O_EXCL (which never follows a link): one compressor per file. Owner-only until the data
    # is in and the source's permissions are applied. A .tmp that has not grown for long is a
    # crash's leftover (a live compressor writes a chunk every few ms): take it over.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | os.O_CLOEXEC
    try:
        return open(os.open(tmp, flags, 0o600), "wb")
    except FileExistsError:
        try:
            stale = time.time() - os.lstat(tmp).st_mtime > STALE_TMP_S
        except FileNotFoundError:
            stale = True
        if not stale:
            raise
    _remove(tmp)
    return open(os.open(tmp, flags, 0o600), "wb")


def _same_access(fd: int, source: os.stat_result) -> None:
    """Give the file ``fd`` the owner, group and permission bits of ``source``, never wider."""
    mode = stat.S_IMODE(source.st_mode) & 0o777  # no setuid/setgid/sticky bits on a log
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (source.st_uid, source.st_gid):
        try:
            os.fchown(fd, source.st_uid, source.st_gid)
        except OSError:
            # Another group (or owner) would read it under the source's bits: owner only.
            mode &= 0o700
    os.fchmod(fd, mode)


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _remove_if(path: str, st: os.stat_result) -> None:
    """Delete ``path`` if it still names the file ``st`` describes (not what replaced it)."""
    try:
        if _identity(os.lstat(path)) == _identity(st):
            os.unlink(path)
    except FileNotFoundError:
        pass


def expire(
    path: str, keep: int | None, max_age_us: int | None, now_us: int
) -> tuple[list[str], list[OSError]]:
    """Delete the rotated files of ``path`` beyond the newest ``keep`` or older than max age.

    Only names of the rotated-file form are touched: never the live file, never other files.
    Returns the deleted paths and the errors met (every file is tried).
    """
    found = Siblings(path).scan()
    stamps = sorted(found, reverse=True)
    doomed: set[int] = set()
    if keep is not None:
        doomed.update(stamps[keep:])
    if max_age_us is not None:
        doomed.update(s for s in stamps if s < now_us - max_age_us)
    deleted: list[str] = []
    errors: list[OSError] = []
    for stamp in sorted(doomed):
        for name in found[stamp]:
            try:
                os.unlink(name)
            except FileNotFoundError:  # another process's sweep got there first
                continue
            except OSError as exc:
                errors.append(exc)
                continue
            deleted.append(name)
    return deleted, errors


def uncompressed(path: str) -> list[str]:
    """Return the plain rotated files of ``path``, oldest first (for ``compress``)."""
    found = Siblings(path).scan()
    return [
        name
        for stamp in sorted(found)
        for name in found[stamp]
        if not name.endswith((".gz", ".tmp"))
    ]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_executor: DaemonExecutor | None = None
_executor_lock = threading.Lock()


def executor() -> DaemonExecutor:
    """Return the one thread that compresses and expires rotated files (in submission order).

    Separate from the I/O executor: a long compression must never hold up a file write.
    """
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = DaemonExecutor(max_workers=1, name="async_session_logger.rotation")
    return _executor
