"""``sessions PATH...``: one row per session, filtered by status, time and metadata.

The files are streamed into one small summary per session (no entries kept): memory follows
the number of sessions listed, not the size of the files.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import orjson

from .._reader import SessionSummary, SummaryBuilder
from ._common import CliError, parse_meta, parse_when
from ._input import read_logs
from ._render import escape, format_duration, format_time, json_text, table

__all__ = ["add_parser", "describe", "run"]

STATUSES = ("open", "closed", "error", "interrupted")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "sessions",
        help="list the sessions in log files",
        description="List the sessions found in JSON Lines log files (rotated and .gz files "
        "too): id, start, duration, entries, errors, status.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="log files")
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
    parser.add_argument("--json", action="store_true", help="print a JSON array instead")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the sessions."""
    since = parse_when(args.since, "--since") if args.since else None
    until = parse_when(args.until, "--until") if args.until else None
    if since is not None and until is not None and since >= until:
        raise CliError("--since must be earlier than --until", 2)
    meta = parse_meta(args.meta)
    builder = SummaryBuilder()
    bad_files = read_logs(args.paths, builder.add)
    chosen = [
        s
        for s in sorted(builder.finish(), key=_start_key)
        if (not args.status or s.status in args.status)
        and _in_range(s, since, until)
        and all(_meta_matches(s.metadata, key, value) for key, value in meta)
    ]
    out = sys.stdout
    if args.json:
        out.write(json_text([describe(s) for s in chosen], orjson.OPT_INDENT_2))
        out.write("\n")
    elif chosen:
        rows = (
            [
                escape(s.session_id),
                format_time(started(s)),
                format_duration(s.duration_s),
                str(s.logged),
                str(s.errors),
                escape(s.status),
            ]
            for s in chosen
        )
        headers = ["SESSION", "STARTED (UTC)", "DURATION", "ENTRIES", "ERRORS", "STATUS"]
        out.write("\n".join(table(headers, rows, numeric={2, 3, 4})) + "\n")
    out.flush()
    return 1 if bad_files else 0


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


def _meta_matches(metadata: dict[str, Any], key: str, wanted: str) -> bool:
    value: Any = metadata
    if key in metadata:
        value = metadata[key]
    else:
        # A dotted key reaches into nested metadata: --meta device.fw=1.4
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
    if isinstance(value, str):
        return value == wanted
    # Numbers, booleans and null compare by their JSON text: --meta attempt=3, --meta ok=true
    try:
        return orjson.dumps(value).decode() == wanted
    except TypeError:
        return False


def describe(session: SessionSummary) -> dict[str, Any]:
    """Return the JSON summary of a session (``sessions --json``)."""
    moment = started(session)
    return {
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
