"""Entries to rows, and a sessions row derived from the rows of its run.

**Runs.** Entries carry no run number, yet an id may be reused. A run is named by its start
entry's timestamp (normalized to ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, which sorts as time does),
and every other entry belongs to the run of the latest start of its id at or before its own
timestamp; ``""`` holds the entries of an id whose start is not (yet) stored. The run is thus
a function of the set of entries stored, not of their arrival order: when a start arrives
after entries of its run, the writer moves them (see ``sqlite.SqliteStore``). Until then an
entry may sit in a wrong run; when its seq is taken there by a different entry it waits in a
parked run (``!`` and its time), which gets no sessions row and is re-placed whenever a start
of its id arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

import orjson

from .._reader import (
    LevelCounter,
    discarded_of,
    parent_of,
    parse_timestamp,
    recorded_levels,
    summary_of,
)
from .._validate import level_name

__all__ = [
    "NO_RUN",
    "ENTRY_COLUMNS",
    "SESSION_COLUMNS",
    "RunFacts",
    "entry_values",
    "fits_key",
    "session_values",
    "stamp",
]

NO_RUN: Final = ""
# Prefix of the runs where entries wait whose seq collided with another run's (see sqlite.py).
PARKED: Final = "!"
# Sorts after every normalized stamp: an entry without a time belongs to its id's latest run.
LATEST_KEY: Final = "~"
_CANONICAL: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z", re.ASCII)
ENTRY_COLUMNS: Final = (
    "session_id",
    "run",
    "seq",
    "timestamp",
    "event",
    "level",
    "levelno",
    "message",
    "custom_fields",
    "entry",
)
SESSION_COLUMNS: Final = (
    "session_id",
    "run",
    "parent",
    "host",
    "started",
    "closed",
    "first_stamp",
    "status",
    "duration_s",
    "metadata",
    "summary",
    "levels",
    "entries",
    "errors",
    "dropped",
    "discarded",
    "missing",
    "stored",
)


def stamp(value: object) -> str | None:
    """Return an entry's timestamp normalized to fixed-width UTC text, or None if it is none."""
    if isinstance(value, str) and _CANONICAL.match(value):
        return value  # what the logger writes: already normalized (the common case, cheap)
    moment = parse_timestamp(value)
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: Any) -> str | None:
    # Values come from a parsed JSON line: they always encode.
    return None if value is None else orjson.dumps(value).decode()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def entry_values(entry: dict[str, Any], line: str, run: str) -> tuple[Any, ...]:
    """Return the ``entries`` row of a valid entry (parsed from ``line``) in ``run``."""
    levelno = _int(entry.get("levelno"))
    # SQLite holds 64-bit integers: a hostile levelno beyond that stays in the JSON only.
    if levelno is not None and not -(2**63) <= levelno < 2**63:
        levelno = None
    fields = entry.get("custom_fields")
    return (
        entry["session_id"],
        run,
        entry["seq"],
        stamp(entry.get("timestamp")),
        entry["event"],
        _text(entry.get("level")),
        levelno,
        _text(entry.get("message")),
        _json(fields) if isinstance(fields, dict) else None,
        line,
    )


@dataclass
class RunFacts:
    """What the writer read from the rows of one run to derive its sessions row."""

    start: dict[str, Any] | None
    close: dict[str, Any] | None
    # (level, levelno, count) of the run's log entries.
    log_levels: list[tuple[str | None, int | None, int]]
    errors: int
    dropped: int
    max_seq: int
    stored: int
    first_stamp: str | None


def session_values(session_id: str, run: str, facts: RunFacts) -> tuple[Any, ...]:
    """Return the ``sessions`` row of a run, as ``read_sessions`` would describe it."""
    start, close = facts.start, facts.close
    metadata = start.get("metadata") if start is not None else None
    metadata = metadata if isinstance(metadata, dict) else {}
    if close is None:
        status = "open"
        counter = LevelCounter()
        for name, levelno, count in facts.log_levels:
            if name is None:
                name = level_name(levelno) if levelno is not None and levelno >= 0 else "?"
            counter.add_count(name, count)
        levels = counter.ordered()
        duration = None
    else:
        raw = close.get("status")
        status = raw if isinstance(raw, str) else "closed"
        levels = recorded_levels(close)
        value = close.get("duration_s")
        duration = (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    host = metadata.get("host")
    return (
        session_id,
        run,
        parent_of(start),
        host if isinstance(host, str) else None,
        stamp(start.get("timestamp")) if start is not None else None,
        stamp(close.get("timestamp")) if close is not None else None,
        facts.first_stamp,
        status,
        duration,
        _json(metadata),
        _json(summary_of(close)),
        _json(levels),
        sum(count for _, _, count in facts.log_levels),
        facts.errors,
        facts.dropped,
        discarded_of(close),
        facts.max_seq + 1 - facts.stored,
        facts.stored,
    )


def fits_key(entry: dict[str, Any]) -> bool:
    """Return whether an entry's seq fits the store's 64-bit key."""
    seq: int = entry["seq"]
    return seq < 2**63
