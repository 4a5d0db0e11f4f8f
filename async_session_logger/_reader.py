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
from typing import Any, Final, Generic, TypeVar

import orjson

from ._errors import SessionLoggerError
from ._validate import level_name

__all__ = [
    "MAX_LEVEL_NAMES",
    "OTHER_LEVELS",
    "CorruptLogError",
    "LevelCounter",
    "ReaderWarning",
    "Session",
    "SessionBuilder",
    "SessionSummary",
    "SummaryBuilder",
    "discarded_of",
    "duration_of",
    "entry_problem",
    "link_children",
    "parent_of",
    "parse_timestamp",
    "read_entries",
    "read_sessions",
    "recorded_levels",
    "status_of",
    "summary_of",
]

_START = "session_start"
_CLOSE = "session_close"

# Frames between warnings.warn() and the code iterating read_entries(): _corrupt, _read_file,
# _read_paths. Pointing the warning at the caller lets ``-W error`` and filters name its line.
_WARN_DEPTH = 4

_by_seq = operator.itemgetter("seq")

# Level names counted per session before the rest are lumped together: a hostile log could
# otherwise make a session's count grow with every entry (each with a level name of its own).
MAX_LEVEL_NAMES: Final = 64
OTHER_LEVELS: Final = "(other)"
# Ids named in a parent-cycle warning; a longer cycle is summed up by its length.
_CYCLE_IDS_SHOWN = 5


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

    Children are linked to their parent: a session whose start entry names a
    ``parent_session_id`` read here is in that session's :attr:`Session.children` (and in the
    list returned, like every session). A parent id used by several sessions (a reused id)
    names the one that started last at or before the child. Sessions that name each other as
    parent (a cycle, which no logger writes) are all read as roots, with a :class:`ReaderWarning`.

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
    return builder._finish()


@dataclass
class Session:
    """One session read back from logs.

    ``entries`` holds the ``log`` and ``gap`` entries (and any entry of an unknown event)
    sorted by ``seq``; ``start`` and ``close`` are the lifecycle entries, ``None`` when
    absent (a start rotated away, a session still open or cut short by a crash).

    ``children`` holds the sessions of the same read whose start entry names this one as
    parent, in start order (filled by :func:`read_sessions` and :meth:`SessionBuilder.finish`).
    Entries of a flushed ``buffer_level`` block carry their call-time timestamps: timestamps
    need not increase with ``seq``.
    """

    session_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list, repr=False)
    start: dict[str, Any] | None = None
    close: dict[str, Any] | None = None
    # Not compared: two reads of one session are equal whether or not its children were read.
    children: list[Session] = field(default_factory=list, repr=False, compare=False)
    _duplicates: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def status(self) -> str:
        """Return the close entry's status, or ``open`` when there is no close entry.

        The logger writes ``closed``, ``interrupted``, ``error``, ``timeout`` (``idle_timeout``
        closed it) and ``evicted`` (``max_open_sessions`` closed it); any other string in the
        file is returned as it is.
        """
        # A formatter may drop or mangle the key; the session is still closed.
        return "open" if self.close is None else status_of(self.close)

    @property
    def parent_session_id(self) -> str | None:
        """Return the parent session's id the start entry records, or None (a root)."""
        return parent_of(self.start)

    @property
    def levels(self) -> dict[str, int]:
        """Return how many log entries were written per level name, e.g. ``{"INFO": 3}``.

        From the close entry's ``levels``; for a session with no close entry, counted from
        the ``log`` entries read. ``{}`` for a close entry without ``levels`` (written before
        the key existed). Items that are not a name and a count are left out.
        """
        if self.close is not None:
            return recorded_levels(self.close)
        counts = LevelCounter()
        for entry in self.entries:
            counts.add(entry)
        return counts.ordered()

    @property
    def summary(self) -> dict[str, Any]:
        """Return the close entry's ``summary`` (the fields ``annotate()`` merged), or ``{}``."""
        return summary_of(self.close)

    @property
    def discarded(self) -> int:
        """Return how many entries ``buffer_level`` held and never wrote (the close says so)."""
        return discarded_of(self.close)

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
        return duration_of(self.close)

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


# -- the fields of issue 12 -------------------------------------------------------------------
def _count(value: object) -> int | None:
    # bool is an int subclass; true is no count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def parent_of(start: dict[str, Any] | None) -> str | None:
    """Return a start entry's ``parent_session_id`` if it is a non-empty string, else None."""
    value = None if start is None else start.get("parent_session_id")
    return value if isinstance(value, str) and value else None


def recorded_levels(close: dict[str, Any]) -> dict[str, int]:
    """Return a close entry's ``levels``: its items with a str name and a count, at most 64."""
    raw = close.get("levels")
    if not isinstance(raw, dict):
        return {}
    counts = LevelCounter()
    for name, value in raw.items():
        count = _count(value)
        if count is not None:
            counts.add_count(name, count)
    return counts.levels


def summary_of(close: dict[str, Any] | None) -> dict[str, Any]:
    """Return a close entry's ``summary`` if it is an object, else ``{}``."""
    value = None if close is None else close.get("summary")
    return value if isinstance(value, dict) else {}


def status_of(close: dict[str, Any]) -> str:
    """Return a close entry's status; ``closed`` when a formatter dropped or mangled the key."""
    status = close.get("status")
    return status if isinstance(status, str) else "closed"


def duration_of(close: dict[str, Any] | None) -> float | None:
    """Return the duration a close entry records, or None (no close, or no number)."""
    value = None if close is None else close.get("duration_s")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def discarded_of(close: dict[str, Any] | None) -> int:
    """Return a close entry's ``discarded`` if it is a count, else 0."""
    return (_count(close.get("discarded")) or 0) if close is not None else 0


_STANDARD_ORDER: Final = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "CRITICAL": 4}


def _level_order(item: tuple[str, int]) -> tuple[int, str]:
    name = item[0]
    rank = _STANDARD_ORDER.get(name)
    if rank is not None:
        return rank, ""
    return (6, "") if name == OTHER_LEVELS else (5, name)


class LevelCounter:
    """Count log entries per level name, holding at most ``MAX_LEVEL_NAMES`` names."""

    __slots__ = ("levels",)

    def __init__(self) -> None:
        self.levels: dict[str, int] = {}

    def add(self, entry: dict[str, Any]) -> None:
        """Count one entry if it is a ``log`` entry, under its ``level`` (or its ``levelno``)."""
        if entry.get("event") != "log":
            return
        name = entry.get("level")
        if not isinstance(name, str):
            levelno = _count(entry.get("levelno"))
            name = level_name(levelno) if levelno is not None else "?"
        self.add_count(name, 1)

    def ordered(self) -> dict[str, int]:
        """Return the counts in a fixed order, whatever order the entries came in.

        The standard names by severity (as a close entry records them), then the others by
        name, ``OTHER_LEVELS`` last: a store that receives a session's entries out of order
        then holds the same row as one that received them in order.
        """
        return dict(sorted(self.levels.items(), key=_level_order))

    def add_count(self, name: str, count: int) -> None:
        """Add ``count`` under ``name``; past the name limit, under ``OTHER_LEVELS``."""
        levels = self.levels
        if name not in levels and len(levels) >= MAX_LEVEL_NAMES - 1 and name != OTHER_LEVELS:
            name = OTHER_LEVELS
        levels[name] = levels.get(name, 0) + count


N = TypeVar("N", "Session", "SessionSummary")


def _start_order(node: Session | SessionSummary) -> tuple[bool, datetime]:
    started = node.started_at
    return (started is None, started or datetime.min.replace(tzinfo=UTC))


def _pick_parent(runs: list[N], started: datetime | None) -> N:
    """Return the run of a parent id a child belongs to: the last started at or before it."""
    if len(runs) == 1:
        return runs[0]
    if started is not None:
        earlier = [r for r in runs if r.started_at is not None and r.started_at <= started]
        if earlier:
            return max(earlier, key=_start_order)
    return runs[-1]


def link_children(nodes: list[N], depth: int = 2) -> None:
    """Fill every node's ``children`` from the parent ids, breaking cycles with a warning.

    The one rule for files and stores: a parent id used by several runs names the run that
    started last at or before the child; a cycle is read as roots (``ReaderWarning`` pointing
    ``depth`` frames up).

    Iterative throughout: a hostile file with a chain of a million parents must neither hit
    the recursion limit nor loop.
    """
    runs: dict[str, list[N]] = {}
    for node in nodes:
        node.children.clear()  # finish() may be called again
        runs.setdefault(node.session_id, []).append(node)
    parent: dict[int, N] = {}
    for node in nodes:
        parent_id = node.parent_session_id
        candidates = runs.get(parent_id) if parent_id is not None else None
        if candidates:
            parent[id(node)] = _pick_parent(candidates, node.started_at)
    # Walk up from each node once: 1 = on the path walked now, 2 = known to reach a root.
    state: dict[int, int] = {}
    cycles: list[list[N]] = []
    for node in nodes:
        path: list[N] = []
        current: N | None = node
        while current is not None and id(current) not in state:
            state[id(current)] = 1
            path.append(current)
            current = parent.get(id(current))
        if current is not None and state[id(current)] == 1:
            at = next(i for i, seen in enumerate(path) if seen is current)
            cycle = path[at:]
            for member in cycle:
                del parent[id(member)]
            cycles.append(cycle)
        for seen in path:
            state[id(seen)] = 2
    for node in nodes:
        up = parent.get(id(node))
        if up is not None:
            up.children.append(node)
    for node in nodes:
        if len(node.children) > 1:
            node.children.sort(key=_start_order)  # stable: ties keep the order read
    for cycle in cycles:
        warnings.warn(_cycle_message([n.session_id for n in cycle]), ReaderWarning, depth)


def _cycle_message(ids: list[str]) -> str:
    if len(ids) == 1:
        return f"session {ids[0]!r} names itself as its parent; read as a root"
    shown = " -> ".join(repr(i) for i in ids[:_CYCLE_IDS_SHOWN])
    more = f" -> ... ({len(ids)} sessions)" if len(ids) > _CYCLE_IDS_SHOWN else f" -> {ids[0]!r}"
    return f"sessions name each other as parent ({shown}{more}); read as roots"


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
        """Return the sessions in order of first appearance, their entries sorted by seq.

        Each session's ``children`` are filled as :func:`read_sessions` fills them, from the
        sessions this builder was given (a parent cycle gives a :class:`ReaderWarning`).
        """
        return self._finish()

    def _finish(self) -> list[Session]:
        for slot in self._slots:
            slot.session.entries.sort(key=_by_seq)
        sessions = [slot.session for slot in self._slots]
        # Frames: _link, _finish, finish() or read_sessions(), then their caller.
        link_children(sessions, 4)
        return sessions


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
    other entry that has one (for a session whose start was rotated away). ``parent_session_id``,
    ``levels``, ``summary``, ``discarded`` and ``children`` are :class:`Session`'s.
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
    parent_session_id: str | None = None
    levels: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    discarded: int = 0
    children: list[SessionSummary] = field(default_factory=list, repr=False)


class _SummarySlot(_Slot):
    """A session's summary, the seqs seen as runs, and the span of their timestamps."""

    __slots__ = ("_first_seq", "_start", "counted", "earliest", "latest", "seqs", "summary")

    def __init__(self, session_id: str) -> None:
        self.summary = SessionSummary(session_id)
        self.seqs = _SeqRuns()
        # The levels of the log entries read, for a session that turns out to have no close.
        self.counted = LevelCounter()
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
            summary.parent_session_id = parent_of(entry)
            return
        if event == _CLOSE and summary.status == "open":
            summary.status = status_of(entry)
            summary.closed_at = stamp
            summary.duration_s = duration_of(entry)
            summary.levels = recorded_levels(entry)
            summary.summary = summary_of(entry)
            summary.discarded = discarded_of(entry)
            return
        # The rest are what Session.entries holds: log, gap, unknown events, a second close.
        if stamp is not None and (self._first_seq < 0 or seq < self._first_seq):
            self._first_seq = seq
            summary.first_stamp = stamp
        if event == "log":
            summary.logged += 1
            self.counted.add(entry)
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
        """Return the summaries in order of first appearance, children linked as in Session."""
        for slot in self._slots:
            summary = slot.summary
            summary.missing = slot.seqs.missing()
            if summary.status == "open":
                summary.levels = slot.counted.ordered()
        summaries = [slot.summary for slot in self._slots]
        link_children(summaries, 3)  # frames: link_children, finish, its caller
        return summaries
