"""The store's schema: migrations, idempotent writes, runs, and rows derived from entries."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from async_session_logger import read_sessions
from async_session_logger.store import LATEST, SqliteStore, StoreVersionError, migrate

from . import write_story


@pytest.fixture
def story(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """A real log (file) and its lines, written by a real logger."""
    log = tmp_path / "log.jsonl"
    write_story(log, tmp_path / "written.db")
    return log, log.read_bytes().splitlines()


def _store(path: Path) -> SqliteStore:
    return SqliteStore(str(path))


def _tables(path: Path) -> tuple[list[Any], list[Any]]:
    store = _store(path)
    try:
        return store.table("entries"), store.table("sessions")
    finally:
        store.close()


def test_new_file_gets_latest_schema_and_wal(tmp_path: Path) -> None:
    """A new store file is created at the latest version, in WAL mode."""
    store = _store(tmp_path / "s.db")
    assert store.version == LATEST
    assert store.journal_mode == "wal"
    mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_older_file_is_migrated(tmp_path: Path) -> None:
    """A file at version 1 is migrated to the latest version on open, keeping its rows."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute(
        "INSERT INTO entries (session_id, run, seq, event, entry) VALUES ('a', '', 1, 'log', '{}')"
    )
    conn.close()
    store = _store(path)
    assert store.found_version == 1
    assert store.version == LATEST
    indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master")}
    assert "sessions_by_parent" in indexes
    assert len(store.table("entries")) == 1
    store.close()


def test_newer_file_is_refused(tmp_path: Path) -> None:
    """A file made by a newer library version is refused with a clear error, untouched."""
    path = tmp_path / "new.db"
    _store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    conn.close()
    with pytest.raises(StoreVersionError, match=f"schema version {LATEST + 1}, newer"):
        _store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == LATEST + 1
    conn.close()


def test_same_rows_whatever_order_and_duplicates(
    tmp_path: Path, story: tuple[Path, list[bytes]]
) -> None:
    """The same entries in order, twice, shuffled in small batches, with duplicates: same rows."""
    _, lines = story
    orderly = tmp_path / "orderly.db"
    store = _store(orderly)
    store.write(lines)
    store.write(lines)  # the same batch again adds nothing
    store.close()
    expected = _tables(orderly)
    assert len(expected[0]) == len(lines)
    rng = random.Random(13)
    for attempt in range(20):
        shuffled = lines + rng.sample(lines, len(lines) // 2)
        rng.shuffle(shuffled)
        path = tmp_path / f"shuffled{attempt}.db"
        store = _store(path)
        at = 0
        while at < len(shuffled):
            size = rng.randint(1, 4)
            store.write(shuffled[at : at + size])
            at += size
        store.close()
        assert _tables(path) == expected


def test_reused_id_gives_two_runs(story: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    """A session id used twice is two runs, each with its own entries and row."""
    _, lines = story
    store = _store(tmp_path / "s.db")
    store.write(list(reversed(lines)))  # second run's entries before either start
    rows = [r for r in store.session_rows() if r["session_id"] == "req-3"]
    assert len(rows) == 2
    assert [orjson.loads(r["metadata"])["attempt"] for r in rows] == [3, 4]
    assert [r["status"] for r in rows] == ["interrupted", "closed"]
    messages = {
        run: [
            m
            for (m,) in store.conn.execute(
                "SELECT message FROM entries WHERE session_id='req-3' AND run=? AND event='log'",
                (run,),
            )
        ]
        for run in (r["run"] for r in rows)
    }
    assert sorted(messages.values()) == [["first run"], ["second run"]]
    store.close()


def test_sessions_rows_equal_read_sessions(story: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    """Each sessions row says what read_sessions says of the same entries."""
    log, lines = story
    store = _store(tmp_path / "s.db")
    store.write(lines)
    rows = store.session_rows()
    sessions = read_sessions(log)
    assert len(rows) == len(sessions)
    by_key = {(r["session_id"], r["started"]): r for r in rows}
    for session in sessions:
        started = session.started_at
        assert started is not None
        row = by_key[(session.session_id, started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))]
        assert row["status"] == session.status
        assert row["duration_s"] == session.duration_s
        assert orjson.loads(row["levels"]) == session.levels
        assert row["entries"] == sum(1 for e in session.entries if e["event"] == "log")
        assert orjson.loads(row["summary"]) == session.summary
        assert row["parent"] == session.parent_session_id
        assert row["discarded"] == session.discarded
        assert row["errors"] == session.errors
        assert orjson.loads(row["metadata"]) == session.metadata
    store.close()


def test_open_session_counts_its_levels(tmp_path: Path) -> None:
    """A session without a close entry is open, its levels counted from its log entries."""
    lines = [
        orjson.dumps(e)
        for e in (
            {
                "session_id": "a",
                "seq": 0,
                "event": "session_start",
                "level": "INFO",
                "levelno": 20,
                "message": "Session started",
                "metadata": {},
                "timestamp": "2026-11-24T06:00:00.000000Z",
            },
            {
                "session_id": "a",
                "seq": 2,
                "event": "log",
                "level": "ERROR",
                "levelno": 40,
                "message": "x",
                "timestamp": "2026-11-24T06:00:02.000000Z",
            },
            {
                "session_id": "a",
                "seq": 3,
                "event": "log",
                "levelno": 30,
                "message": "no level name",
                "timestamp": "2026-11-24T06:00:03.000000Z",
            },
        )
    ]
    store = _store(tmp_path / "s.db")
    store.write(lines)
    (row,) = store.session_rows()
    assert row["status"] == "open"
    assert orjson.loads(row["levels"]) == {"ERROR": 1, "WARNING": 1}
    assert row["missing"] == 1  # seq 1 never arrived
    assert row["errors"] == 1
    store.close()


def test_rows_added_to_equal_rows_derived(tmp_path: Path, story: tuple[Path, list[bytes]]) -> None:
    """Rows updated batch by batch as a session grows equal rows computed from all entries."""
    _, lines = story
    extra = [
        orjson.dumps(e)
        for e in (
            {
                "session_id": "g",
                "seq": 0,
                "event": "session_start",
                "level": "INFO",
                "levelno": 20,
                "metadata": {},
                "timestamp": "2026-11-24T06:00:00.000000Z",
            },
            {
                "session_id": "g",
                "seq": 1,
                "event": "log",
                "level": "INFO",
                "levelno": 20,
                "message": "a",
                "timestamp": "2026-11-24T06:00:01.000000Z",
            },
            {
                "session_id": "g",
                "seq": 3,
                "event": "gap",
                "level": "WARNING",
                "levelno": 30,
                "dropped": 1,
                "message": "gap",
                "timestamp": "2026-11-24T06:00:02.000000Z",
            },
            {
                "session_id": "g",
                "seq": 4,
                "event": "log",
                "level": "CRITICAL",
                "levelno": 50,
                "message": "b",
                "timestamp": "2026-11-24T06:00:03.000000Z",
            },
            {
                "session_id": "g",
                "seq": 5,
                "event": "custom",
                "level": "ERROR",
                "levelno": 40,
                "message": "c",
            },
            {
                "session_id": "g",
                "seq": 6,
                "event": "log",
                "level": "INFO",
                "levelno": 20,
                "message": "d",
                "timestamp": "2026-11-24T06:00:04.000000Z",
            },
        )
    ]
    every = lines + extra
    whole = tmp_path / "whole.db"
    store = _store(whole)
    store.write(every)
    store.close()
    for size in (1, 2, 3):
        path = tmp_path / f"by{size}.db"
        store = _store(path)
        for at in range(0, len(every), size):
            store.write(every[at : at + size])
        store.close()
        assert _tables(path) == _tables(whole)


def test_two_writers_creating_one_new_store_at_once_both_open(tmp_path: Path) -> None:
    """Two collectors starting on one new file: neither gets "database is locked" (switching a
    new file to WAL does not wait for the busy timeout; the open retries within it)."""
    import threading

    errors: list[BaseException] = []
    for trial in range(30):
        path = str(tmp_path / f"new-{trial}.db")

        def open_close(path: str = path) -> None:
            try:
                SqliteStore(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_close) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def _entry(seq: int, *, event: str = "log", levelno: int = 20, timed: bool = True) -> bytes:
    entry: dict[str, Any] = {
        "session_id": "o",
        "seq": seq,
        "event": event,
        "level": logging.getLevelName(levelno),
        "levelno": levelno,
        "message": f"m{seq}",
    }
    if event == "session_start":
        entry["metadata"] = {}
    if event == "session_close":
        entry["status"] = "closed"
    if timed:
        entry["timestamp"] = f"2026-11-24T06:00:{seq % 60:02d}.{seq:06d}Z"
    return orjson.dumps(entry)


def _derives(store: SqliteStore) -> list[str]:
    """Record the full-run scans (_derive's GROUP BY) the store's connection runs."""
    seen: list[str] = []
    store.conn.set_trace_callback(
        lambda sql: seen.append(sql) if "GROUP BY event, level, levelno" in sql else None
    )
    return seen


@pytest.mark.parametrize("seed", range(6))
def test_batches_out_of_order_fill_holes_without_a_rescan(tmp_path: Path, seed: int) -> None:
    """Log batches arriving out of seq order (split between collectors) update the row by
    adding, never by rescanning the run, and give the row computed from all entries."""
    rng = random.Random(seed)
    middle = [
        _entry(seq, levelno=rng.choice((10, 20, 30, 40, 50)), timed=rng.random() < 0.8)
        for seq in range(1, 61)
    ]
    start, close = _entry(0, event="session_start"), _entry(61, event="session_close")
    whole = tmp_path / "whole.db"
    store = _store(whole)
    store.write([start, *middle])
    store.close()
    batches = [middle[at : at + 4] for at in range(0, len(middle), 4)]
    rng.shuffle(batches)
    path = tmp_path / "shuffled.db"
    store = _store(path)
    store.write([start])
    scans = _derives(store)
    for batch in batches:
        store.write(batch)
    store.conn.set_trace_callback(None)
    store.close()
    assert scans == []
    assert _tables(path) == _tables(whole)
    # The close still derives (its recorded levels replace the counted ones): same rows too.
    for db in (path, whole):
        store = _store(db)
        store.write([close])
        store.close()
    assert _tables(path) == _tables(whole)


def _late(tmp_path: Path, lines: list[bytes], late: bytes) -> list[str]:
    """Write ``lines`` then ``late`` into one store, all at once into another; check both hold
    the same rows, and return the full-run scans the late write ran."""
    path, whole = tmp_path / "late.db", tmp_path / "whole.db"
    store = _store(path)
    store.write(lines)
    scans = _derives(store)
    store.write([late])
    store.close()
    store = _store(whole)
    store.write([*lines, late])
    store.close()
    assert _tables(path) == _tables(whole)
    return scans


@pytest.mark.parametrize(
    ("first", "filler", "expected_first"),
    [
        # A filler below the first timed entry, with a time: it becomes the first stamp.
        ([3], (1, True), "2026-11-24T06:00:01.000001Z"),
        # ... without a time: the first stamp stays.
        ([3], (1, False), "2026-11-24T06:00:03.000003Z"),
        # A filler above it changes nothing.
        ([1], (2, True), "2026-11-24T06:00:01.000001Z"),
    ],
)
def test_a_filler_entry_moves_the_first_stamp_as_a_rescan_would(
    tmp_path: Path, first: list[int], filler: tuple[int, bool], expected_first: str
) -> None:
    """first_stamp (the start time of a session whose start is missing) follows the lowest
    timed seq when a hole below it fills in, as deriving the row from all entries gives."""
    lines = [_entry(seq, timed=True) for seq in first] + [_entry(5)]
    seq, timed = filler
    assert _late(tmp_path, lines, _entry(seq, timed=timed)) == []
    store = _store(tmp_path / "late.db")
    (row,) = store.session_rows()
    store.close()
    assert row["first_stamp"] == expected_first


def test_many_untimed_entries_first_fall_back_to_a_rescan(tmp_path: Path) -> None:
    """When the run's first rows hold no time, the filled-in row is derived: still right."""
    lines = [_entry(seq, timed=False) for seq in range(12)] + [_entry(14)]
    assert len(_late(tmp_path, lines, _entry(13))) == 1


def test_a_filler_in_a_run_with_no_time_at_all_keeps_no_first_stamp(tmp_path: Path) -> None:
    """A short run whose entries carry no time keeps first_stamp empty when a hole fills."""
    lines = [_entry(1, timed=False), _entry(3, timed=False)]
    assert _late(tmp_path, lines, _entry(2, timed=False)) == []


def test_a_late_start_moves_its_entries_in_bulk(tmp_path: Path) -> None:
    """A start arriving after 200 of its entries moves them with a fixed number of statements
    (not a round trip per entry), and the rows equal those of the entries written in order."""
    logs = [_entry(seq) for seq in range(1, 201)]
    start = _entry(0, event="session_start")
    path, whole = tmp_path / "late.db", tmp_path / "whole.db"
    store = _store(path)
    store.write(logs)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.write([start])
    store.conn.set_trace_callback(None)
    store.close()
    # (sqlite3 traces each row of an executemany as a statement of its own: inserts aside.)
    others = [sql for sql in statements if not sql.startswith("INSERT INTO entries")]
    assert len(others) < 30, others[:40]
    store = _store(whole)
    store.write([start, *logs])
    store.close()
    assert _tables(path) == _tables(whole)
    store = _store(path)
    (row,) = store.session_rows()
    store.close()
    assert (row["run"], row["stored"], row["missing"]) == ("2026-11-24T06:00:00.000000Z", 201, 0)
