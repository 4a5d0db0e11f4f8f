"""``show SESSION_ID PATH...``: one session's entries, readable, metadata on top.

The files are streamed: only the asked-for id's entries are kept, so memory follows the
session shown, not the size of the files.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from datetime import datetime
from typing import Any

from .._reader import Session, SessionBuilder, parse_timestamp
from ._common import CliError, parse_level
from ._input import read_logs
from ._render import (
    Style,
    choose_colour,
    entry_lines,
    escape,
    format_duration,
    format_time,
    format_value,
    json_text,
    plural,
)

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
    wanted: str = args.session_id
    builder = SessionBuilder()
    near = _NearIds(wanted)

    def take(entry: dict[str, Any]) -> None:
        session_id = entry["session_id"]
        if session_id == wanted:
            builder.add(entry)
        elif entry["event"] == "session_start":
            # One candidate per session, not per entry: the hint costs next to nothing.
            near.add(session_id)

    bad_files = read_logs(args.paths, take)
    runs = builder.finish()
    if not runs:
        close = near.matches()
        hint = f"; did you mean {', '.join(_quoted(c) for c in close)}?" if close else ""
        where = args.paths[0] if len(args.paths) == 1 else f"{len(args.paths)} files"
        raise CliError(f"no session {_quoted(wanted)} in {where}{hint}")
    out = sys.stdout
    style = Style(choose_colour(args.color, out))
    for number, session in enumerate(runs, 1):
        entries = _ordered(session, min_level)
        if args.json:
            out.write("".join(json_text(e) + "\n" for e in entries))
            continue
        if number > 1:
            out.write("\n")
        for line in _header(session, number, len(runs), style):
            out.write(line + "\n")
        for entry in entries:
            out.write("\n".join(entry_lines(entry, style)) + "\n")
    out.flush()
    return 1 if bad_files else 0


def _quoted(session_id: str) -> str:
    # Not repr(): it would double the backslashes escape() shows.
    return f"'{escape(session_id)}'"


class _NearIds:
    """The ids most like a mistyped one, picked as ``difflib.get_close_matches`` picks them.

    Candidates are scored as they are met and only the best few are kept, so a file with a
    million sessions costs no more memory than one with three.
    """

    def __init__(self, wanted: str, count: int = 3, cutoff: float = 0.6) -> None:
        self._matcher = difflib.SequenceMatcher()
        self._matcher.set_seq2(wanted)
        self._count = count
        self._cutoff = cutoff
        self._best: list[tuple[float, str]] = []

    def add(self, candidate: str) -> None:
        """Score one id (an id met again is ignored)."""
        best = self._best
        if any(kept == candidate for _, kept in best):
            return
        floor = self._cutoff if len(best) < self._count else max(self._cutoff, best[-1][0])
        matcher = self._matcher
        matcher.set_seq1(candidate)
        # The cheap upper bounds first, as get_close_matches does.
        if matcher.real_quick_ratio() < floor or matcher.quick_ratio() < floor:
            return
        score = matcher.ratio()
        if score >= floor:
            best.append((score, candidate))
            best.sort(reverse=True)
            del best[self._count :]

    def matches(self) -> list[str]:
        """Return the best ids, best first."""
        return [candidate for _, candidate in self._best]


def _started(session: Session) -> datetime | None:
    """Return the start time, or the first timestamp read when the start entry is missing."""
    if session.started_at is not None:
        return session.started_at
    for entry in session.entries:
        moment = parse_timestamp(entry.get("timestamp"))
        if moment is not None:
            return moment
    return session.closed_at


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
    parts = [f"session {escape(session.session_id)}", escape(session.status)]
    moment = _started(session)
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
            lines.append(f"  {style.dim(escape(str(key)) + ':')} {text}")
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
