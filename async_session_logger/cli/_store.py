"""Where ``collect`` writes: ``DIR/{session_id}.jsonl`` or ``DIR/{YYYY-MM-DD}.jsonl``.

Lines are kept as received (the publisher's exact JSON) and appended in batches, one write per
file. Several collectors (``collect --group``) may share ``DIR``: every append happens under an
exclusive ``flock`` of the file, and before deciding what to append a collector reads what the
others appended since its last look (:meth:`Store.commit`), so its dedup knows their entries
too. A commit ends with ``fdatasync``: the collector acknowledges messages only after that.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Final

import orjson

from .._oswrite import write_all
from ._common import warn

__all__ = ["MAX_UNWRITTEN", "Store"]

_MAX_OPEN: Final = 64
# How many files' read offsets are remembered; a forgotten one is read from the start again.
_MAX_OFFSETS: Final = 100_000
_READ_CHUNK: Final = 1 << 20
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Past this much unwritten data (the disk refuses writes), the collector stops with an error.
MAX_UNWRITTEN: Final = 256 * 1024 * 1024

# Told the entries other writers appended to a file since this store last looked, and whether
# that is the whole file (read from its start).
Others = Callable[[Iterator[dict[str, Any]], bool], None]


class Store:
    """Append lines to per-session or per-day files under ``out``, shareable by processes."""

    def __init__(self, out: str, per: str, *, sync: bool = True) -> None:
        self.out = out
        self.per = per
        self.sync = sync
        self.pending: dict[str, list[bytes]] = {}
        self.pending_bytes = 0
        self._fds: OrderedDict[str, int] = OrderedDict()
        # Per file: the size it had after this store's last look or write (under the lock).
        self._offsets: OrderedDict[str, int] = OrderedDict()
        self._failing = False
        # Files whose last line we left half-written (the disk refused the rest and it could
        # not be cut off): the rest is pending, and completes it.
        self._torn: set[str] = set()
        # Files written to but not yet synced (fdatasync failed): synced on their next commit.
        self._unsynced: set[str] = set()

    def path_for(self, session_id: str, entry: dict[str, Any]) -> str:
        """Return the file for an entry (its session's, or its UTC day's)."""
        if self.per == "session":
            return os.path.join(self.out, f"{session_id}.jsonl")
        stamp = entry.get("timestamp")
        day = stamp[:10] if isinstance(stamp, str) else ""
        if not _DATE.fullmatch(day):
            day = time.strftime("%Y-%m-%d", time.gmtime())
        return os.path.join(self.out, f"{day}.jsonl")

    def add(self, path: str, line: bytes) -> None:
        """Queue a line (without its newline) for ``path``."""
        self.pending.setdefault(path, []).append(line + b"\n")
        self.pending_bytes += len(line) + 1

    def flush(self) -> None:
        """Write what is queued, one write per file; keep what the disk refused for later."""
        for path in list(self.pending):
            try:
                self.commit(path)
            except OSError:
                return

    def commit(
        self,
        path: str,
        decide: Callable[[], list[bytes]] | None = None,
        others: Others | None = None,
    ) -> None:
        """Append to ``path`` under its lock what is pending plus the lines ``decide`` returns.

        Under the lock, first the entries other writers appended since the last look go to
        ``others``, then ``decide`` picks the new lines (so it sees them), then one write and,
        with ``sync``, ``fdatasync``. On an ``OSError`` the decided lines stay pending (a
        warning is printed once) and the error is raised; if it came before ``decide`` was
        called, ``decide`` was not called.
        """
        try:
            fd = self._fd(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._failed(path, exc)
            raise
        try:
            size = os.fstat(fd).st_size
            known = self._offsets.get(path)
            if known is None or known > size:  # never read, or cut short by someone: reread
                known = 0
                if others is not None:
                    others(self._entries(fd, 0, size), True)
            elif size > known and others is not None:
                others(self._entries(fd, known, size), False)
            if decide is not None:
                for line in decide():
                    self.add(path, line)
            data = b"".join(self.pending.get(path, []))
            if data:
                if size and path not in self._torn and os.pread(fd, 1, size - 1) != b"\n":
                    # A torn last line (a writer killed mid-write): end it, so ours stays whole.
                    os.write(fd, b"\n")
                del self.pending[path]
                self.pending_bytes -= len(data)
                self._unsynced.add(path)
                self._write(fd, path, data)
            if self.sync and path in self._unsynced:
                os.fdatasync(fd)
            self._unsynced.discard(path)
            self._remember(path, os.fstat(fd).st_size)
        except OSError as exc:
            self._failed(path, exc)
            raise
        finally:
            if path in self._fds:
                fcntl.flock(fd, fcntl.LOCK_UN)
        if self._failing and self.clean:
            warn("writing works again")
            self._failing = False

    @property
    def clean(self) -> bool:
        """Return whether everything decided so far is written and synced."""
        return not self.pending and not self._unsynced

    def _failed(self, path: str, exc: OSError) -> None:
        if not self._failing:
            warn(f"cannot write {path}: {exc.strerror or exc}; keeping entries in memory")
        self._failing = True
        self._close(path)  # closing the descriptor also drops its lock

    def _write(self, fd: int, path: str, data: bytes) -> None:
        done, error = write_all(fd, data)
        if error is None:
            self._torn.discard(path)
            return
        # The disk refused the rest, maybe mid-line. We hold the file's lock: cut a
        # half-written line off again, so the file holds whole lines only (whatever happens
        # next: a reopen, a stop, another writer) and what is kept for later starts at a line.
        kept = data.rfind(b"\n", 0, done) + 1
        if kept < done:
            try:
                os.ftruncate(fd, os.fstat(fd).st_size - (done - kept))
            except OSError:
                # Then the rest completes the line on the next attempt, which must not end
                # the torn line first.
                kept = done
                self._torn.add(path)
        self.pending[path] = [data[kept:]]
        self.pending_bytes += len(data) - kept
        raise error

    def _entries(self, fd: int, start: int, end: int) -> Iterator[dict[str, Any]]:
        """Yield the entries in ``fd`` between two offsets (whole lines; junk skipped)."""
        rest = b""
        while start < end:
            chunk = os.pread(fd, min(_READ_CHUNK, end - start), start)
            if not chunk:
                break
            start += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                entry = _entry(line)
                if entry is not None:
                    yield entry
        entry = _entry(rest)  # a last line without its newline: whole if it parses
        if entry is not None:
            yield entry

    def _remember(self, path: str, size: int) -> None:
        self._offsets[path] = size
        self._offsets.move_to_end(path)
        if len(self._offsets) > _MAX_OFFSETS:
            self._offsets.popitem(last=False)

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        new = not os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if new and self.sync:
            try:
                # The new file's name must be durable too before its entries are acknowledged.
                dir_fd = os.open(self.out, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError:
                os.close(fd)
                raise
        self._fds[path] = fd
        if len(self._fds) > _MAX_OPEN:
            self._close(next(iter(self._fds)))
        return fd

    def _close(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close every file."""
        for path in list(self._fds):
            self._close(path)

    def seen(self, path: str) -> Iterator[tuple[str, int, object, object]]:
        """Yield ``(session_id, seq, event, timestamp)`` of every entry already in ``path``."""
        if not os.path.exists(path):
            return
        with open(path, "rb") as fh:
            for line in fh:
                entry = _entry(line)
                if entry is not None:
                    yield (
                        entry["session_id"],
                        entry["seq"],
                        entry.get("event"),
                        entry.get("timestamp"),
                    )


def _entry(line: bytes) -> dict[str, Any] | None:
    """Return a line's entry if it is a JSON object with a str session_id and an int seq."""
    if not line.strip():
        return None
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict):
        return None
    if not isinstance(entry.get("session_id"), str) or type(entry.get("seq")) is not int:
        return None
    return entry
