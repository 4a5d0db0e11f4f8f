"""``tail PATH``: follow a growing log file through its rotations, printing entries as they come.

Poll-based, like ``tail -F``: when the path names another file than the one open (renamed away
and recreated), the open file is read to its end first and the new one is read from its start;
when the file shrinks (truncated in place), it is read again from the start.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

import orjson

from .._reader import entry_problem
from ._common import CliError, open_error, parse_level, warn
from ._render import Style, choose_colour, entry_lines, is_safe, json_text
from .show import add_colour_option

__all__ = ["Follower", "add_parser", "run"]

_READ = 1 << 20
# Seconds a rotated-away file is still read after it stopped growing.
RETIRED_GRACE = 5.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the command."""
    parser = commands.add_parser(
        "tail",
        help="follow a log file as it grows and rotates",
        description="Print the last entries of a log file, then follow it: new entries are "
        "printed as they are written, across rotations (rename and recreate) and truncation. "
        "Stop with Ctrl-C (exit status 0).",
    )
    parser.add_argument("path", metavar="PATH", help="the log file to follow")
    parser.add_argument(
        "--session",
        action="append",
        metavar="SESSION_ID",
        help="only entries of this session (repeat for several)",
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=_count,
        default=10,
        metavar="N",
        help="first print the last N matching entries already in the file (default 10)",
    )
    parser.add_argument("--level", metavar="LEVEL", help="hide log entries below LEVEL")
    parser.add_argument(
        "--json", action="store_true", help="print entries as the JSON lines the file holds"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how often to look for new data (default 0.25)",
    )
    add_colour_option(parser)
    parser.set_defaults(run=run)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


class Follower:
    """Read complete lines from a path, following renames and truncation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh: IO[bytes] | None = None
        self.identity: tuple[int, int] = (0, 0)
        self.lineno = 0
        self.partial = b""
        self.at_end = False

    def open(self) -> None:
        """Open the path from its start."""
        fh = open(self.path, "rb")  # noqa: SIM115 - stays open across polls
        st = os.fstat(fh.fileno())
        if self.fh is not None:
            self.fh.close()
        self.fh = fh
        self.identity = (st.st_dev, st.st_ino)
        self.lineno = 0
        self.partial = b""

    def read(self) -> list[tuple[int, bytes]]:
        """Return the complete lines in the next chunk of new data, numbered.

        At most ``_READ`` bytes are read per call, so memory stays bounded on a huge file;
        ``at_end`` tells whether the file had no more data.
        """
        assert self.fh is not None
        chunk = self.fh.read(_READ)
        self.at_end = len(chunk) < _READ
        if not chunk:
            return []
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            self.lineno += 1
            out.append((self.lineno, line))
        return out

    def read_all(self) -> list[tuple[int, bytes]]:
        """Return every complete line up to the end of the file (small amounts only)."""
        out = self.read()
        while not self.at_end:
            out += self.read()
        return out

    def change(self) -> str | None:
        """Return ``rotated`` or ``truncated`` when the path changed under the open file."""
        assert self.fh is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # renamed away, the new file is not there yet: keep reading the old
        if (st.st_dev, st.st_ino) != self.identity:
            return "rotated"
        if st.st_size < self.fh.tell():
            return "truncated"
        return None

    def leftover(self) -> tuple[int, bytes] | None:
        """Return the last line of a file that ended without a newline, if any."""
        if not self.partial.strip():
            return None
        self.lineno += 1
        line, self.partial = self.partial, b""
        return self.lineno, line

    def close(self) -> None:
        """Close the open file."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class _Printer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.sessions = set(args.session) if args.session else None
        self.min_level = parse_level(args.level) if args.level else 0
        self.json = args.json
        self.style = Style(choose_colour(args.color, sys.stdout))

    def parse(self, name: str, lineno: int, line: bytes, bad: Callable[[str], None]) -> Any:
        """Return the entry on the line, or None for a blank or bad line (reported)."""
        if not line.strip():
            return None
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad(f"{name}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
            return None
        problem = entry_problem(entry)
        if problem is not None:
            bad(f"{name}:{lineno}: {problem}")
            return None
        return entry

    def shown(self, entry: dict[str, Any]) -> bool:
        """Return whether the filters let the entry through."""
        if self.sessions is not None and entry["session_id"] not in self.sessions:
            return False
        levelno = entry.get("levelno")
        return not (
            entry["event"] == "log" and isinstance(levelno, int) and levelno < self.min_level
        )

    def render(self, entry: dict[str, Any], line: bytes) -> bytes:
        if self.json:
            # The line as the file holds it, unless it would carry controls or bidi overrides
            # to the terminal (raw CR between tokens, C1 in a string): then re-encoded safely.
            if is_safe(line.decode()):
                return line + b"\n"
            return json_text(entry).encode() + b"\n"
        lines = entry_lines(entry, self.style, with_session=True, with_metadata=True)
        return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


def run(args: argparse.Namespace) -> int:
    """Follow the file until interrupted."""
    if args.interval <= 0:
        raise CliError("--interval must be > 0", 2)
    if args.path.endswith(".gz"):
        raise CliError(f"{args.path}: cannot follow a compressed file; use `show` or `sessions`")
    printer = _Printer(args)
    follower = Follower(args.path)
    try:
        follower.open()
    except OSError as exc:
        raise open_error(args.path, exc) from None
    signal.signal(signal.SIGTERM, _interrupt)
    tail = _Tail(follower, printer, args.interval)
    try:
        tail.history(args.lines)
        tail.follow()
    except KeyboardInterrupt:
        pass
    finally:
        tail.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _Tail:
    """The current file, and rotated-away files still read for a while."""

    def __init__(self, follower: Follower, printer: _Printer, interval: float) -> None:
        self.follower = follower
        self.printer = printer
        self.interval = interval
        self.out = sys.stdout.buffer
        # (file, when it last grew): a writer that has not noticed the rename yet still
        # appends to the old file, so it is read until it stays idle for RETIRED_GRACE.
        self.retired: list[tuple[Follower, float]] = []

    def history(self, count: int) -> None:
        """Print the last ``count`` matching entries; refuse a file that holds no entry."""
        held: list[str] = []
        valid = 0
        last: deque[bytes] = deque(maxlen=count)
        while True:
            for lineno, line in self.follower.read():
                entry = self.printer.parse(self.follower.path, lineno, line, held.append)
                if entry is None:
                    continue
                valid += 1
                if count and self.printer.shown(entry):
                    last.append(self.printer.render(entry, line))
            if self.follower.at_end:
                break
        path = self.follower.path
        if held and valid == 0:
            first = held[0].removeprefix(path + ":")
            raise CliError(f"{path}: not a session log (no schema-v1 entry; line {first})")
        for message in held[:20]:
            warn(message)
        self.out.write(b"".join(last))
        self.out.flush()

    def follow(self) -> None:
        """Print new entries until interrupted."""
        while True:
            now = time.monotonic()
            self._read_retired(now)
            lines = self.follower.read()
            if lines or not self.follower.at_end:
                self._emit(self.follower, lines)
                continue
            change = self.follower.change()
            if change is None:
                time.sleep(self.interval)
            elif change == "rotated":
                fresh = Follower(self.follower.path)
                try:
                    fresh.open()
                except FileNotFoundError:
                    time.sleep(self.interval)  # gone again between stat and open
                    continue
                self.retired.append((self.follower, now))
                self.follower = fresh
            else:
                self._finish(self.follower)
                warn(f"{self.follower.path}: truncated; reading it again from the start")
                self.follower.open()

    def _read_retired(self, now: float) -> None:
        keep = []
        for old, grew in self.retired:
            lines = old.read_all()
            if lines:
                self._emit(old, lines)
                grew = now
            if now - grew < RETIRED_GRACE:
                keep.append((old, grew))
            else:
                self._finish(old)
                old.close()
        self.retired = keep

    def _finish(self, follower: Follower) -> None:
        rest = follower.leftover()
        if rest is not None:
            self._emit(follower, [rest])

    def _emit(self, follower: Follower, lines: list[tuple[int, bytes]]) -> None:
        name = follower.path if follower is self.follower else f"{follower.path} (rotated)"
        chunks = []
        for lineno, line in lines:
            entry = self.printer.parse(name, lineno, line, warn)
            if entry is not None and self.printer.shown(entry):
                chunks.append(self.printer.render(entry, line))
        if chunks:
            self.out.write(b"".join(chunks))
            self.out.flush()

    def close(self) -> None:
        """Print what the files still hold, and close them."""
        try:
            for old, _ in self.retired:
                self._emit(old, old.read_all())
                old.close()
            self._emit(self.follower, self.follower.read_all())
            self.out.flush()
        finally:
            self.follower.close()
