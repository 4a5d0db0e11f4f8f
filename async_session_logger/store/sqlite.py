"""The SQLite store: open a file safely, write batches of JSON lines, read sessions back.

Everything here is blocking: ``SqliteSink`` calls it from its own thread, the CLI directly.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Literal

import orjson

from .._reader import MAX_LEVEL_NAMES, LevelCounter, entry_problem
from . import rows
from .schema import StoreError, migrate, version_of

__all__ = ["SqliteStore", "check_not_link", "sqlite_path"]

_START: Final = "session_start"
_CLOSE: Final = "session_close"
# The rows _first_stamp reads before it gives up (and the run's row is derived instead).
_FIRST_ROWS: Final = 8
# The sessions columns a batch reads once per run (_read_rows) and _add updates.
_ROW: Final = "status, levels, entries, errors, dropped, missing, stored, first_stamp"
_ADD_UPDATE: Final = (
    "UPDATE sessions SET levels = ?, entries = ?, errors = ?, dropped = ?, missing = ?, "
    "stored = ?, first_stamp = ? WHERE session_id = ? AND run = ?"
)
# Ids per query of _read_rows (SQLite allows 32,766 parameters per statement; PostgreSQL 65,535).
_IDS_PER_QUERY: Final = 500
_ENTRY_INSERT: Final = (
    f"INSERT INTO entries ({', '.join(rows.ENTRY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(rows.ENTRY_COLUMNS))}) "
    "ON CONFLICT (session_id, run, seq) DO NOTHING"
)
_SESSION_UPSERT: Final = (
    f"INSERT INTO sessions ({', '.join(rows.SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(rows.SESSION_COLUMNS))}) "
    "ON CONFLICT (session_id, run) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in rows.SESSION_COLUMNS[2:])
)


def _run_for(entry: dict[str, Any], known: list[str]) -> str:
    """Return the run of a non-start entry: its id's latest start at or before its time."""
    key = rows.stamp(entry.get("timestamp")) or rows.LATEST_KEY
    run = rows.NO_RUN
    for candidate in known:
        if candidate <= key:
            run = candidate
    return run


def sqlite_path(url: str) -> str:
    """Return the file of a ``sqlite:///PATH`` URL (``sqlite:////abs`` is ``/abs``)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreError(f"not an SQLite store URL (sqlite:///PATH): {url!r}")
    return url[len(prefix) :]


def check_not_link(path: str) -> None:
    """Refuse a symlink at the database or at its ``-wal``/``-shm``/``-journal`` files.

    Raises:
        OSError: ``ELOOP``, naming the link (as FileSink refuses one).
    """
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        if os.path.islink(name):
            raise OSError(
                errno.ELOOP, f"{name} is a symbolic link: the SQLite store does not follow links"
            )


class SqliteStore:
    """One connection to a store file: idempotent batch writes and the reads of the CLI.

    Args:
        path: the database file (created with the schema when missing).
        busy_timeout: seconds a statement waits for another process's write lock.
        synchronous: SQLite's ``synchronous`` pragma; ``NORMAL`` is durable in WAL mode
            except for the last transactions before a power loss.
        create: create the file if it is missing (the CLI reads existing stores only).
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        create: bool = True,
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = path
        self._rows: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._updates: list[tuple[Any, ...]] = []
        check_not_link(path)
        if not create and not os.path.exists(path):
            raise StoreError(f"{path}: no such store file")
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE per batch).
        self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            deadline = time.monotonic() + busy_timeout
            while True:
                try:
                    mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
                    self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                    self.journal_mode = str(mode)
                    self.found_version = migrate(self.conn)
                    break
                except sqlite3.OperationalError as exc:
                    # Two writers creating one new file at once: switching it to WAL takes an
                    # exclusive lock for which SQLite does not call the busy handler, so the
                    # loser gets "database is locked" at once. Try again within busy_timeout.
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(f"{path} is not an SQLite database ({exc})") from exc
            raise
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @property
    def version(self) -> int:
        """Return the schema version of the file."""
        return version_of(self.conn)

    # -- writing ------------------------------------------------------------------------------
    def write(self, lines: Sequence[bytes]) -> list[int]:
        """Store the entries of JSON ``lines`` in one transaction; return the unusable ones.

        An index is returned for a line that is no schema-v1 entry (a formatter removed its
        ``seq``...): it cannot be keyed, so it is left to the caller (dead letters).
        """
        parsed: list[tuple[dict[str, Any], str]] = []
        bad: list[int] = []
        for i, line in enumerate(lines):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad.append(i)
                continue
            if entry_problem(entry) is not None or not rows.fits_key(entry):
                bad.append(i)
                continue
            parsed.append((entry, line.decode("utf-8")))
        if not parsed:
            return bad
        conn = self.conn
        self._begin(sorted({entry["session_id"] for entry, _ in parsed}))
        try:
            self._rows = self._read_rows({entry["session_id"] for entry, _ in parsed})
            self._updates = []
            touched, added = self._insert(parsed)
            for session_id, run in sorted(touched):
                self._derive(session_id, run)
            for (session_id, run), entries in added.items():
                if (session_id, run) not in touched and not self._add(session_id, run, entries):
                    self._derive(session_id, run)
            if self._updates:
                conn.executemany(_ADD_UPDATE, self._updates)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            self._rows, self._updates = {}, []
        conn.execute("COMMIT")
        return bad

    def _begin(self, session_ids: list[str]) -> None:
        """Open a batch's write transaction (the ids are those of its entries, sorted).

        SQLite takes its one write lock now (``BEGIN IMMEDIATE``); ``PostgresStore`` takes a
        lock per session id instead, so that writers of different sessions run in parallel.
        """
        self.conn.execute("BEGIN IMMEDIATE")

    def _read_rows(self, session_ids: set[str]) -> dict[str, dict[str, tuple[Any, ...]]]:
        """Return the batch's sessions rows, read once: by id, by run, the ``_ROW`` columns.

        Read after :meth:`_begin` (under the lock), they hold for the transaction: a run whose
        row it derives again is never added to afterwards (see :meth:`write`).
        """
        found: dict[str, dict[str, tuple[Any, ...]]] = {}
        ids = sorted(session_ids)
        for at in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[at : at + _IDS_PER_QUERY]
            for session_id, run, *columns in self.conn.execute(
                f"SELECT session_id, run, {_ROW} FROM sessions "
                f"WHERE session_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                found.setdefault(session_id, {})[run] = tuple(columns)
        return found

    def _insert(
        self, parsed: list[tuple[dict[str, Any], str]]
    ) -> tuple[set[tuple[str, str]], dict[tuple[str, str], list[dict[str, Any]]]]:
        """Insert the entries; return the runs to derive again, and those only added to.

        A run only added to received new entries only (past its highest seq: a live session's
        next batch; or filling holes below it: a batch another collector overtook), none of
        them a lifecycle entry: its row is updated by adding, not recomputed (see :meth:`_add`).
        """
        conn = self.conn
        added: dict[tuple[str, str], list[dict[str, Any]]] = {}
        touched: set[tuple[str, str]] = set()
        runs: dict[str, list[str]] = {}

        def known(session_id: str) -> list[str]:
            found = runs.get(session_id)
            if found is None:
                found = runs[session_id] = sorted(
                    r
                    for r in self._rows.get(session_id, ())
                    if r > rows.NO_RUN and not r.startswith(rows.PARKED)
                )
            return found

        # Starts first: the other entries of the batch then find their run.
        for entry, line in parsed:
            if entry["event"] != _START:
                continue
            session_id = entry["session_id"]
            run = rows.stamp(entry.get("timestamp")) or rows.NO_RUN
            placed = self._place(entry, line, run)
            if placed is not None:
                touched.add((session_id, placed))
            if placed == run != rows.NO_RUN and run not in known(session_id):
                known(session_id).append(run)
                known(session_id).sort()
                touched.update(self._adopt(session_id, run, known(session_id)))
        rest = [
            (entry, line, _run_for(entry, known(entry["session_id"])))
            for entry, line in parsed
            if entry["event"] != _START
        ]
        values = [rows.entry_values(entry, line, run) for entry, line, run in rest]
        before = conn.total_changes
        conn.executemany(_ENTRY_INSERT, values)
        if conn.total_changes - before == len(values):
            for entry, _, run in rest:
                key = (entry["session_id"], run)
                if entry["event"] == _CLOSE or key in touched:
                    touched.add(key)
                else:
                    added.setdefault(key, []).append(entry)
        else:
            # Some were already there: duplicates, or seqs another run holds. Entry by entry
            # (those just inserted now find themselves: duplicates, a no-op).
            for entry, line, run in rest:
                placed = self._place(entry, line, run)
                touched.add((entry["session_id"], run))
                if placed is not None:
                    touched.add((entry["session_id"], placed))
        return {key for key in touched if not key[1].startswith(rows.PARKED)}, added

    def _place(self, entry: dict[str, Any], line: str, run: str) -> str | None:
        """Insert an entry into ``run``; return where it went, None for a duplicate.

        A different entry already holding that seq in that run belongs to another run of a
        reused id whose start is not stored yet: this one is parked (``!`` + its time) until
        a start arrives, instead of being lost.
        """
        conn = self.conn
        if conn.execute(_ENTRY_INSERT, rows.entry_values(entry, line, run)).rowcount == 1:
            return run
        (existing,) = conn.execute(
            "SELECT entry FROM entries WHERE session_id = ? AND run = ? AND seq = ?",
            (entry["session_id"], run, entry["seq"]),
        ).fetchone()
        if orjson.loads(existing) == entry or run.startswith(rows.PARKED):
            return None
        parked = rows.PARKED + (rows.stamp(entry.get("timestamp")) or rows.LATEST_KEY)
        conn.execute(_ENTRY_INSERT, rows.entry_values(entry, line, parked))
        return parked

    def _adopt(self, session_id: str, run: str, known: list[str]) -> set[tuple[str, str]]:
        """Move the entries a new start claims, then re-place parked ones; return runs touched.

        In bulk: one DELETE for each kind and one batch INSERT into their new runs (in a group
        of collectors, a session's first entries often arrive before its start, from the other
        member). When that INSERT skipped some (a seq the new run already holds), every moved
        entry goes through :meth:`_place` again, in the same order, so that a collision parks
        rather than drops: those already placed find themselves, a no-op.
        """
        conn = self.conn
        touched: set[tuple[str, str]] = set()
        movable_where = (
            "WHERE session_id = ? AND run < ? AND run NOT LIKE '!%' "
            "AND event <> 'session_start' AND COALESCE(timestamp, '~') >= ?"
        )
        parked_where = "WHERE session_id = ? AND run LIKE '!%'"
        movable = conn.execute(
            f"SELECT run, seq, entry FROM entries {movable_where} ORDER BY run, seq",
            (session_id, run, run),
        ).fetchall()
        parked = conn.execute(
            f"SELECT run, seq, entry FROM entries {parked_where} ORDER BY run, seq",
            (session_id,),
        ).fetchall()
        if not movable and not parked:
            return touched
        if movable:
            conn.execute(f"DELETE FROM entries {movable_where}", (session_id, run, run))
        if parked:
            conn.execute(f"DELETE FROM entries {parked_where}", (session_id,))
        moved: list[tuple[dict[str, Any], str, str]] = []
        for old, _, line in [*movable, *parked]:
            touched.add((session_id, old))
            entry = orjson.loads(line)
            target = _run_for(entry, known)
            touched.add((session_id, target))
            moved.append((entry, line, target))
        before = conn.total_changes
        conn.executemany(
            _ENTRY_INSERT, [rows.entry_values(entry, line, target) for entry, line, target in moved]
        )
        if conn.total_changes - before != len(moved):
            for entry, line, target in moved:
                placed = self._place(entry, line, target)
                if placed is not None:
                    touched.add((session_id, placed))
        return touched

    def _derive(self, session_id: str, run: str) -> None:
        """Recompute a run's sessions row from its stored entries (two scans of the run)."""
        conn = self.conn
        key = (session_id, run)
        where = "FROM entries WHERE session_id = ? AND run = ?"
        stored, max_seq, start_seq, close_seq = conn.execute(
            "SELECT COUNT(*), MAX(seq), MIN(CASE WHEN event = 'session_start' THEN seq END), "
            f"MIN(CASE WHEN event = 'session_close' THEN seq END) {where}",
            key,
        ).fetchone()
        if not stored:
            conn.execute("DELETE FROM sessions WHERE session_id = ? AND run = ?", key)
            return
        start = self._entry_at(session_id, run, start_seq)
        close = self._entry_at(session_id, run, close_seq)
        # The rest are what Session.entries holds: log, gap, unknown events, a second close.
        rest_key = (
            *key,
            -1 if start_seq is None else start_seq,
            -1 if close_seq is None else close_seq,
        )
        log_levels: list[tuple[str | None, int | None, int]] = []
        errors = 0
        first_seq: int | None = None
        gaps = False
        for event, level, levelno, count, severe, timed in conn.execute(
            "SELECT event, level, levelno, COUNT(*), "
            "SUM(CASE WHEN levelno >= 40 THEN 1 ELSE 0 END), "
            f"MIN(CASE WHEN timestamp IS NOT NULL THEN seq END) {where} "
            "AND seq <> ? AND seq <> ? GROUP BY event, level, levelno ORDER BY MIN(seq)",
            rest_key,
        ):
            errors += severe
            if event == "log":
                log_levels.append((level, levelno, count))
            gaps = gaps or event == "gap"
            if timed is not None and (first_seq is None or timed < first_seq):
                first_seq = timed
        dropped = 0
        if gaps:
            for (line,) in conn.execute(
                f"SELECT entry {where} AND event = 'gap' AND seq <> ? AND seq <> ?", rest_key
            ):
                count = orjson.loads(line).get("dropped")
                if isinstance(count, int) and not isinstance(count, bool):
                    dropped += count
        first = None
        if first_seq is not None:
            first = conn.execute(
                f"SELECT timestamp {where} AND seq = ?", (*key, first_seq)
            ).fetchone()[0]
        facts = rows.RunFacts(
            start=start,
            close=close,
            log_levels=log_levels,
            errors=errors,
            dropped=dropped,
            max_seq=max_seq,
            stored=stored,
            first_stamp=first,
        )
        conn.execute(_SESSION_UPSERT, rows.session_values(session_id, run, facts))

    def _add(self, session_id: str, run: str, entries: list[dict[str, Any]]) -> bool:
        """Add new entries to a run's row without a scan; False when it must be derived.

        For entries just inserted (new seqs: past the run's highest, or filling a missing one,
        as batches split between collectors arrive out of order), none a lifecycle entry and
        each with a plain level: then every column follows by adding (the result equals
        :meth:`_derive`'s, which the tests check), and only ``first_stamp`` may need a short
        look at the run's first rows (:meth:`_first_stamp`) when a seq below the top filled in.
        """
        row = self._rows.get(session_id, {}).get(run)
        if row is None:
            return False
        status, levels_text, logged, errors, dropped, missing, stored, first = row
        top = missing + stored - 1
        entries.sort(key=lambda e: int(e["seq"]))
        counter = LevelCounter()
        counter.levels = orjson.loads(levels_text)
        filled = False
        for entry in entries:
            levelno = entry.get("levelno")
            if (
                not isinstance(entry.get("level"), str)
                or not isinstance(levelno, int)
                or isinstance(levelno, bool)
                or not 0 <= levelno < 2**63
            ):
                return False
            if entry["seq"] <= top:
                # Inserted just now (the caller's insert changed every row), so this seq was
                # missing: it fills a hole instead of extending the run. Past the cap on level
                # names, which names count is decided by seq order: derive.
                filled = True
                if len(counter.levels) >= MAX_LEVEL_NAMES - 1:
                    return False
            else:
                top = entry["seq"]
            stored += 1
            if levelno >= 40:
                errors += 1
            if entry["event"] == "log":
                logged += 1
                if status == "open":
                    counter.add(entry)
            elif entry["event"] == "gap":
                count = entry.get("dropped")
                if isinstance(count, int) and not isinstance(count, bool):
                    dropped += count
            if first is None:
                first = rows.stamp(entry.get("timestamp"))
        if filled:
            found = self._first_stamp(session_id, run)
            if found is False:
                return False
            first = found
        # Sent with the batch's other updates, in one executemany before COMMIT.
        self._updates.append(
            (
                orjson.dumps(counter.ordered()).decode(),
                logged,
                errors,
                dropped,
                top + 1 - stored,
                stored,
                first,
                session_id,
                run,
            )
        )
        return True

    def _first_stamp(self, session_id: str, run: str) -> str | Literal[False] | None:
        """Return the time of the run's lowest-seq timed entry (start and close aside).

        :meth:`_derive`'s rule, read from the first few rows by seq (the index's order); False
        when those hold no answer (many untimed entries first): then the row is derived.
        """
        start = close = False
        read = 0
        for _, event, timestamp in self.conn.execute(
            "SELECT seq, event, timestamp FROM entries WHERE session_id = ? AND run = ? "
            f"ORDER BY seq LIMIT {_FIRST_ROWS}",
            (session_id, run),
        ):
            read += 1
            # _derive leaves out the first start and the first close (by seq) only.
            if event == _START and not start:
                start = True
                continue
            if event == _CLOSE and not close:
                close = True
                continue
            if timestamp is not None:
                return str(timestamp)
        return None if read < _FIRST_ROWS else False  # all rows read: none is timed

    def _entry_at(self, session_id: str, run: str, seq: int | None) -> dict[str, Any] | None:
        if seq is None:
            return None
        row = self.conn.execute(
            "SELECT entry FROM entries WHERE session_id = ? AND run = ? AND seq = ?",
            (session_id, run, seq),
        ).fetchone()
        loaded: dict[str, Any] = orjson.loads(row[0])
        return loaded

    # -- reading ------------------------------------------------------------------------------
    def session_rows(self, where: str = "", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Return the sessions rows matching a WHERE clause (built by ``query``), as dicts."""
        sql = f"SELECT {', '.join(rows.SESSION_COLUMNS)} FROM sessions"
        if where:
            sql += f" WHERE {where}"
        sql += " ORDER BY started, session_id, run"
        cursor = self.conn.execute(sql, tuple(params))
        return [dict(zip(rows.SESSION_COLUMNS, row, strict=True)) for row in cursor]

    def entries(self, session_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Yield the stored entries of these ids: run by run (oldest first), by seq."""
        for session_id in session_ids:
            for (line,) in self.conn.execute(
                "SELECT entry FROM entries WHERE session_id = ? ORDER BY run, seq", (session_id,)
            ):
                yield orjson.loads(line)

    def table(self, name: str) -> list[tuple[Any, ...]]:
        """Return every row of ``entries`` or ``sessions``, sorted (for comparisons in tests)."""
        if name not in ("entries", "sessions"):
            raise ValueError(f"no table {name!r}")
        return sorted(self.conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
