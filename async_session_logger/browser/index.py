"""The session browser's in-memory index: one small row per session run, updated entry by entry.

Built in one pass over the files at start, then fed the lines the files grow by. A row keeps
what the list shows and filters on (status, times, counts, levels, metadata, parent, summary)
and a bounded lower-case text of the id, metadata and messages for the text search; never the
entries themselves (a session page reads those from the files again, see ``sources``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from .._reader import (
    LevelCounter,
    discarded_of,
    duration_of,
    parent_of,
    recorded_levels,
    status_of,
    summary_of,
)
from ..store.rows import stamp as stamp_of

__all__ = ["TEXT_LIMIT", "Query", "Row", "SessionIndex", "SORTS"]

# Bytes of lower-case text kept per session for the text search (id, metadata, messages).
TEXT_LIMIT: Final = 64 * 1024
SORTS: Final = ("start", "-start", "duration", "-duration")
# Sorts before every time: sessions with no time at all come last in the newest-first list.
_EPOCH_KEY: Final = ""


@dataclass(slots=True)
class Row:
    """One run of one session id, as the list shows it."""

    session_id: str
    run: int
    status: str = "open"
    started: str | None = None
    closed: str | None = None
    first_stamp: str | None = None
    duration_s: float | None = None
    entries: int = 0
    errors: int = 0
    counted: LevelCounter = field(default_factory=LevelCounter)
    recorded: dict[str, int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    discarded: int = 0
    seqs: set[int] = field(default_factory=set)
    start: dict[str, Any] | None = None
    text: list[str] = field(default_factory=list)
    text_size: int = 0
    children: int = 0
    version: int = 0

    @property
    def moment(self) -> str:
        """Return the time the list sorts and filters on: start, else first entry, else close."""
        return self.started or self.first_stamp or self.closed or _EPOCH_KEY

    @property
    def missing(self) -> int:
        """Return how many seqs below the highest one were never read."""
        return (max(self.seqs) + 1 - len(self.seqs)) if self.seqs else 0

    def levels(self) -> dict[str, int]:
        """Return the close entry's recorded levels, or those counted while it is open."""
        return self.recorded if self.recorded is not None else self.counted.ordered()

    def add_text(self, value: str) -> None:
        """Keep ``value`` (lower case) for the text search, within ``TEXT_LIMIT``."""
        if self.text_size >= TEXT_LIMIT:
            return
        piece = value[: TEXT_LIMIT - self.text_size].lower()
        self.text.append(piece)
        self.text_size += len(piece)

    def matches(self, needle: str) -> bool:
        """Return whether the lower-case ``needle`` is in the id, metadata or messages."""
        text = self.text
        if len(text) != 1:
            # Joined once, at the first search after a change: one C-level scan per row.
            text[:] = ["\x00".join(text)]
        return needle in text[0]

    def describe(self) -> dict[str, Any]:
        """Return the row as the JSON API gives it."""
        return {
            "session_id": self.session_id,
            "run": self.run,
            "status": self.status,
            "started": self.started,
            "closed": self.closed,
            "first_stamp": self.first_stamp,
            "duration_s": self.duration_s,
            "entries": self.entries,
            "errors": self.errors,
            "missing": self.missing,
            "levels": self.levels(),
            "metadata": self.metadata,
            "parent": self.parent,
            "children": self.children,
            "summary": self.summary,
            "discarded": self.discarded,
        }


@dataclass
class Query:
    """What ``/api/sessions`` asks for."""

    status: Sequence[str] = ()
    text: str = ""
    since: datetime | None = None
    until: datetime | None = None
    sort: str = "-start"
    limit: int = 50
    offset: int = 0


def _bound(moment: datetime) -> str:
    """Return a time in the rows' fixed-width form (which sorts as time does)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SessionIndex:
    """Every session run read so far, by id; fed entries that passed ``entry_problem``."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self._current: dict[str, Row] = {}
        self._runs: dict[str, list[Row]] = {}
        # Bumped on every change: the live events say which rows changed since a version.
        self.version = 0
        self._last: tuple[tuple[Any, ...], list[Row]] | None = None
        # The rows by (moment, id, run), ascending, kept in order as rows come and change (a
        # bisect and one list move each). Filters walk it: a list request sorts nothing.
        self._by_start: list[Row] = []
        self._start_dirty = False
        # The rows by duration, both ways, kept until a session is added or closed.
        self._duration_version = 0
        self._by_duration: tuple[int, list[Row], list[Row]] | None = None

    def add(self, entry: dict[str, Any]) -> Row | None:
        """Add one entry; return the row it changed (None for a duplicate)."""
        session_id: str = entry["session_id"]
        seq: int = entry["seq"]
        event = entry["event"]
        row = self._current.get(session_id)
        fresh = row is None or (
            event == "session_start" and row.start is not None and row.start != entry
        )
        if fresh:
            row = self._new(session_id)
        assert row is not None
        if seq in row.seqs:
            return None
        before = row.moment
        row.seqs.add(seq)
        stamp = stamp_of(entry.get("timestamp"))
        if event == "session_start":
            row.start = entry
            metadata = entry.get("metadata")
            row.metadata = metadata if isinstance(metadata, dict) else {}
            row.started = stamp
            row.parent = parent_of(entry)
            row.add_text(orjson.dumps(row.metadata).decode())
            if row.parent is not None:
                self._count_child(row.parent)
        elif event == "session_close" and row.status == "open":
            row.status = status_of(entry)
            row.closed = stamp
            row.duration_s = duration_of(entry)
            row.recorded = recorded_levels(entry)
            row.summary = summary_of(entry)
            row.discarded = discarded_of(entry)
        else:
            if row.first_stamp is None and stamp is not None:
                row.first_stamp = stamp
            if event == "log":
                row.entries += 1
                row.counted.add(entry)
            levelno = entry.get("levelno")
            if isinstance(levelno, int) and levelno >= 40:
                row.errors += 1
            message = entry.get("message")
            if isinstance(message, str):
                row.add_text(message)
        self.version += 1
        row.version = self.version
        if fresh:
            by_start = self._by_start
            if not by_start or _start_key(by_start[-1]) <= _start_key(row):
                by_start.append(row)  # the usual case: a session newer than every other
            else:
                bisect.insort(by_start, row, key=_start_key)
            self._duration_version += 1
        elif row.moment != before:
            self._move(row, before)
        if event == "session_close":
            self._duration_version += 1
        return row

    def _move(self, row: Row, before: str) -> None:
        """Put a row whose moment changed from ``before`` at its new place in start order."""
        by_start = self._by_start
        old = (before, row.session_id, row.run)

        def placed(other: Row) -> tuple[str, str, int]:
            # The row's own key has changed already; the list holds it where ``old`` sorts.
            return old if other is row else _start_key(other)

        at = bisect.bisect_left(by_start, old, key=placed)
        if not self._start_dirty and at < len(by_start) and by_start[at] is row:
            del by_start[at]
            bisect.insort(by_start, row, key=_start_key)
        else:
            self._start_dirty = True

    def _ordered_by_start(self) -> list[Row]:
        if self._start_dirty:
            self._by_start.sort(key=_start_key)
            self._start_dirty = False
        return self._by_start

    def _ordered_by_duration(self, descending: bool) -> list[Row]:
        if self._by_duration is None or self._by_duration[0] != self._duration_version:
            timed = [r for r in self.rows if r.duration_s is not None]
            untimed = [r for r in self.rows if r.duration_s is None]
            rising = sorted(timed, key=_duration_key)
            falling = sorted(timed, key=_duration_key, reverse=True)
            # Sessions without a duration (open) come after the others either way.
            self._by_duration = (self._duration_version, rising + untimed, falling + untimed)
        _, rising, falling = self._by_duration
        return falling if descending else rising

    def _new(self, session_id: str) -> Row:
        runs = self._runs.setdefault(session_id, [])
        row = Row(session_id, run=len(runs) + 1)
        row.add_text(session_id)
        runs.append(row)
        self.rows.append(row)
        self._current[session_id] = row
        return row

    def _count_child(self, parent: str) -> None:
        found = self._current.get(parent)
        if found is not None:
            found.children += 1
            self.version += 1
            found.version = self.version

    def runs(self, session_id: str) -> list[Row]:
        """Return the runs of an id, oldest first ([] if unknown)."""
        return self._runs.get(session_id, [])

    def changed_since(self, version: int) -> list[Row]:
        """Return the rows changed after ``version`` (newest changes last)."""
        return sorted((r for r in self.rows if r.version > version), key=lambda r: r.version)

    def select(self, query: Query) -> tuple[int, list[Row]]:
        """Return how many rows match ``query``, and the page of them it asks for.

        The matching rows, sorted, are kept until the index changes: the next pages of the same
        query (and the live page's refetch while nothing changed) cost a slice.
        """
        key = (
            self.version,
            tuple(query.status),
            query.text,
            query.since,
            query.until,
            query.sort,
        )
        if self._last is None or self._last[0] != key:
            self._last = (key, self._match(query))
        found = self._last[1]
        return len(found), found[query.offset : query.offset + query.limit]

    def _match(self, query: Query) -> list[Row]:
        rows: Iterable[Row]
        if query.sort in ("start", "-start"):
            ordered = self._ordered_by_start()
            rows = reversed(ordered) if query.sort == "-start" else ordered
        else:
            rows = self._ordered_by_duration(query.sort == "-duration")
        if query.status:
            wanted = set(query.status)
            rows = (r for r in rows if r.status in wanted)
        if query.since is not None:
            since = _bound(query.since)
            rows = (r for r in rows if r.moment and r.moment >= since)
        if query.until is not None:
            until = _bound(query.until)
            rows = (r for r in rows if r.moment and r.moment < until)
        if query.text:
            needle = query.text.lower()
            rows = (r for r in rows if r.matches(needle))
        return list(rows)


def _start_key(row: Row) -> tuple[str, str, int]:
    return (row.moment, row.session_id, row.run)


def _duration_key(row: Row) -> float:
    return row.duration_s or 0.0
