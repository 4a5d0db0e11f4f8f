"""``sessions PATH...``: one row per session, filtered by status, time and metadata.

The files are streamed into one small summary per session (no entries kept): memory follows
the number of sessions listed, not the size of the files. ``--tree`` nests child sessions
under their parent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from .._reader import SessionSummary, SummaryBuilder
from ..store.query import matches
from . import _from_store
from ._common import CliError, parse_meta, parse_when, reader_warnings
from ._input import read_logs
from ._render import (
    escape,
    format_duration,
    format_keys,
    format_levels,
    format_time,
    json_text,
    table,
)

__all__ = ["add_parser", "describe", "run"]

STATUSES = ("open", "closed", "error", "interrupted", "timeout", "evicted")
# Nesting shown by indentation, two spaces a level, up to this depth (a hostile chain of
# parents must not push the other columns off the screen).
MAX_INDENT = 16


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "sessions",
        help="list the sessions in log files",
        description="List the sessions found in JSON Lines log files (rotated and .gz files "
        "too): id, start, duration, entries, errors, status; level counts, discarded entries, "
        "parent and summary keys when the logs carry them.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="log files (or --store URL)")
    parser.add_argument(
        "--status",
        action="append",
        choices=STATUSES,
        help="only sessions with this status (repeat for several)",
    )
    parser.add_argument(
        "--since", metavar="WHEN", help="only sessions started at or after WHEN (ISO 8601 or 2h)"
    )
    parser.add_argument("--until", metavar="WHEN", help="only sessions started before WHEN")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only sessions whose metadata KEY equals VALUE (repeat: all must match)",
    )
    parser.add_argument(
        "--tree",
        action="store_true",
        help="indent child sessions under their parent (the table; --json stays flat)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array instead")
    _from_store.add_options(parser, where=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the sessions."""
    since = parse_when(args.since, "--since") if args.since else None
    until = parse_when(args.until, "--until") if args.until else None
    if since is not None and until is not None and since >= until:
        raise CliError("--since must be earlier than --until", 2)
    meta = parse_meta(args.meta)
    _from_store.check_source(args)
    if args.store:
        every, bad_files = _from_store.summaries(args), 0
    else:
        builder = SummaryBuilder()
        bad_files = read_logs(args.paths, builder.add)
        with reader_warnings():
            every = builder.finish()
    chosen = [
        s
        for s in sorted(every, key=_start_key)
        if (not args.status or s.status in args.status)
        and _in_range(s, since, until)
        and all(matches(s.metadata, key, value) for key, value in meta)
    ]
    out = sys.stdout
    if args.json:
        out.write(json_text([describe(s) for s in chosen], orjson.OPT_INDENT_2))
        out.write("\n")
    elif chosen:
        placed = _tree(every, chosen) if args.tree else [(0, s, False) for s in chosen]
        out.write("\n".join(_table(placed)) + "\n")
    out.flush()
    return 1 if bad_files else 0


def _table(placed: list[tuple[int, SessionSummary, bool]]) -> list[str]:
    """Return the table of (depth, session, nested under its parent) rows.

    The columns after STATUS appear only when some row has something to put in them: logs
    written before level counts, summaries and child sessions existed list as they always did.
    """
    sessions = [s for _, s, _ in placed]
    extra: list[tuple[str, Callable[[SessionSummary, bool], str]]] = []
    if any(any(s.levels.values()) for s in sessions):
        extra.append(("LEVELS", lambda s, _: format_levels(s.levels)))
    if any(s.discarded for s in sessions):
        extra.append(("DISCARDED", lambda s, _: str(s.discarded)))
    if any(s.parent_session_id is not None and not nested for _, s, nested in placed):
        # Under --tree a nested row's parent is the row it hangs from.
        extra.append(("PARENT", _parent_cell))
    if any(s.summary for s in sessions):
        extra.append(("SUMMARY", lambda s, _: format_keys(s.summary)))
    rows = (
        [
            "  " * min(depth, MAX_INDENT) + escape(s.session_id),
            format_time(started(s)),
            format_duration(s.duration_s),
            str(s.logged),
            str(s.errors),
            escape(s.status),
            *(cell(s, nested) for _, cell in extra),
        ]
        for depth, s, nested in placed
    )
    headers = ["SESSION", "STARTED (UTC)", "DURATION", "ENTRIES", "ERRORS", "STATUS"]
    headers += [name for name, _ in extra]
    numeric = {2, 3, 4} | {i for i, name in enumerate(headers) if name == "DISCARDED"}
    return table(headers, rows, numeric=numeric)


def _parent_cell(session: SessionSummary, nested: bool) -> str:
    if nested or session.parent_session_id is None:
        return "-"
    return escape(session.parent_session_id)


def _tree(
    every: list[SessionSummary], chosen: list[SessionSummary]
) -> list[tuple[int, SessionSummary, bool]]:
    """Return the chosen sessions in tree order: each under its nearest chosen ancestor.

    A chosen session whose ancestors were all filtered out (or not read) is a top row, placed
    by its start time like the flat list. Loops, not recursion: a chain of parents may be deep.
    """
    picked = {id(s) for s in chosen}
    below: dict[int, list[SessionSummary]] = {}
    tops: list[SessionSummary] = []
    nested_under_parent: set[int] = set()
    linked = {id(child) for s in every for child in s.children}
    stack: list[tuple[SessionSummary, SessionSummary | None, SessionSummary | None]] = [
        (root, None, None) for root in reversed(every) if id(root) not in linked
    ]
    while stack:
        node, ancestor, parent = stack.pop()
        if id(node) in picked:
            if ancestor is None:
                tops.append(node)
            else:
                below.setdefault(id(ancestor), []).append(node)
                if ancestor is parent:
                    nested_under_parent.add(id(node))
            ancestor = node
        stack.extend((child, ancestor, node) for child in reversed(node.children))
    placed: list[tuple[int, SessionSummary, bool]] = []
    walk = [(0, top) for top in reversed(sorted(tops, key=_start_key))]
    while walk:
        depth, node = walk.pop()
        placed.append((depth, node, id(node) in nested_under_parent))
        kids = sorted(below.get(id(node), ()), key=_start_key)
        walk.extend((depth + 1, kid) for kid in reversed(kids))
    return placed


def started(session: SessionSummary) -> datetime | None:
    """Return the start time, or the first timestamp read when the start entry is missing."""
    return session.started_at or session.first_stamp or session.closed_at


def _start_key(session: SessionSummary) -> tuple[int, str]:
    moment = started(session)
    return (0, moment.isoformat()) if moment is not None else (1, "")


def _in_range(session: SessionSummary, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    moment = started(session)
    if moment is None:
        return False
    return (since is None or moment >= since) and (until is None or moment < until)


def describe(session: SessionSummary) -> dict[str, Any]:
    """Return the JSON summary of a session (``sessions --json``).

    The keys of issue 12 are there when the session has something in them, as in the log
    (``parent_session_id``, ``levels``, ``summary``, ``discarded``): older logs list as before.
    """
    moment = started(session)
    described = {
        "session_id": session.session_id,
        "status": session.status,
        "started_at": moment.isoformat().replace("+00:00", "Z") if moment else None,
        "closed_at": session.closed_at.isoformat().replace("+00:00", "Z")
        if session.closed_at
        else None,
        "duration_s": session.duration_s,
        "entries": session.logged,
        "errors": session.errors,
        "metadata": session.metadata,
        "missing": session.missing,
        "duplicates": session.duplicates,
    }
    if session.parent_session_id is not None:
        described["parent_session_id"] = session.parent_session_id
    if session.levels:
        described["levels"] = session.levels
    if session.summary:
        described["summary"] = session.summary
    if session.discarded:
        described["discarded"] = session.discarded
    return described
