"""``show SESSION_ID PATH...``: one session's entries, readable, metadata on top.

The files are streamed: only the asked-for id's entries are kept (and a small summary per
child session; with ``--tree`` the descendants' entries, which are printed too), so memory
follows what is shown, not the size of the files.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from .._reader import (
    ReaderWarning,
    Session,
    SessionBuilder,
    SessionSummary,
    SummaryBuilder,
    parent_of,
    parse_timestamp,
    read_entries,
)
from . import _from_store
from ._common import CliError, parse_level, reader_warnings
from ._input import read_logs
from ._render import (
    Style,
    choose_colour,
    entry_lines,
    escape,
    format_duration,
    format_levels,
    format_time,
    format_value,
    json_text,
    plural,
)

__all__ = ["add_parser", "run"]

# Descendants shown by ``--tree`` are indented two spaces a level, up to this depth.
MAX_INDENT = 16


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "show",
        help="print one session's entries",
        description="Print a session: its metadata, summary, parent and children, then every "
        "entry in seq order, coloured by level on a terminal, with custom fields indented.",
    )
    parser.add_argument("session_id", metavar="SESSION_ID")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="log files (or --store URL)")
    parser.add_argument(
        "--level",
        metavar="LEVEL",
        help="hide log entries below LEVEL (name or number); start and close are always shown",
    )
    parser.add_argument(
        "--tree",
        action="store_true",
        help="also print every session below this one (children, their children...), indented",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the entries as JSON Lines, as in the log"
    )
    add_colour_option(parser)
    _from_store.add_options(parser, where=False)
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
    _from_store.check_source(args)
    if args.store:
        return _render_runs(args, _from_store.show_runs(args), min_level)
    wanted: str = args.session_id
    family = _Family(wanted, args.tree)
    near = _NearIds(wanted)

    def take(entry: dict[str, Any]) -> None:
        if not family.take(entry) and entry["event"] == "session_start":
            # One candidate per session, not per entry: the hint costs next to nothing.
            near.add(entry["session_id"])

    bad_files = read_logs(args.paths, take)
    if not family.found:
        close = near.matches()
        hint = f"; did you mean {', '.join(_quoted(c) for c in close)}?" if close else ""
        where = args.paths[0] if len(args.paths) == 1 else f"{len(args.paths)} files"
        raise CliError(f"no session {_quoted(wanted)} in {where}{hint}")
    if not family.complete():
        family.read_again(args.paths)
    with reader_warnings():
        runs = family.runs()
    return _render_runs(args, runs, min_level, bad_files)


def _render_runs(
    args: argparse.Namespace,
    runs: Sequence[tuple[Session, Sequence[Session | SessionSummary]]],
    min_level: int,
    bad_files: int = 0,
) -> int:
    """Print each run of the session (from files or a store) with its children."""
    out = sys.stdout
    style = Style(choose_colour(args.color, out))
    for number, (session, children) in enumerate(runs, 1):
        below = _below(session) if args.tree else []
        if args.json:
            for shown in (session, *(d for _, d in below)):
                out.write("".join(json_text(e) + "\n" for e in _ordered(shown, min_level)))
            continue
        if number > 1:
            out.write("\n")
        header = _header(session, style, children, number, len(runs))
        _print(out, session, header, style, min_level, "")
        for depth, descendant in below:
            out.write("\n")
            header = _header(descendant, style, descendant.children)
            _print(out, descendant, header, style, min_level, "  " * min(depth, MAX_INDENT))
    out.flush()
    return 1 if bad_files else 0


def _print(
    out: TextIO, session: Session, header: list[str], style: Style, min_level: int, indent: str
) -> None:
    """Write a header and the session's entries, every line indented by ``indent``."""

    def write(lines: list[str]) -> None:
        # A header line may hold line breaks of its own (a multi-line metadata value).
        out.write("".join(f"{indent}{line}\n" for line in "\n".join(lines).split("\n")))

    write(header)
    for entry in _ordered(session, min_level):
        write(entry_lines(entry, style))


class _Family:
    """The asked-for session and the sessions below it, gathered while the files stream by.

    Without ``--tree``: its direct children, summed up (no entries kept). With ``--tree``:
    every descendant, in full. A child is known by its start entry, which names its parent
    (for ``--tree``, the start entries' parent ids are kept, not their entries): entries of
    a child read before its start (files given newest first) are not kept, so when a child
    looks incomplete (no close, or seqs missing) the files are read a second time.
    """

    def __init__(self, wanted: str, tree: bool) -> None:
        self.wanted = wanted
        self.tree = tree
        self.found = False
        self.members: set[str] = set()
        self.links: dict[str, set[str]] = {}
        self.own = SessionBuilder()
        self.full = SessionBuilder() if tree else None
        self.sums = None if tree else SummaryBuilder()

    def _kin(self, entry: dict[str, Any]) -> None:
        if self.full is not None:
            self.full.add(entry)
        if self.sums is not None:
            self.sums.add(entry)

    def take(self, entry: dict[str, Any]) -> bool:
        """Keep what the family needs of an entry; return whether it is the asked-for id's."""
        session_id: str = entry["session_id"]
        if session_id == self.wanted:
            self.found = True
            if self.full is None:
                self.own.add(entry)
            self._kin(entry)
            return True
        if entry["event"] == "session_start":
            parent = parent_of(entry)
            if parent is not None:
                if self.tree:
                    self.links.setdefault(parent, set()).add(session_id)
                if parent == self.wanted or (self.tree and parent in self.members):
                    self.members.add(session_id)
        if session_id in self.members:
            self._kin(entry)
        return False

    def _descendants(self) -> set[str]:
        if not self.tree:
            return self.members
        found: set[str] = set()
        todo = [self.wanted]
        while todo:
            for child in self.links.get(todo.pop(), ()):
                if child not in found and child != self.wanted:
                    found.add(child)
                    todo.append(child)
        return found

    def complete(self) -> bool:
        """Return whether every child was read from its start to its close, seqs all there."""
        if self._descendants() != self.members:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReaderWarning)  # reported by runs()
            if self.full is not None:
                return all(
                    s.close is not None and not s.missing_seqs
                    for s in self.full.finish()
                    if s.session_id != self.wanted
                )
            assert self.sums is not None
            return all(
                s.status != "open" and not s.missing
                for s in self.sums.finish()
                if s.session_id != self.wanted
            )

    def read_again(self, paths: list[str]) -> None:
        """Read the family's entries again, now that every member is known."""
        self.members = members = self._descendants()
        self.full = SessionBuilder() if self.tree else None
        self.sums = None if self.tree else SummaryBuilder()
        for path in paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ReaderWarning)  # reported the first time
                    for entry in read_entries(path):
                        session_id = entry["session_id"]
                        if session_id == self.wanted or session_id in members:
                            self._kin(entry)
            except OSError as exc:
                raise CliError(f"{path}: cannot read again: {exc.strerror or exc}") from exc

    def runs(self) -> list[tuple[Session, Sequence[Session | SessionSummary]]]:
        """Return each run of the asked-for id with its children."""
        if self.full is not None:
            return [(s, s.children) for s in self.full.finish() if s.session_id == self.wanted]
        runs = self.own.finish()
        assert self.sums is not None
        mine = [s for s in self.sums.finish() if s.session_id == self.wanted]
        if len(mine) == len(runs):
            return [(run, summed.children) for run, summed in zip(runs, mine, strict=True)]
        # The two builders group a reused id alike; should they not, the last run gets all.
        every = [child for summed in mine for child in summed.children]
        return [(run, every if n == len(runs) - 1 else []) for n, run in enumerate(runs)]


def _below(session: Session) -> list[tuple[int, Session]]:
    """Return the sessions under ``session``, depth first in start order, with their depth."""
    out: list[tuple[int, Session]] = []
    seen = {id(session)}
    stack = [(1, child) for child in reversed(session.children)]
    while stack:
        depth, node = stack.pop()
        if id(node) in seen:  # cycles are cut by the reader; a guard costs nothing
            continue
        seen.add(id(node))
        out.append((depth, node))
        stack.extend((depth + 1, child) for child in reversed(node.children))
    return out


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


def _header(
    session: Session,
    style: Style,
    children: Sequence[Session | SessionSummary],
    number: int = 1,
    runs: int = 1,
) -> list[str]:
    parts = [f"session {escape(session.session_id)}", escape(session.status)]
    moment = _started(session)
    parts.append(f"started {format_time(moment)} UTC")
    if session.duration_s is not None:
        parts.append(f"duration {format_duration(session.duration_s)}")
    parts.append(plural(_logged(session), "entry", "entries"))
    parts.append(plural(session.errors, "error", "errors"))
    if any(session.levels.values()):
        parts.append(format_levels(session.levels, width=1_000))
    if session.discarded:
        parts.append(f"{session.discarded} discarded")
    if runs > 1:
        parts.append(f"run {number} of {runs} with this id")
    lines = [style.bold(" · ".join(parts))]
    if session.parent_session_id is not None:
        lines.append(f"parent: {escape(session.parent_session_id)}")
    missing = session.missing_seqs
    if missing:
        lines.append(f"missing: {len(missing)} entries (seqs {_ranges(missing)})")
    if session.duplicates:
        lines.append(f"duplicates skipped: {session.duplicates}")
    for title, fields in (("metadata", session.metadata), ("summary", session.summary)):
        if fields:
            lines.append(f"{title}:")
            for key, value in fields.items():
                text = format_value(value).replace("\n", "\n    ")
                lines.append(f"  {style.dim(escape(str(key)) + ':')} {text}")
    if children:
        lines.append(f"children ({len(children)}):")
        lines += [f"  {_child_line(child)}" for child in children]
    return lines


def _logged(session: Session | SessionSummary) -> int:
    if isinstance(session, SessionSummary):
        return session.logged
    return sum(1 for e in session.entries if e.get("event") == "log")


def _child_line(child: Session | SessionSummary) -> str:
    """Return a child's line in its parent's header: id, status, duration, counts."""
    parts = [escape(child.session_id), escape(child.status)]
    if child.duration_s is not None:
        parts.append(format_duration(child.duration_s))
    parts.append(plural(_logged(child), "entry", "entries"))
    parts.append(plural(child.errors, "error", "errors"))
    if any(child.levels.values()):
        parts.append(format_levels(child.levels))
    if child.discarded:
        parts.append(f"{child.discarded} discarded")
    return " · ".join(parts)


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
