"""Filters of ``sessions --store`` turned into parameterised SQL, and rows into reader objects.

Values never reach the SQL text: every one is a ``?`` parameter. Metadata keys do reach a JSON
path, so only keys of letters, digits, ``_``, ``-`` and ``.`` are filtered in SQL; any other key is
matched in Python (the SQL filter is a superset, the Python check exact, as for files).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from .._reader import (
    ReaderWarning,
    Session,
    SessionBuilder,
    SessionSummary,
    link_children,
    parse_timestamp,
)
from .schema import StoreError
from .sqlite import SqliteStore

__all__ = [
    "Filters",
    "link",
    "load_runs",
    "load_summaries",
    "matches",
    "parse_where",
    "summary_of_row",
    "where_sql",
]

_SAFE_KEY: Final = re.compile(r"[A-Za-z0-9_.-]{1,256}\Z")
_SAFE_PART: Final = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")


@dataclass
class Filters:
    """What ``sessions`` asks for: statuses, a start-time window, metadata equalities."""

    status: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    meta: list[tuple[str, str]] = field(default_factory=list)


def parse_where(clauses: Sequence[str]) -> list[tuple[str, str]]:
    """Return ``(key, value)`` pairs of ``metadata.KEY=VALUE`` clauses.

    Raises:
        StoreError: a clause is not ``metadata.KEY=VALUE``.
    """
    pairs = []
    for clause in clauses:
        column, sep, value = clause.partition("=")
        if not sep or not column.startswith("metadata.") or column == "metadata.":
            raise StoreError(f"--where takes metadata.KEY=VALUE, not {clause!r}")
        pairs.append((column.removeprefix("metadata."), value))
    return pairs


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def where_sql(filters: Filters, *, dialect: str = "sqlite") -> tuple[str, list[Any]]:
    """Return a WHERE clause (without the keyword) and its parameters.

    ``dialect`` is ``"sqlite"`` or ``"postgresql"``: only the JSON functions differ (SQLite's
    ``json_type``/``json_extract`` with a ``$.`` path text, PostgreSQL's ``json_typeof`` and
    ``#>>`` with a path array); both take the path and the value as parameters.
    """
    parts: list[str] = []
    params: list[Any] = []
    if filters.status:
        parts.append(f"status IN ({', '.join('?' * len(filters.status))})")
        params.extend(filters.status)
    # A session without a start time is placed by its first entry's (as the file CLI does).
    moment = "COALESCE(started, first_stamp, closed)"
    if filters.since is not None:
        parts.append(f"{moment} >= ?")
        params.append(_stamp(filters.since))
    if filters.until is not None:
        parts.append(f"{moment} < ?")
        params.append(_stamp(filters.until))
    for key, value in filters.meta:
        # Each path twice: SQLite's path text, PostgreSQL's key array.
        paths: list[str] = []
        arrays: list[list[str]] = []
        if _SAFE_KEY.match(key):
            paths.append('$."' + key + '"')
            arrays.append([key])
        segments = key.split(".")
        if len(segments) > 1 and all(_SAFE_PART.match(p) for p in segments):
            paths.append("$." + ".".join(f'"{p}"' for p in segments))
            arrays.append(segments)
        if not paths:
            continue  # a key SQL cannot name safely: matched in Python only
        # A string must equal the value; any other JSON type is compared in Python.
        ors = []
        if dialect == "postgresql":
            for array in arrays:
                ors.append(
                    "(metadata #> ?::text[] IS NOT NULL AND "
                    "(json_typeof(metadata #> ?::text[]) <> 'string' "
                    "OR metadata #>> ?::text[] = ?))"
                )
                params.extend((array, array, array, value))
            parts.append("(" + " OR ".join(ors) + ")")
            continue
        for path in paths:
            ors.append(
                "(json_type(metadata, ?) IS NOT NULL AND "
                "(json_type(metadata, ?) <> 'text' OR json_extract(metadata, ?) = ?))"
            )
            params.extend((path, path, path, value))
        parts.append("(" + " OR ".join(ors) + ")")
    return " AND ".join(parts), params


def matches(metadata: dict[str, Any], key: str, wanted: str) -> bool:
    """Return whether metadata ``key`` (dotted: nested) equals ``wanted``, as ``--meta`` does."""
    value: Any = metadata
    if key in metadata:
        value = metadata[key]
    else:
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
    if isinstance(value, str):
        return value == wanted
    try:
        return orjson.dumps(value).decode() == wanted
    except TypeError:
        return False


def _loads(text: object) -> Any:
    return orjson.loads(text) if isinstance(text, str | bytes) else None


def summary_of_row(row: dict[str, Any]) -> SessionSummary:
    """Return the :class:`SessionSummary` a sessions row describes (``children`` empty)."""
    metadata = _loads(row["metadata"])
    summary = _loads(row["summary"])
    levels = _loads(row["levels"])
    return SessionSummary(
        session_id=row["session_id"],
        metadata=metadata if isinstance(metadata, dict) else {},
        status=row["status"],
        started_at=parse_timestamp(row["started"]),
        first_stamp=parse_timestamp(row["first_stamp"]),
        closed_at=parse_timestamp(row["closed"]),
        duration_s=row["duration_s"],
        logged=row["entries"],
        errors=row["errors"],
        dropped=row["dropped"],
        missing=row["missing"],
        parent_session_id=row["parent"],
        levels=levels if isinstance(levels, dict) else {},
        summary=summary if isinstance(summary, dict) else {},
        discarded=row["discarded"],
    )


def link(summaries: list[SessionSummary]) -> None:
    """Fill ``children`` from the parent ids by the reader's own rule (cycles read as roots,
    with a ``ReaderWarning`` as for files)."""
    link_children(summaries, 4)  # frames: link_children, link, load_summaries, its caller


def load_summaries(store: SqliteStore, filters: Filters, *, every: bool) -> list[SessionSummary]:
    """Return the sessions of a store, children linked; all of them when ``every``.

    Without ``every`` only the rows the filters select are read (the caller still applies the
    filters in Python, which are exact where the SQL is a superset).
    """
    dialect = getattr(store, "dialect", "sqlite")
    where, params = ("", []) if every else where_sql(filters, dialect=dialect)
    found = [summary_of_row(row) for row in store.session_rows(where, params)]
    link(found)
    return found


def load_runs(
    store: SqliteStore, session_id: str, *, tree: bool
) -> list[tuple[Session, Sequence[Session | SessionSummary]]]:
    """Return each run of ``session_id`` with its children, as ``show`` prints them.

    The children (with ``tree``: every descendant) are read in full and linked by the
    reader's own :class:`SessionBuilder`. An empty list: no such session in the store.
    """
    ids = [session_id]
    seen = {session_id}
    todo = [session_id]
    while todo:
        current = todo.pop()
        for (child,) in store.conn.execute(
            "SELECT DISTINCT session_id FROM sessions WHERE parent = ?", (current,)
        ):
            if child not in seen:
                seen.add(child)
                ids.append(child)
                if tree:
                    todo.append(child)
    builder = SessionBuilder()
    for entry in store.entries(ids):
        builder.add(entry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReaderWarning)
        sessions = builder.finish()
    return [(s, s.children) for s in sessions if s.session_id == session_id]
