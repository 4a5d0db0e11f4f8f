"""Stream log files to the commands: entries one at a time, bad lines and files reported plainly."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from .._reader import ReaderWarning, read_entries
from ._common import CliError, error, open_error, warn

__all__ = ["read_logs"]

# Corrupt lines shown per file; the rest are counted in one line.
WARN_LIMIT = 20


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


def read_logs(paths: Sequence[str], take: Callable[[dict[str, Any]], None]) -> int:
    """Pass every valid entry of the files to ``take``, in file order, holding none of them.

    Entries are read as :func:`read_entries` reads them (the same checks), one line at a
    time: what the command keeps of them is all the memory it needs.

    Returns:
        How many files were no session log (each reported on stderr).

    Raises:
        CliError: A file is missing, a directory, or cannot be read (checked before output).
    """
    for path in paths:
        _check_readable(path)
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
                    take(entry)
            except OSError as exc:
                raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from exc
            problem = current.finish()
            if problem is not None:
                error(problem)
                bad += 1
    return bad


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise open_error(path, exc) from None
