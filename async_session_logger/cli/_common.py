"""What every command shares: user errors, stderr messages, levels, times and key=value."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Final

from .._errors import InvalidLevelError
from .._validate import resolve_level
from ._render import escape

__all__ = [
    "PROG",
    "CliError",
    "error",
    "note",
    "parse_level",
    "parse_meta",
    "parse_when",
    "reader_warnings",
    "say",
    "warn",
]

PROG: Final = "async-session-logger"

# Exit statuses (docs/cli.md): 0 done, 1 the command failed, 2 bad usage.
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class CliError(Exception):
    """A problem the user can fix: printed as one line on stderr, never as a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def open_error(path: str, exc: OSError) -> CliError:
    """Return the one-line error for a log file that could not be opened."""
    if isinstance(exc, FileNotFoundError):
        return CliError(f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        return CliError(f"{path}: is a directory, not a log file")
    if isinstance(exc, PermissionError):
        return CliError(f"{path}: permission denied")
    return CliError(f"{path}: cannot open: {exc.strerror or exc}")


def warn(message: str) -> None:
    """Print a warning line on stderr."""
    say(f"warning: {message}")


def error(message: str) -> None:
    """Print an error line on stderr for a problem that does not stop the command at once."""
    say(f"error: {message}")


def note(message: str) -> None:
    """Print an informational line on stderr (stdout carries only the command's output)."""
    say(message)


def say(message: str) -> None:
    """Print one line on stderr, escaped: messages quote ids, topics and paths from logs."""
    print(f"{PROG}: {escape(message)}", file=sys.stderr, flush=True)


@contextmanager
def reader_warnings() -> Iterator[None]:
    """Print the warnings of the block (a parent cycle met by ``finish()``) as warning lines.

    Python's own format would show the library's source line and the ids unescaped; a
    repeated message is printed once.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(w.message) for w in caught):
        warn(message)


def parse_level(text: str) -> int:
    """Return the level for a name (``warning``) or a number (``30``)."""
    try:
        return resolve_level(int(text) if text.isdigit() else text)
    except InvalidLevelError as exc:
        raise CliError(f"--level: {exc}", EXIT_USAGE) from exc


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, option: str, now: datetime | None = None) -> datetime:
    """Return an aware UTC time from ISO 8601 (naive = UTC) or an age such as ``2h``."""
    age = _AGE.fullmatch(text.strip())
    if age is not None:
        seconds = float(age.group(1)) * _UNITS[age.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{option}: cannot read {text!r}: give an ISO 8601 time (2026-11-24, "
            "2026-11-24T06:00:00Z) or an age (90s, 15m, 2h, 7d)",
            EXIT_USAGE,
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_meta(items: list[str]) -> list[tuple[str, str]]:
    """Split ``--meta key=value`` options."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--meta: expected KEY=VALUE, got {item!r}", EXIT_USAGE)
        pairs.append((key, value))
    return pairs
