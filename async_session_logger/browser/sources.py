"""What the session browser reads: log files and directories of them, or a session store.

Both kinds answer the same three questions — a page of sessions for a query, one session in
full, and "what changed since version N" for the live events — read-only. Everything here is
blocking; the server calls it in a worker thread, one call at a time (``Source.lock``).
"""

from __future__ import annotations

import glob
import itertools
import os
import threading
import warnings
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator
from typing import Any, Final

import orjson

from .._reader import (
    ReaderWarning,
    Session,
    SessionBuilder,
    entry_problem,
    read_entries,
)
from ..cli.tail import Follower
from ..store.query import Filters, load_runs, load_summaries
from ..store.sqlite import SqliteStore
from .index import Query, Row, SessionIndex

__all__ = ["FileSource", "Source", "SourceError", "StoreSource", "session_json"]

# Directories: the files a collector or a FileSink writes (rotated and gzip'd ones too).
_PATTERNS: Final = ("*.jsonl", "*.jsonl.*", "*.log", "*.json")
_MAX_ENTRIES: Final = 20_000  # entries of one session page; the rest are counted, not sent
# New entries kept for the live ``entry`` events between two polls; beyond it, one "reload".
MAX_FRESH: Final = 1_000


class SourceError(Exception):
    """A source cannot be read: a missing file, an unreadable store."""


def _gaps(entries: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Return the holes in the seqs of a session's entries: after which seq, how many."""
    seqs = sorted({e["seq"] for e in entries})
    return [
        {"after_seq": low, "missing": high - low - 1}
        for low, high in itertools.pairwise(seqs)
        if high - low > 1
    ]


def session_json(
    session: Session,
    run: int,
    runs: list[int],
    row: dict[str, Any],
    parent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return one session run in full, as ``/api/sessions/{id}`` gives it."""
    every = [e for e in (session.start, *session.entries, session.close) if e is not None]
    every.sort(key=lambda e: e["seq"])
    shown = every[:_MAX_ENTRIES]

    def tree(node: Session, depth: int) -> dict[str, Any]:
        return {
            "session_id": node.session_id,
            "status": node.status,
            "started": node.start.get("timestamp") if node.start else None,
            "children": [tree(c, depth + 1) for c in node.children] if depth < 20 else [],
        }

    return {
        "session": row,
        "run": run,
        "runs": runs,
        "entries": shown,
        "more_entries": len(every) - len(shown),
        "gaps": _gaps(every),
        "children": [tree(child, 1) for child in session.children],
        "parent": parent,
    }


class Source(ABC):
    """Sessions to browse: a page for a query, one session, and what changed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.corrupt_lines = 0
        # Entries read since the last take_entries() (session id, run, entry), for the live
        # ``entry`` events; None once more than MAX_FRESH came in one poll (the clients reload).
        self.fresh: list[tuple[str, int, dict[str, Any]]] | None = []
        self.collect = False

    def take_entries(self) -> list[tuple[str, int, dict[str, Any]]] | None:
        """Return the entries read since the last call (None: too many, reload instead)."""
        fresh, self.fresh = self.fresh, []
        return fresh

    @abstractmethod
    def describe(self) -> list[str]:
        """Return what is served (paths, or the store URL without a password)."""

    @abstractmethod
    def refresh(self) -> None:
        """Read what was added since the last call (new lines, new files, new rows)."""

    @property
    @abstractmethod
    def version(self) -> int:
        """Return a number that grows whenever a session changes."""

    @abstractmethod
    def changed(self, since: int) -> list[dict[str, Any]]:
        """Return the sessions changed after version ``since`` (empty: none)."""

    @abstractmethod
    def page(self, query: Query) -> tuple[int, list[dict[str, Any]]]:
        """Return how many sessions match, and the page asked for."""

    @abstractmethod
    def session(self, session_id: str, run: int | None) -> dict[str, Any] | None:
        """Return one session run in full (the latest when ``run`` is None), None if unknown."""

    def close(self) -> None:  # noqa: B027 - a source may hold nothing to release
        """Release files and connections."""


class FileSource(Source):
    """Log files and directories, indexed in memory and followed as they grow and rotate."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths
        self.index = SessionIndex()
        self.followers: dict[str, Follower] = {}
        self.retired: list[Follower] = []
        self.read_once: set[str] = set()
        # Where each id's lines are: pairs (file number, byte offset) in one array per id; the
        # files by number as (path when read, device, inode). A session page reads those lines
        # instead of every file; whatever does not check out sends it back to a full scan.
        self.offsets: dict[str, array[int]] = {}
        self.files: list[tuple[str, int, int]] = []
        self._file_numbers: dict[tuple[int, int], int] = {}
        for path in paths:
            if not os.path.exists(path):
                raise SourceError(f"{path}: no such file or directory")
            if not os.path.isdir(path) and not os.access(path, os.R_OK):
                raise SourceError(f"{path}: cannot read it")
        self.refresh()
        self.collect = True  # what was there at start is no live news

    def describe(self) -> list[str]:
        return list(self.paths)

    def _files(self) -> Iterator[str]:
        for path in self.paths:
            if os.path.isdir(path):
                found: set[str] = set()
                for pattern in _PATTERNS:
                    found.update(glob.glob(os.path.join(glob.escape(path), pattern)))
                yield from sorted(f for f in found if os.path.isfile(f) and not os.path.islink(f))
            else:
                yield path

    def refresh(self) -> None:
        for path in self._files():
            if path in self.followers or path in self.read_once:
                continue
            if path.endswith(".gz"):
                # Compressed files are rotated ones: read once, never grow.
                self.read_once.add(path)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ReaderWarning)
                    for entry in read_entries(path):
                        self.index.add(entry)
                self.corrupt_lines += len(caught)
                continue
            follower = Follower(path)
            try:
                follower.open()
            except OSError:
                continue  # gone between the listing and the open: the next look sees
            self.followers[path] = follower
        for old in self.retired:
            self._read(old, every=True)
            old.close()
        self.retired = []
        for path, follower in list(self.followers.items()):
            self._read(follower, every=True)
            change = follower.change()
            if change == "rotated":
                fresh = Follower(path)
                try:
                    fresh.open()
                except OSError:
                    continue
                # The old file may still get the writer's last lines: read it once more.
                self.retired.append(follower)
                self.followers[path] = fresh
                self._read(fresh, every=True)
            elif change == "truncated":
                follower.open()  # read again from the start: seqs already seen are skipped
                self._read(follower, every=True)

    def _read(self, follower: Follower, *, every: bool) -> None:
        """Take the follower's new complete lines, noting where each one starts."""
        assert follower.fh is not None
        key = follower.identity
        number = self._file_numbers.get(key)
        if number is None:
            number = self._file_numbers[key] = len(self.files)
            self.files.append((follower.path, *key))
        while True:
            position = follower.fh.tell() - len(follower.partial)
            lines = follower.read()
            for _, line in lines:
                self._take_line(line, number, position)
                position += len(line) + 1
            if not every or follower.at_end:
                return

    def _take_line(self, line: bytes, number: int, position: int) -> None:
        if not line.strip():
            return
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.corrupt_lines += 1
            return
        if entry_problem(entry) is not None:
            self.corrupt_lines += 1
            return
        row = self.index.add(entry)
        if row is not None and self.collect and self.fresh is not None:
            if len(self.fresh) < MAX_FRESH:
                self.fresh.append((row.session_id, row.run, entry))
            else:
                self.fresh = None
        found = self.offsets.get(entry["session_id"])
        if found is None:
            found = self.offsets[entry["session_id"]] = array("q")
        found.extend((number, position))

    @property
    def version(self) -> int:
        return self.index.version

    def changed(self, since: int) -> list[dict[str, Any]]:
        return [row.describe() for row in self.index.changed_since(since)]

    def page(self, query: Query) -> tuple[int, list[dict[str, Any]]]:
        total, rows = self.index.select(query)
        return total, [row.describe() for row in rows]

    def session(self, session_id: str, run: int | None) -> dict[str, Any] | None:
        runs = self.index.runs(session_id)
        if not runs:
            return None
        row: Row = runs[-1] if run is None else next((r for r in runs if r.run == run), runs[0])
        if run is not None and row.run != run:
            return None
        children = [r.session_id for r in self.index.rows if r.parent == session_id]
        wanted = {session_id, *children}
        builder = SessionBuilder()
        for entry in self._entries_of(wanted):
            builder.add(entry)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReaderWarning)
            sessions = [s for s in builder.finish() if s.session_id == session_id]
        if not sessions:
            return None
        chosen = sessions[min(row.run, len(sessions)) - 1]
        parent = None
        if row.parent is not None:
            parent_runs = self.index.runs(row.parent)
            status = parent_runs[-1].status if parent_runs else None
            parent = {"session_id": row.parent, "status": status}
        return session_json(chosen, row.run, [r.run for r in runs], row.describe(), parent)

    def _entries_of(self, session_ids: set[str]) -> Iterator[dict[str, Any]]:
        """Yield the entries of these ids: from the lines noted for them, else from a scan."""
        found = self._noted(session_ids)
        if found is None:
            yield from self._scan(session_ids)
            return
        yield from found
        # Compressed files are read whole at start: their lines have no offsets.
        for path in sorted(self.read_once):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ReaderWarning)
                for entry in read_entries(path):
                    if entry["session_id"] in session_ids:
                        yield entry

    def _noted(self, session_ids: set[str]) -> list[dict[str, Any]] | None:
        """Read the lines noted for these ids; None when any file or line does not check out
        (a file renamed out of sight, replaced, or truncated and rewritten)."""
        wanted: dict[int, list[int]] = {}
        for session_id in session_ids:
            pairs = self.offsets.get(session_id, array("q"))
            for at in range(0, len(pairs), 2):
                wanted.setdefault(pairs[at], []).append(pairs[at + 1])
        entries: list[dict[str, Any]] = []
        for number, positions in sorted(wanted.items()):
            path, device, inode = self.files[number]
            located = _locate(path, device, inode)
            if located is None:
                return None
            try:
                with open(located, "rb") as fh:
                    if (os.fstat(fh.fileno()).st_dev, os.fstat(fh.fileno()).st_ino) != (
                        device,
                        inode,
                    ):
                        return None
                    for position in sorted(positions):
                        fh.seek(position)
                        try:
                            entry = orjson.loads(fh.readline())
                        except orjson.JSONDecodeError:
                            return None
                        if (
                            entry_problem(entry) is not None
                            or entry["session_id"] not in session_ids
                        ):
                            return None
                        entries.append(entry)
            except OSError:
                return None
        return entries

    def _scan(self, session_ids: set[str]) -> Iterator[dict[str, Any]]:
        """Yield the entries of these ids from every file, oldest file first."""
        needles = [orjson.dumps(i) for i in session_ids]
        for path in self._all_files():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ReaderWarning)
                if path.endswith(".gz"):
                    for entry in read_entries(path):
                        if entry["session_id"] in session_ids:
                            yield entry
                    continue
                try:
                    fh = open(path, "rb")  # noqa: SIM115 - closed below
                except OSError:
                    continue
                with fh:
                    for line in fh:
                        # A cheap test first: the id's JSON text is in the line.
                        if not any(n in line for n in needles):
                            continue
                        try:
                            entry = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            continue
                        if entry_problem(entry) is None and entry["session_id"] in session_ids:
                            yield entry

    def _all_files(self) -> list[str]:
        """Return the files to scan, oldest first: a served file's rotated siblings too."""
        files = {f.path for f in self.retired} | set(self._files())
        for path in list(files):
            files.update(_rotated(path))
        existing = [p for p in files if os.path.isfile(p)]
        # Rotated files are older than the live one, and sort by their stamp (FileSink's
        # names) or by their modification time (an external rotation's x.jsonl.1, .2, ...).
        return sorted(existing, key=lambda p: (os.path.getmtime(p), p))

    def close(self) -> None:
        for follower in [*self.followers.values(), *self.retired]:
            follower.close()


class StoreSource(Source):
    """A session store (SQLite file or PostgreSQL database), queried for each request."""

    def __init__(self, store: SqliteStore, shown: str) -> None:
        super().__init__()
        self.store = store
        self.shown = shown
        self._version = 0
        self._signature: tuple[Any, ...] | None = None
        self._rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        # The last rows read for a (version, status, since, until): the next pages of a list,
        # and other sorts or text searches over it, read nothing until the store changes.
        self._read: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self.refresh()

    def describe(self) -> list[str]:
        return [self.shown]

    def refresh(self) -> None:
        (signature,) = self.store.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(stored), 0), COALESCE(SUM(entries), 0), "
            "COALESCE(SUM(CASE WHEN status = 'open' THEN 1 ELSE 0 END), 0) FROM sessions"
        ).fetchall()
        if signature != self._signature:
            self._signature = tuple(signature)
            self._version += 1

    @property
    def version(self) -> int:
        return self._version

    def changed(self, since: int) -> list[dict[str, Any]]:
        # The store tells that something changed, not what: the page fetches again.
        return [{"session_id": None}] if self._version > since else []

    def _summaries(self, query: Query) -> list[dict[str, Any]]:
        filters = Filters(status=list(query.status), since=query.since, until=query.until)
        found = []
        for summary in load_summaries(self.store, filters, every=False):
            found.append(
                {
                    "session_id": summary.session_id,
                    "run": 1,
                    "status": summary.status,
                    "started": _iso(summary.started_at),
                    "closed": _iso(summary.closed_at),
                    "first_stamp": _iso(summary.first_stamp),
                    "duration_s": summary.duration_s,
                    "entries": summary.logged,
                    "errors": summary.errors,
                    "missing": summary.missing,
                    "levels": summary.levels,
                    "metadata": summary.metadata,
                    "parent": summary.parent_session_id,
                    "children": len(summary.children),
                    "summary": summary.summary,
                    "discarded": summary.discarded,
                }
            )
        return found

    def page(self, query: Query) -> tuple[int, list[dict[str, Any]]]:
        key = (self._version, tuple(query.status), query.since, query.until)
        if self._read is None or self._read[0] != key:
            self._read = (key, self._summaries(query))
        rows = list(self._read[1])
        if query.status:
            rows = [r for r in rows if r["status"] in query.status]
        if query.text:
            needle = query.text.lower()
            hits = self._message_hits(needle)
            rows = [
                r
                for r in rows
                if needle in r["session_id"].lower()
                or needle in orjson.dumps(r["metadata"]).decode().lower()
                or r["session_id"] in hits
            ]
        if query.sort in ("start", "-start"):
            rows.sort(key=lambda r: (moment(r), r["session_id"]), reverse=query.sort[0] == "-")
        else:
            rows.sort(
                key=lambda r: (r["duration_s"] is not None, r["duration_s"] or 0.0),
                reverse=query.sort[0] == "-",
            )
            if query.sort[0] != "-":
                rows.sort(key=lambda r: r["duration_s"] is None)
        # Runs of one id, numbered in start order as in files.
        seen: dict[str, int] = {}
        for row in sorted(rows, key=lambda r: moment(r)):
            seen[row["session_id"]] = row["run"] = seen.get(row["session_id"], 0) + 1
        return len(rows), rows[query.offset : query.offset + query.limit]

    def _message_hits(self, needle: str) -> set[str]:
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return {
            session_id
            for (session_id,) in self.store.conn.execute(
                "SELECT DISTINCT session_id FROM entries WHERE LOWER(message) LIKE ? ESCAPE '\\'",
                (f"%{escaped}%",),
            )
        }

    def session(self, session_id: str, run: int | None) -> dict[str, Any] | None:
        runs = load_runs(self.store, session_id, tree=True)
        if not runs:
            return None
        numbers = list(range(1, len(runs) + 1))
        index = len(runs) if run is None else run
        if not 1 <= index <= len(runs):
            return None
        session, _ = runs[index - 1]
        row = {
            "session_id": session.session_id,
            "run": index,
            "status": session.status,
            "started": _iso(session.started_at),
            "closed": _iso(session.closed_at),
            "duration_s": session.duration_s,
            "entries": sum(1 for e in session.entries if e.get("event") == "log"),
            "errors": session.errors,
            "missing": len(session.missing_seqs),
            "levels": session.levels,
            "metadata": session.metadata,
            "parent": session.parent_session_id,
            "children": len(session.children),
            "summary": session.summary,
            "discarded": session.discarded,
        }
        parent = None
        if session.parent_session_id is not None:
            parent_runs = load_runs(self.store, session.parent_session_id, tree=False)
            status = parent_runs[-1][0].status if parent_runs else None
            parent = {"session_id": session.parent_session_id, "status": status}
        return session_json(session, index, numbers, row, parent)

    def close(self) -> None:
        self.store.close()


def _rotated(path: str) -> list[str]:
    """Return the rotated files of a live file: FileSink's ``app.<stamp>.jsonl[.gz]`` beside
    ``app.jsonl``, and ``app.jsonl.1``, ``app.jsonl.2.gz``... of logrotate and its kind."""
    folder, name = os.path.split(path)
    stem, dot, suffix = name.partition(".")
    pattern = os.path.join(glob.escape(folder or "."), glob.escape(stem) + ".*")
    found = []
    for candidate in glob.glob(pattern):
        rest = os.path.basename(candidate)[len(stem) :]
        if rest.endswith(".gz"):
            rest = rest[:-3]
        # "." + stamp + "." + suffix (FileSink) or "." + suffix + "." + digits (logrotate).
        if (dot and rest.endswith("." + suffix) and rest != "." + suffix) or (
            dot and rest.startswith("." + suffix + ".") and rest[len(suffix) + 2 :].isdigit()
        ):
            found.append(candidate)
    return found


def _locate(path: str, device: int, inode: int) -> str | None:
    """Return where the file (device, inode) read at ``path`` is now: there, or renamed by a
    rotation within its directory; None if it is gone."""
    folder = os.path.dirname(path) or "."
    try:
        names = [os.path.basename(path), *os.listdir(folder)]
    except OSError:
        return None
    for name in names:
        candidate = os.path.join(folder, name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue  # gone meanwhile, or the path itself renamed away
        if (st.st_dev, st.st_ino) == (device, inode):
            return candidate
    return None


def moment(row: dict[str, Any]) -> str:
    """Return the time a listed session sorts by: its start, else first entry, else close."""
    found: str = row["started"] or row["first_stamp"] or row["closed"] or ""
    return found


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
