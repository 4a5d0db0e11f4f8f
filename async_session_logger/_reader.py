"""Read schema-v1 JSON Lines logs back: entries one by one, or grouped into sessions."""

from __future__ import annotations

import bisect
import gzip
import io
import operator
import os
import warnings
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson

from ._errors import SessionLoggerError

__all__ = [
    "CorruptLogError",
    "ReaderWarning",
    "Session",
    "SessionBuilder",
    "SessionSummary",
    "SummaryBuilder",
    "entry_problem",
    "parse_timestamp",
    "read_entries",
    "read_sessions",
]

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
    builder = SessionBuilder()
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
        return parse_timestamp(self.start.get("timestamp")) if self.start is not None else None

    @property
    def closed_at(self) -> datetime | None:
        """Return the close entry's timestamp as an aware UTC datetime, if there is one."""
        return parse_timestamp(self.close.get("timestamp")) if self.close is not None else None

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
                    problem = entry_problem(entry)
                    if problem is None:
                        yield entry
                        continue
                    reason = problem
                _corrupt(path, lineno, reason, strict, depth)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            # A damaged or truncated compressed stream cannot be resynchronized: the rest of
            # the file is unreadable, so report it once and stop.
            _corrupt(path, lineno + 1, f"cannot decompress ({exc})", strict, depth)


def entry_problem(entry: object) -> str | None:
    """Return why a parsed JSON value is not a schema-v1 entry the readers accept, or None.

    The readers need a JSON object with a str ``session_id``, a non-negative int ``seq`` and
    a str ``event``; every other key is optional.
    """
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


def parse_timestamp(value: object) -> datetime | None:
    """Return an entry's ``timestamp`` as an aware UTC datetime, or None if it is no time."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # Schema v1 writes UTC with "Z"; a formatter's naive stamp is taken as UTC too.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# -- grouping ---------------------------------------------------------------------------------
class _Slot(ABC):
    """A session being built: what the grouping rules ask of it, however much it keeps."""

    __slots__ = ()

    @property
    @abstractmethod
    def start(self) -> dict[str, Any] | None:
        """Return the start entry held, if any."""

    @abstractmethod
    def has(self, seq: int) -> bool:
        """Return whether an entry with this seq was kept."""

    @abstractmethod
    def holds_copy(self, seq: int, entry: dict[str, Any]) -> bool:
        """Return whether ``entry`` is a redelivery of the entry kept under ``seq``."""

    @abstractmethod
    def holds_older(self, moment: datetime) -> bool:
        """Return whether an entry kept is older than ``moment``."""

    @abstractmethod
    def keep(self, entry: dict[str, Any]) -> None:
        """Keep a new ``(session_id, seq)``."""

    @abstractmethod
    def duplicate(self) -> None:
        """Count a repeated ``(session_id, seq)``."""


S = TypeVar("S", bound=_Slot)


class _Grouper(ABC, Generic[S]):
    """The grouping rules of :func:`read_sessions`, over slots that keep more or less."""

    def __init__(self) -> None:
        self._slots: list[S] = []
        self._current: dict[str, S] = {}
        # Earlier sessions of a reused id: late duplicates of their entries must not leak into
        # the newer session.
        self._earlier: dict[str, list[S]] = {}

    @abstractmethod
    def _slot(self, session_id: str) -> S: ...

    def add(self, entry: dict[str, Any]) -> None:
        """Add one entry that passed :func:`entry_problem` (as ``read_entries`` yields them)."""
        session_id: str = entry["session_id"]
        seq: int = entry["seq"]
        slot = self._current.get(session_id)
        if slot is None:
            slot = self._new(session_id)
        elif entry["event"] == _START and not self._joins(slot, entry):
            if self._late_duplicate(session_id, seq, entry):
                return
            slot = self._new(session_id)
        elif session_id in self._earlier and self._late_duplicate(session_id, seq, entry):
            # An exact copy of an earlier run's entry is that run's duplicate, even when the
            # newer run has the same seq: it must neither join nor count against the newer one.
            return
        if slot.has(seq):
            slot.duplicate()
        else:
            slot.keep(entry)

    def _new(self, session_id: str) -> S:
        previous = self._current.get(session_id)
        if previous is not None:
            self._earlier.setdefault(session_id, []).append(previous)
        slot = self._slot(session_id)
        self._current[session_id] = slot
        self._slots.append(slot)
        return slot

    def _late_duplicate(self, session_id: str, seq: int, entry: dict[str, Any]) -> bool:
        for slot in reversed(self._earlier.get(session_id, ())):
            if slot.holds_copy(seq, entry):
                slot.duplicate()
                return True
        return False

    @staticmethod
    def _joins(slot: S, start: dict[str, Any]) -> bool:
        """Return whether a start entry belongs to the id's current session."""
        if slot.start is not None:
            # Only a redelivered copy of the same start; a different one is a reused id.
            return start == slot.start
        # A start-less session is one whose start is in a file read later (rotation, files
        # passed newest first), unless it holds entries older than this start: then it is an
        # earlier run of a reused id whose start was rotated away.
        started = parse_timestamp(start.get("timestamp"))
        return started is None or not slot.holds_older(started)


class _SessionSlot(_Slot):
    """A session with every entry, by seq for deduplication."""

    __slots__ = ("by_seq", "session")

    def __init__(self, session_id: str) -> None:
        self.session = Session(session_id)
        self.by_seq: dict[int, dict[str, Any]] = {}

    @property
    def start(self) -> dict[str, Any] | None:
        return self.session.start

    def has(self, seq: int) -> bool:
        return seq in self.by_seq

    def holds_copy(self, seq: int, entry: dict[str, Any]) -> bool:
        return self.by_seq.get(seq) == entry

    def holds_older(self, moment: datetime) -> bool:
        for other in self.by_seq.values():
            stamp = parse_timestamp(other.get("timestamp"))
            if stamp is not None and stamp < moment:
                return True
        return False

    def keep(self, entry: dict[str, Any]) -> None:
        self.by_seq[entry["seq"]] = entry
        session = self.session
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

    def duplicate(self) -> None:
        self.session._duplicates += 1


class SessionBuilder(_Grouper[_SessionSlot]):
    """Group entries into :class:`Session` objects, one :meth:`add` at a time.

    This is :func:`read_sessions` without the reading: feed it only the entries you want (say,
    one id's) to hold only those in memory. Entries must be valid (see :func:`entry_problem`).
    """

    def _slot(self, session_id: str) -> _SessionSlot:
        return _SessionSlot(session_id)

    def finish(self) -> list[Session]:
        """Return the sessions in order of first appearance, their entries sorted by seq."""
        for slot in self._slots:
            slot.session.entries.sort(key=_by_seq)
        return [slot.session for slot in self._slots]


# -- summaries --------------------------------------------------------------------------------
class _SeqRuns:
    """A set of seqs kept as sorted disjoint runs: its size grows with the holes, not the seqs."""

    __slots__ = ("count", "ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.count = 0

    def __contains__(self, seq: int) -> bool:
        at = bisect.bisect_right(self.starts, seq) - 1
        return at >= 0 and seq <= self.ends[at]

    def add(self, seq: int) -> None:
        """Add a seq that is not in the set."""
        starts, ends = self.starts, self.ends
        self.count += 1
        if ends and seq == ends[-1] + 1:
            ends[-1] = seq  # the usual case: the next seq, in order
            return
        at = bisect.bisect_right(starts, seq)
        joins_left = at > 0 and ends[at - 1] == seq - 1
        joins_right = at < len(starts) and starts[at] == seq + 1
        if joins_left and joins_right:
            ends[at - 1] = ends[at]
            del starts[at], ends[at]
        elif joins_left:
            ends[at - 1] = seq
        elif joins_right:
            starts[at] = seq
        else:
            starts.insert(at, seq)
            ends.insert(at, seq)

    def missing(self) -> int:
        """Return how many seqs from 0 to the highest one are not in the set."""
        return self.ends[-1] + 1 - self.count if self.ends else 0


@dataclass(eq=False)
class SessionSummary:
    """One session read back without its entries: what a listing of sessions shows.

    ``started_at`` is the start entry's time; ``first_stamp`` the time of the lowest-seq
    other entry that has one (for a session whose start was rotated away).
    """

    session_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = "open"
    started_at: datetime | None = None
    first_stamp: datetime | None = None
    closed_at: datetime | None = None
    duration_s: float | None = None
    logged: int = 0
    errors: int = 0
    dropped: int = 0
    duplicates: int = 0
    missing: int = 0


class _SummarySlot(_Slot):
    """A session's summary, the seqs seen as runs, and the span of their timestamps."""

    __slots__ = ("_first_seq", "_start", "earliest", "latest", "seqs", "summary")

    def __init__(self, session_id: str) -> None:
        self.summary = SessionSummary(session_id)
        self.seqs = _SeqRuns()
        self._start: dict[str, Any] | None = None
        self._first_seq = -1
        self.earliest: datetime | None = None
        self.latest: datetime | None = None

    @property
    def start(self) -> dict[str, Any] | None:
        return self._start

    def has(self, seq: int) -> bool:
        return seq in self.seqs

    def holds_copy(self, seq: int, entry: dict[str, Any]) -> bool:
        # No entry is kept to compare with: a copy has a seq this run holds and a call-time
        # stamp within its span (a later run of the id starts after this one closed).
        if seq not in self.seqs or self.earliest is None or self.latest is None:
            return False
        stamp = parse_timestamp(entry.get("timestamp"))
        return stamp is not None and self.earliest <= stamp <= self.latest

    def holds_older(self, moment: datetime) -> bool:
        return self.earliest is not None and self.earliest < moment

    def keep(self, entry: dict[str, Any]) -> None:
        seq: int = entry["seq"]
        self.seqs.add(seq)
        summary = self.summary
        stamp = parse_timestamp(entry.get("timestamp"))
        if stamp is not None:
            if self.earliest is None or stamp < self.earliest:
                self.earliest = stamp
            if self.latest is None or stamp > self.latest:
                self.latest = stamp
        event = entry["event"]
        if event == _START:
            self._start = entry
            metadata = entry.get("metadata")
            summary.metadata = metadata if isinstance(metadata, dict) else {}
            summary.started_at = stamp
            return
        if event == _CLOSE and summary.status == "open":
            status = entry.get("status")
            # As Session.status: a formatter may drop or mangle the key.
            summary.status = status if isinstance(status, str) else "closed"
            summary.closed_at = stamp
            duration = entry.get("duration_s")
            if isinstance(duration, int | float) and not isinstance(duration, bool):
                summary.duration_s = float(duration)
            return
        # The rest are what Session.entries holds: log, gap, unknown events, a second close.
        if stamp is not None and (self._first_seq < 0 or seq < self._first_seq):
            self._first_seq = seq
            summary.first_stamp = stamp
        if event == "log":
            summary.logged += 1
        levelno = entry.get("levelno")
        if isinstance(levelno, int) and levelno >= 40:
            summary.errors += 1
        if event == "gap":
            count = entry.get("dropped")
            if isinstance(count, int) and not isinstance(count, bool):
                summary.dropped += count

    def duplicate(self) -> None:
        self.summary.duplicates += 1


class SummaryBuilder(_Grouper[_SummarySlot]):
    """Group entries into :class:`SessionSummary` objects, keeping no entry lists.

    Memory grows with the number of sessions, not of entries: each keeps its start entry and
    its seqs as runs. The grouping is :func:`read_sessions`' except that, holding no entries,
    a redelivered entry of an earlier run of a reused id is recognised by its seq and its
    timestamp rather than by comparing the whole entry.
    """

    def _slot(self, session_id: str) -> _SummarySlot:
        return _SummarySlot(session_id)

    def finish(self) -> list[SessionSummary]:
        """Return the summaries in order of first appearance."""
        for slot in self._slots:
            slot.summary.missing = slot.seqs.missing()
        return [slot.summary for slot in self._slots]
