"""Read log files for the commands: sessions rebuilt, bad lines and bad files reported plainly."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

# The reader's session builder and entry check, shared so that the commands group and reject
# exactly as read_sessions() does.
from .._reader import ReaderWarning, Session, _Builder, read_entries
from .._reader import _problem as check_entry
from ._common import CliError, error, open_error, warn

__all__ = ["Loaded", "check_entry", "load_sessions"]

# Corrupt lines shown per file; the rest are counted in one line.
WARN_LIMIT = 20


class Loaded:
    """Sessions read from files, and how many files were not session logs."""

    def __init__(self, sessions: list[Session], bad_files: int) -> None:
        self.sessions = sessions
        self.bad_files = bad_files


class _FileWarnings:
    """Route a file's ReaderWarnings to stderr, held back until the file proves to be a log.

    A JSON file that is not a session log (``package.json``) would otherwise print one warning
    per line; it gets one error line instead.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self.held: list[str] = []
        self.proven = False

    def add(self, message: str) -> None:
        self.count += 1
        if self.count > WARN_LIMIT:
            return
        if self.proven:
            warn(message)
        else:
            self.held.append(message)

    def prove(self) -> None:
        self.proven = True
        for message in self.held:
            warn(message)
        self.held.clear()

    def finish(self) -> str | None:
        """Return an error line if the file held no entry but bad lines."""
        if not self.proven and self.count:
            first = self.held[0].removeprefix(self.path + ":") if self.held else "?"
            return f"{self.path}: not a session log (no schema-v1 entry; line {first})"
        if self.count > WARN_LIMIT:
            warn(f"{self.path}: {self.count - WARN_LIMIT} more corrupt lines not shown")
        return None


@contextmanager
def _routed(state: list[_FileWarnings]) -> Iterator[None]:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, ReaderWarning) and state:
            state[-1].add(str(message))
        else:
            warn(str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("always", ReaderWarning)
        warnings.showwarning = show
        yield


def load_sessions(paths: Sequence[str]) -> Loaded:
    """Read every file and group entries into sessions, as :func:`read_sessions` does.

    Raises:
        CliError: A file is missing, a directory, or cannot be read (checked before output).
    """
    for path in paths:
        _check_readable(path)
    builder = _Builder()
    bad = 0
    state: list[_FileWarnings] = []
    with _routed(state):
        for path in paths:
            current = _FileWarnings(path)
            state.append(current)
            try:
                for entry in read_entries(path):
                    if not current.proven:
                        current.prove()
                    builder.add(entry)
            except OSError as exc:
                raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from exc
            problem = current.finish()
            if problem is not None:
                error(problem)
                bad += 1
    return Loaded(builder.finish(), bad)


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise open_error(path, exc) from None
