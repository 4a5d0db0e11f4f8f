"""``show SESSION_ID PATH...``: one session's entries, readable, metadata on top."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any

import orjson

from .._reader import Session
from ._common import CliError, parse_level
from ._input import load_sessions
from ._render import (
    Style,
    choose_colour,
    clean,
    entry_lines,
    format_duration,
    format_time,
    format_value,
    plural,
)
from .sessions import started

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "show",
        help="print one session's entries",
        description="Print a session: its metadata, then every entry in seq order, coloured "
        "by level on a terminal, with custom fields indented.",
    )
    parser.add_argument("session_id", metavar="SESSION_ID")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="log files")
    parser.add_argument(
        "--level",
        metavar="LEVEL",
        help="hide log entries below LEVEL (name or number); start and close are always shown",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the entries as JSON Lines, as in the log"
    )
    add_colour_option(parser)
    parser.set_defaults(run=run)


def add_colour_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--color`` (auto: only on a terminal, and never when NO_COLOR is set)."""
    parser.add_argument(
        "--color",
        "--colour",
        dest="color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour by level (default auto: on a terminal, unless NO_COLOR is set)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the session."""
    min_level = parse_level(args.level) if args.level else 0
    loaded = load_sessions(args.paths)
    runs = [s for s in loaded.sessions if s.session_id == args.session_id]
    if not runs:
        ids = sorted({s.session_id for s in loaded.sessions})
        close = difflib.get_close_matches(args.session_id, ids, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        where = args.paths[0] if len(args.paths) == 1 else f"{len(args.paths)} files"
        raise CliError(f"no session {clean(args.session_id)!r} in {where}{hint}")
    out = sys.stdout
    style = Style(choose_colour(args.color, out))
    for number, session in enumerate(runs, 1):
        entries = _ordered(session, min_level)
        if args.json:
            out.write(b"".join(orjson.dumps(e) + b"\n" for e in entries).decode())
            continue
        if number > 1:
            out.write("\n")
        for line in _header(session, number, len(runs), style):
            out.write(line + "\n")
        for entry in entries:
            out.write("\n".join(entry_lines(entry, style)) + "\n")
    out.flush()
    return 1 if loaded.bad_files else 0


def _ordered(session: Session, min_level: int) -> list[dict[str, Any]]:
    entries = [e for e in session.entries if e.get("event") != "log" or _levelno(e) >= min_level]
    if session.start is not None:
        entries.insert(0, session.start)
    if session.close is not None:
        entries.append(session.close)
    return entries


def _levelno(entry: dict[str, Any]) -> int:
    value = entry.get("levelno")
    return value if isinstance(value, int) else 0


def _header(session: Session, number: int, runs: int, style: Style) -> list[str]:
    parts = [f"session {clean(session.session_id)}", session.status]
    moment = started(session)
    parts.append(f"started {format_time(moment)} UTC")
    if session.duration_s is not None:
        parts.append(f"duration {format_duration(session.duration_s)}")
    logged = sum(1 for e in session.entries if e.get("event") == "log")
    parts.append(plural(logged, "entry", "entries"))
    parts.append(plural(session.errors, "error", "errors"))
    if runs > 1:
        parts.append(f"run {number} of {runs} with this id")
    lines = [style.bold(" · ".join(parts))]
    missing = session.missing_seqs
    if missing:
        lines.append(f"missing: {len(missing)} entries (seqs {_ranges(missing)})")
    if session.duplicates:
        lines.append(f"duplicates skipped: {session.duplicates}")
    if session.metadata:
        lines.append("metadata:")
        for key, value in session.metadata.items():
            text = format_value(value).replace("\n", "\n    ")
            lines.append(f"  {style.dim(clean(str(key)) + ':')} {text}")
    return lines


def _ranges(seqs: list[int], limit: int = 10) -> str:
    spans: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    shown = ", ".join(spans[:limit])
    return shown + (f", ... ({len(spans) - limit} more ranges)" if len(spans) > limit else "")
