"""Read schema-v1 JSON Lines logs back: entries one by one, or grouped into sessions."""

from __future__ import annotations

import gzip
import io
import operator
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ._errors import SessionLoggerError

__all__ = ["CorruptLogError", "ReaderWarning", "Session", "read_entries", "read_sessions"]

_START = "session_start"
_CLOSE = "session_close"

# Frames between warnings.warn() and the code iterating read_entries(): _corrupt, _read_file,
# _read_paths. Pointing the warning at the caller lets ``-W error`` and filters name its line.
_WARN_DEPTH = 4

_by_seq = operator.itemgetter("seq")


class ReaderWarning(UserWarning):
    """Issued when a corrupt line is skipped (``strict=False``)."""


class CorruptLogError(SessionLoggerError, ValueError):
    """Raised for a corrupt line when reading with ``strict=True``.

    ``path`` is the file as given to the reader and ``lineno`` the 1-based line number.
    """

    def __init__(self, message: str, *, path: str, lineno: int) -> None:
        super().__init__(message)
        self.path = path
        self.lineno = lineno


def read_entries(*paths: str | os.PathLike[str], strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield every entry of the given JSON Lines files, file by file, in file order.

    Files whose name ends in ``.gz`` are decompressed on the fly. Files are streamed line by
    line and opened one at a time, when iteration reaches them. A torn last line (no trailing
    newline and not valid JSON, what a crash mid-write leaves) is skipped silently; blank lines
    are skipped.

    Args:
        *paths: The files to read.
        strict: Raise on a corrupt line instead of warning and skipping it.

    Returns:
        An iterator of entry dicts, exactly as written (extra keys included).

    Raises:
        FileNotFoundError: A path does not exist (checked for every path at call time, before
            anything is read).
        CorruptLogError: With ``strict=True``, during iteration, for a line that is not a JSON
            object with a str ``session_id``, a non-negative int ``seq`` and a str ``event``,
            or for compressed data that cannot be decompressed. With ``strict=False`` a
            :class:`ReaderWarning` is issued instead and the line (or the rest of a damaged
            compressed file) is skipped.
    """
    return _read_paths(_checked(paths), strict, _WARN_DEPTH)


def read_sessions(*paths: str | os.PathLike[str], strict: bool = False) -> list[Session]:
    """Read the given files and group their entries into sessions.

    A session may span files (pass rotated files too, in any order). Entries repeated with
    the same ``(session_id, seq)`` are kept once (the first read) and counted in
    :attr:`Session.duplicates`. A ``session_start`` for an id whose session already has a
    different start entry begins a new :class:`Session`: ids may be reused.

    Args:
        *paths: The files to read.
        strict: Raise on a corrupt line instead of warning and skipping it.

    Returns:
        The sessions, in order of first appearance.

    Raises:
        FileNotFoundError: A path does not exist (nothing is read then).
        CorruptLogError: With ``strict=True``, for a corrupt line (see :func:`read_entries`).
    """
    builder = _Builder()
    # One more frame than read_entries: the warning should name read_sessions' caller.
    for entry in _read_paths(_checked(paths), strict, _WARN_DEPTH + 1):
        builder.add(entry)
    return builder.finish()


@dataclass
class Session:
    """One session read back from logs.

    ``entries`` holds the ``log`` and ``gap`` entries (and any entry of an unknown event)
    sorted by ``seq``; ``start`` and ``close`` are the lifecycle entries, ``None`` when
    absent (a start rotated away, a session still open or cut short by a crash).
    """

    session_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list, repr=False)
    start: dict[str, Any] | None = None
    close: dict[str, Any] | None = None
    _duplicates: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def status(self) -> str:
        """Return the close entry's status (``closed``, ``interrupted``, ``error``), or ``open``."""
        if self.close is None:
            return "open"
        status = self.close.get("status")
        # A formatter may drop or mangle the key; the session is still closed.
        return status if isinstance(status, str) else "closed"

    @property
    def started_at(self) -> datetime | None:
        """Return the start entry's timestamp as an aware UTC datetime, if there is one."""
        return _parse_timestamp(self.start.get("timestamp")) if self.start is not None else None

    @property
    def closed_at(self) -> datetime | None:
        """Return the close entry's timestamp as an aware UTC datetime, if there is one."""
        return _parse_timestamp(self.close.get("timestamp")) if self.close is not None else None

    @property
    def duration_s(self) -> float | None:
        """Return the duration the close entry records, or None while the session is open."""
        value = None if self.close is None else self.close.get("duration_s")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    @property
    def missing_seqs(self) -> list[int]:
        """Return the seqs from 0 to the highest seq seen that were not read, ascending.

        Each one is an entry lost (see the ``gap`` entries), not yet written, or in a file
        that was not read (a rotated-away start makes ``0`` and what followed it missing).
        """
        seen = {entry["seq"] for entry in self.entries}
        for lifecycle in (self.start, self.close):
            if lifecycle is not None:
                seen.add(lifecycle["seq"])
        if not seen:
            return []
        return [seq for seq in range(max(seen) + 1) if seq not in seen]

    @property
    def dropped(self) -> int:
        """Return how many entries the ``gap`` entries say an overflow policy dropped."""
        total = 0
        for entry in self.entries:
            if entry.get("event") == "gap":
                count = entry.get("dropped")
                if isinstance(count, int) and not isinstance(count, bool):
                    total += count
        return total

    @property
    def duplicates(self) -> int:
        """Return how many repeated ``(session_id, seq)`` entries were skipped."""
        return self._duplicates

    @property
    def errors(self) -> int:
        """Return how many of ``entries`` have ``levelno >= 40`` (ERROR and above)."""
        count = 0
        for entry in self.entries:
            levelno = entry.get("levelno")
            if isinstance(levelno, int) and levelno >= 40:
                count += 1
        return count


# -- reading ----------------------------------------------------------------------------------
def _checked(paths: tuple[str | os.PathLike[str], ...]) -> list[str]:
    names = [os.fspath(path) for path in paths]
    for name in names:
        # Fail before yielding anything: a typo in the last path should not surface only after
        # the first files were consumed. os.stat raises the ordinary FileNotFoundError.
        os.stat(name)
    return names


def _read_paths(paths: list[str], strict: bool, depth: int) -> Iterator[dict[str, Any]]:
    for path in paths:
        yield from _read_file(path, strict, depth)


def _open(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_file(path: str, strict: bool, depth: int) -> Iterator[dict[str, Any]]:
    lineno = 0
    with _open(path) as fh:
        try:
            # Binary iteration splits on LF only and reads one line at a time: files can be
            # far larger than memory, and orjson takes bytes directly.
            for line in fh:
                lineno += 1
                if line.isspace():
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    if not line.endswith(b"\n"):
                        # Only the last line can lack LF: a write cut short by a crash. The
                        # writer never acknowledged it, so nothing was lost that was promised.
                        return
                    reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
                else:
                    problem = _problem(entry)
                    if problem is None:
                        yield entry
                        continue
                    reason = problem
                _corrupt(path, lineno, reason, strict, depth)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            # A damaged or truncated compressed stream cannot be resynchronized: the rest of
            # the file is unreadable, so report it once and stop.
            _corrupt(path, lineno + 1, f"cannot decompress ({exc})", strict, depth)


def _problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return f"not a JSON object ({_json_type(entry)})"
    missing = [key for key in ("session_id", "seq", "event") if key not in entry]
    if missing:
        return f"entry lacks {', '.join(missing)}"
    if not isinstance(entry["session_id"], str):
        return "session_id is not a string"
    seq = entry["seq"]
    # bool is an int subclass; a true/false seq is no sequence number.
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "seq is not a non-negative integer"
    if not isinstance(entry["event"], str):
        return "event is not a string"
    return None


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _corrupt(path: str, lineno: int, reason: str, strict: bool, depth: int) -> None:
    message = f"{path}:{lineno}: {reason}"
    if strict:
        raise CorruptLogError(message, path=path, lineno=lineno)
    warnings.warn(message, ReaderWarning, stacklevel=depth)


def _parse_timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Schema v1 writes UTC with "Z"; a formatter's naive stamp is taken as UTC too.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# -- grouping ---------------------------------------------------------------------------------
class _Slot:
    """A session being built, with its entries by seq for deduplication."""

    __slots__ = ("by_seq", "session")

    def __init__(self, session_id: str) -> None:
        self.session = Session(session_id)
        self.by_seq: dict[int, dict[str, Any]] = {}


class _Builder:
    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.current: dict[str, _Slot] = {}
        # Earlier sessions of a reused id: late duplicates of their entries must not leak into
        # the newer session.
        self.earlier: dict[str, list[_Slot]] = {}

    def add(self, entry: dict[str, Any]) -> None:
        session_id: str = entry["session_id"]
        seq: int = entry["seq"]
        slot = self.current.get(session_id)
        if slot is None:
            slot = self._new(session_id)
        elif entry["event"] == _START and not self._joins(slot, entry):
            if self._late_duplicate(session_id, seq, entry):
                return
            slot = self._new(session_id)
        elif session_id in self.earlier and self._late_duplicate(session_id, seq, entry):
            # An exact copy of an earlier run's entry is that run's duplicate, even when the
            # newer run has the same seq: it must neither join nor count against the newer one.
            return
        if seq in slot.by_seq:
            slot.session._duplicates += 1
            return
        slot.by_seq[seq] = entry
        session = slot.session
        event = entry["event"]
        if event == _START:
            session.start = entry
            metadata = entry.get("metadata")
            session.metadata = metadata if isinstance(metadata, dict) else {}
        elif event == _CLOSE and session.close is None:
            session.close = entry
        else:
            # A second close with a new seq is odd but kept visible rather than dropped.
            session.entries.append(entry)

    def finish(self) -> list[Session]:
        for slot in self.slots:
            slot.session.entries.sort(key=_by_seq)
        return [slot.session for slot in self.slots]

    def _new(self, session_id: str) -> _Slot:
        previous = self.current.get(session_id)
        if previous is not None:
            self.earlier.setdefault(session_id, []).append(previous)
        slot = _Slot(session_id)
        self.current[session_id] = slot
        self.slots.append(slot)
        return slot

    def _late_duplicate(self, session_id: str, seq: int, entry: dict[str, Any]) -> bool:
        for slot in reversed(self.earlier.get(session_id, ())):
            if slot.by_seq.get(seq) == entry:
                slot.session._duplicates += 1
                return True
        return False

    @staticmethod
    def _joins(slot: _Slot, start: dict[str, Any]) -> bool:
        """Return whether a start entry belongs to the id's current session."""
        if slot.session.start is not None:
            # Only a redelivered copy of the same start; a different one is a reused id.
            return start == slot.session.start
        # A start-less session is one whose start is in a file read later (rotation, files
        # passed newest first), unless it holds entries older than this start: then it is an
        # earlier run of a reused id whose start was rotated away.
        started = _parse_timestamp(start.get("timestamp"))
        if started is None:
            return True
        for other in slot.by_seq.values():
            stamp = _parse_timestamp(other.get("timestamp"))
            if stamp is not None and stamp < started:
                return False
        return True
