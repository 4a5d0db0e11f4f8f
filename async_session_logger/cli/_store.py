"""Where ``collect`` writes: ``DIR/{session_id}.jsonl`` or ``DIR/{YYYY-MM-DD}.jsonl``.

Lines are kept as received (the publisher's exact JSON) and appended in batches, one write per
file, by the collector's own loop: local appends to the page cache take microseconds.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final

import orjson

from .._oswrite import write_all
from ._common import warn

__all__ = ["Store"]

_MAX_OPEN: Final = 64
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Past this much unwritten data (the disk refuses writes), the collector stops with an error.
MAX_UNWRITTEN: Final = 256 * 1024 * 1024


class Store:
    """Append lines to per-session or per-day files under ``out``."""

    def __init__(self, out: str, per: str) -> None:
        self.out = out
        self.per = per
        self.pending: dict[str, list[bytes]] = {}
        self.pending_bytes = 0
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._failing = False
        # Files whose last line we left half-written (the disk refused the rest and it could
        # not be cut off): the rest is pending, and completes it.
        self._torn: set[str] = set()

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
            data = b"".join(self.pending[path])
            try:
                written = self._write(path, data)
            except OSError as exc:
                if not self._failing:
                    warn(f"cannot write {path}: {exc.strerror or exc}; keeping entries in memory")
                self._failing = True
                self._close(path)
                return
            del self.pending[path]
            self.pending_bytes -= written
        if self._failing:
            warn("writing works again")
            self._failing = False

    def _write(self, path: str, data: bytes) -> int:
        fd = self._fd(path)
        done, error = write_all(fd, data)
        if error is None:
            self._torn.discard(path)
            return done
        # The disk refused the rest, maybe mid-line. Only this collector writes to its files:
        # cut a half-written line off again, so the file holds whole lines only (whatever
        # happens next: a reopen, a stop) and what is kept for later starts at a line.
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
        self.pending_bytes -= kept
        raise error

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and path not in self._torn and os.pread(fd, 1, size - 1) != b"\n":
                # A torn last line (a collector killed mid-write): end it, so ours stays whole.
                os.write(fd, b"\n")
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
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict):
                    sid, seq = entry.get("session_id"), entry.get("seq")
                    if isinstance(sid, str) and isinstance(seq, int):
                        yield sid, seq, entry.get("event"), entry.get("timestamp")
