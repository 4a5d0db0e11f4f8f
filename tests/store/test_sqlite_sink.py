"""SqliteSink under a real logger: both faces, two processes, hostile files and values."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from async_session_logger.sinks import Batch, PartialWriteError
from async_session_logger.sinks.sqlite import SqliteSink
from async_session_logger.store import SqliteStore, StoreVersionError

from ..conftest import FaceFactory


def _rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _dead(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_sink_under_real_logger(make_logger: FaceFactory, tmp_path: Path) -> None:
    """Entries logged on either face land in the store, one sessions row per session."""
    db = tmp_path / "logs" / "store.db"
    face = await make_logger(sinks=[SqliteSink(db)])
    await face.start_session("s1", {"user_id": "u1"})
    await face.log_entry("s1", "hello", logging.INFO, {"path": "/"})
    await face.log_entry("s1", "bad", logging.ERROR)
    await face.close_session("s1", "error")
    report = await face.save_logs()
    assert report.ok, report
    assert face.errors == []
    rows = _rows(db, "SELECT session_id, status, entries, errors, levels FROM sessions")
    assert rows == [("s1", "error", 2, 1, '{"INFO":1,"ERROR":1}')]
    fields = _rows(db, "SELECT custom_fields FROM entries WHERE message = 'hello'")
    assert orjson.loads(fields[0][0]) == {"path": "/"}
    assert _rows(db, "PRAGMA journal_mode") == [("wal",)]


async def test_values_json_cannot_encode_and_huge_messages(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """Unencodable values are stored as the encoder's fallback text; a 900 KB message whole."""
    db = tmp_path / "store.db"
    face = await make_logger(sinks=[SqliteSink(db)])

    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    huge = "x" * 900_000  # just under the logger's max_message_chars
    await face.start_session("s1")
    await face.log_entry("s1", "odd", logging.INFO, {"obj": Odd(), "nan": float("nan")})
    await face.log_entry("s1", huge)
    await face.close_session("s1")
    assert (await face.save_logs()).ok
    (fields,) = _rows(db, "SELECT custom_fields FROM entries WHERE message = 'odd'")[0]
    assert "<odd>" in fields
    assert _rows(db, "SELECT length(message) FROM entries WHERE seq = 2") == [(len(huge),)]


async def test_symlink_at_path_is_refused(
    make_logger: FaceFactory, tmp_path: Path, secret: Path
) -> None:
    """A link planted at the DB path is never followed: entries are dead-lettered, reported."""
    db = tmp_path / "store.db"
    db.symlink_to(secret)
    before = await asyncio.to_thread(secret.read_bytes)
    face = await make_logger(sinks=[SqliteSink(db, retries=0)])
    await face.start_session("s1")
    await face.close_session("s1")
    report = await face.save_logs()
    assert not report.ok
    assert await asyncio.to_thread(secret.read_bytes) == before
    assert any("symbolic link" in str(e.__cause__) for e in face.errors)
    dead = _dead(tmp_path / "dead.jsonl")
    assert [d["entry"]["event"] for d in dead] == ["session_start", "session_close"]
    assert all("symbolic link" in d["reason"] for d in dead)


async def test_file_that_is_not_a_database(make_logger: FaceFactory, tmp_path: Path) -> None:
    """A file that is no database gives a clear error; its bytes stay, entries dead-lettered."""
    db = tmp_path / "store.db"
    db.write_bytes(b"this is a text file, not SQLite\n" * 100)
    face = await make_logger(sinks=[SqliteSink(db, retries=0)])
    await face.start_session("s1")
    await face.close_session("s1")
    report = await face.save_logs()
    assert not report.ok
    assert any("is not an SQLite database" in str(e.__cause__) for e in face.errors)
    assert await asyncio.to_thread(db.read_bytes) == b"this is a text file, not SQLite\n" * 100
    dead = _dead(tmp_path / "dead.jsonl")
    assert [d["entry"]["seq"] for d in dead] == [0, 1]
    assert all("is not an SQLite database" in d["reason"] for d in dead)


async def test_unkeyable_lines_fail_alone(tmp_path: Path) -> None:
    """Lines that are no schema-v1 entry (no seq, not an object) fail alone; the rest stay."""
    sink = SqliteSink(tmp_path / "store.db")
    await sink.open()
    good = {"session_id": "s", "seq": 1, "event": "log", "message": "kept"}
    lines = [orjson.dumps(good), b'{"session_id": "s", "event": "log"}', b"[1, 2]"]
    batch = Batch([orjson.loads(line) for line in lines], b"".join(x + b"\n" for x in lines))
    with pytest.raises(PartialWriteError) as caught:
        await sink.write_batch(batch)
    assert caught.value.failed == [1, 2]
    await sink.close()
    assert _rows(tmp_path / "store.db", "SELECT message FROM entries") == [("kept",)]


_WRITER = """
import logging, sys
from async_session_logger import SessionLogger
from async_session_logger.sinks import Batch, PartialWriteError
from async_session_logger.sinks.sqlite import SqliteSink
db, tag = sys.argv[1], sys.argv[2]
with SessionLogger(sinks=[SqliteSink(db)], dead_letter_path=db + "." + tag + ".dead") as log:
    for n in range(40):
        sid = f"{tag}-{n}"
        log.start_session(sid, metadata={"writer": tag})
        for i in range(5):
            log.log_entry(sid, f"entry {i}", logging.INFO)
        log.close_session(sid)
"""


def test_two_processes_write_one_store(tmp_path: Path) -> None:
    """Two processes logging into one store file at once: every entry, every row, once."""
    db = tmp_path / "shared.db"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), tag]) for tag in ("a", "b")]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    assert _rows(db, "SELECT COUNT(*) FROM entries") == [(2 * 40 * 7,)]
    assert _rows(db, "SELECT status, entries, COUNT(*) FROM sessions GROUP BY 1, 2") == [
        ("closed", 5, 80)
    ]
    assert not any(p.name.endswith(".dead") for p in tmp_path.iterdir())


def test_store_refuses_link_directly(tmp_path: Path, secret: Path) -> None:
    """Opening a store at a symlink raises ELOOP before anything touches the target."""
    link = tmp_path / "s.db"
    link.symlink_to(secret)
    with pytest.raises(OSError, match="symbolic link"):
        SqliteStore(str(link))
    assert os.path.getsize(secret) > 0


async def test_startup_errors_surface_in_the_caller(tmp_path: Path) -> None:
    """A newer store and a missing directory (mkdir=False) fail open(), with a clear error."""
    newer = tmp_path / "newer.db"
    SqliteStore(str(newer)).close()
    conn = sqlite3.connect(newer, isolation_level=None)
    conn.execute("INSERT INTO schema_version (version) VALUES (999)")
    conn.close()
    sink = SqliteSink(newer)
    with pytest.raises(StoreVersionError, match="upgrade async_session_logger"):
        await sink.open()
    await sink.close()
    missing = SqliteSink(tmp_path / "no" / "such" / "dir.db", mkdir=False)
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await missing.open()
    await missing.close()


_FORK_POOL = """
import multiprocessing, sys
from async_session_logger import SessionLogger
from async_session_logger.sinks.sqlite import SqliteSink

logger = SessionLogger(sinks=[SqliteSink(sys.argv[1])], dead_letter_path=sys.argv[1] + ".dead")
logger.start_session("parent")
for i in range(1000):
    logger.log_entry("parent", f"p{i}")   # some still queued in the parent at fork time

def work(n):
    logger.start_session(f"child-{n}")
    for i in range(200):
        logger.log_entry(f"child-{n}", f"c{n}-{i}")
    logger.close_session(f"child-{n}")
    return n

if __name__ == "__main__":
    pool = multiprocessing.get_context("fork").Pool(3)
    done = pool.map(work, range(8))
    pool.close()
    pool.join()
    logger.close_session("parent")
    report = logger.close()
    print(len(done), report.ok, flush=True)
"""


def test_fork_pool_children_write_through_the_parents_sqlite_sink(tmp_path: Path) -> None:
    """A fork Pool working with the parent's logger and SqliteSink: the children open their own
    connections (not the parent's inherited one) and every entry of every process is stored
    once; the parent's entries queued at fork time are written by the parent only."""
    db = tmp_path / "forked.db"
    done = subprocess.run(
        [sys.executable, "-c", _FORK_POOL, str(db)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "True"]
    assert _rows(db, "SELECT session_id, stored, missing, status FROM sessions ORDER BY 1") == [
        *[(f"child-{n}", 202, 0, "closed") for n in range(8)],
        ("parent", 1002, 0, "closed"),
    ]
    assert _rows(db, "SELECT COUNT(*), COUNT(DISTINCT session_id || ':' || seq) FROM entries") == [
        (8 * 202 + 1002, 8 * 202 + 1002)
    ]
    assert not (tmp_path / "forked.db.dead").exists()
    assert "Traceback" not in done.stderr
