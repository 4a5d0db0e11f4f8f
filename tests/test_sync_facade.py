"""The sync facade: threads, the exit drain, the loop-thread guard, context managers."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import LoggerClosedError, SessionLogger, WrongThreadError
from async_session_logger.sinks import MemorySink

from .conftest import read_lines


def test_eight_threads_ten_thousand_entries_each(tmp_path: Path) -> None:
    """8 threads x 10,000 entries -> exactly 80,000 log lines, seqs contiguous per session."""
    path = tmp_path / "threads.jsonl"
    with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
        barrier = threading.Barrier(8)

        def work(n: int) -> None:
            sid = f"thread-{n}"
            logger.start_session(sid, {"thread": n})
            barrier.wait()
            for i in range(10_000):
                logger.log_entry(sid, f"entry {i}", logging.INFO, {"i": i})
            logger.close_session(sid)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report = logger.save_logs()
    assert report.ok
    lines = read_lines(path)
    logs = [e for e in lines if e["event"] == "log"]
    assert len(logs) == 80_000
    assert len(lines) == 80_016
    seqs: dict[str, list[int]] = defaultdict(list)
    for entry in lines:
        seqs[entry["session_id"]].append(entry["seq"])
    assert len(seqs) == 8
    for sid, got in seqs.items():
        # Contiguous and, because seq and hand-off share one lock, in file order too.
        assert got == list(range(10_002)), sid
        messages = [e["custom_fields"]["i"] for e in logs if e["session_id"] == sid]
        assert messages == list(range(10_000))


def test_threads_sharing_one_session_get_ordered_seqs(tmp_path: Path) -> None:
    """Many threads logging into one session: seqs 1..N appear once each, in file order."""
    path = tmp_path / "shared.jsonl"
    with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
        logger.start_session("shared")

        def work(n: int) -> None:
            for i in range(2_000):
                logger.log_entry("shared", f"{n}:{i}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logger.close_session("shared")
    lines = read_lines(path)
    assert [e["seq"] for e in lines] == list(range(8_002))
    assert lines[-1]["entries"] == 8_000


def test_backpressure_with_a_tiny_queue_loses_nothing(tmp_path: Path) -> None:
    """With max_queue=10, producers wait instead of dropping: all entries arrive."""
    path = tmp_path / "tiny.jsonl"
    with SessionLogger(method="file", path=path, max_queue=10, dead_letter_path=None) as logger:
        logger.start_session("s")
        for i in range(5_000):
            logger.log_entry("s", str(i))
        logger.close_session("s")
    assert [e["seq"] for e in read_lines(path)] == list(range(5_002))


SCRIPT = """
import logging, sys
from async_session_logger import SessionLogger
logger = SessionLogger(method="file", path=sys.argv[1])
logger.start_session("forgetful", metadata={"script": True})
for i in range(50_000):
    logger.log_entry("forgetful", "entry %d" % i, logging.INFO, {"i": i})
{ending}
"""


@pytest.mark.parametrize(
    ("ending", "exit_code"),
    [("", 0), ("raise SystemExit(3)", 3), ("raise RuntimeError('crash at the end')", 1)],
    ids=["falls-off-the-end", "sys-exit", "uncaught-exception"],
)
def test_script_that_forgets_to_close_loses_nothing(
    tmp_path: Path, ending: str, exit_code: int
) -> None:
    """A script logging 50,000 entries and exiting without save_logs/close keeps them all."""
    path = tmp_path / "exit.jsonl"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("{ending}", ending))
    proc = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == exit_code, proc.stderr
    lines = read_lines(path)
    assert len(lines) == 50_002
    assert [e["seq"] for e in lines] == list(range(50_002))
    assert [e["custom_fields"]["i"] for e in lines[1:-1]] == list(range(50_000))
    close = lines[-1]
    assert (close["event"], close["status"], close["entries"]) == (
        "session_close",
        "interrupted",
        50_000,
    )


def test_start_errors_surface_in_the_caller(tmp_path: Path) -> None:
    """A sink that cannot open raises in the constructor's thread, and no thread is left."""
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(IsADirectoryError):
        SessionLogger(method="file", path=tmp_path)  # a directory, not a file
    after = {t.name for t in threading.enumerate() if t.is_alive()}
    assert "async_session_logger.loop" not in after - before


def test_blocking_verbs_from_the_loop_thread_raise(tmp_path: Path) -> None:
    """save_logs() called from the logger's own loop thread raises instead of deadlocking."""
    caught: list[BaseException] = []
    holder: dict[str, SessionLogger] = {}

    async def handler(message: str) -> None:
        try:
            holder["logger"].save_logs()
        except WrongThreadError as exc:
            caught.append(exc)

    logger = SessionLogger(
        method="custom", custom_handler=handler, dead_letter_path=tmp_path / "dead.jsonl"
    )
    holder["logger"] = logger
    logger.start_session("s")
    report = logger.save_logs()
    logger.close()
    assert report.ok
    assert caught and "deadlock" in str(caught[0])


def test_close_is_idempotent_and_context_manager_closes(tmp_path: Path) -> None:
    """close() twice returns the same report; `with` closes; verbs then raise."""
    memory = MemorySink()
    with SessionLogger(sinks=[memory], dead_letter_path=None) as logger:
        logger.start_session("s")
    first = logger.close()
    assert logger.close() is first
    assert memory.closed
    assert [e["status"] for e in memory.entries if e["event"] == "session_close"] == ["interrupted"]
    with pytest.raises(LoggerClosedError):
        logger.log_entry("s", "late")
    assert logger.save_logs() is first


def test_session_handle_sync(tmp_path: Path) -> None:
    """`with logger.session()` closes with closed, or error plus a traceback entry."""
    memory = MemorySink()
    with SessionLogger(sinks=[memory], dead_letter_path=None) as logger:
        with logger.session("ok", metadata={"k": 1}) as s:
            s.debug("d")
            s.info("i")
            s.warning("w", custom_fields={"x": 1})
            s.error("e")
            s.critical("c")
            s.log("INFO", "via log")
        with pytest.raises(ZeroDivisionError), logger.session("bad") as s:
            s.info("before")
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                s.exception("caught it")
                raise
    ok = memory.for_session("ok")
    assert ok[0]["metadata"] == {"k": 1}
    assert [e["level"] for e in ok[1:-1]] == [
        "DEBUG",
        "INFO",
        "WARNING",
        "ERROR",
        "CRITICAL",
        "INFO",
    ]
    assert ok[3]["custom_fields"] == {"x": 1}
    assert ok[-1]["status"] == "closed"
    bad = memory.for_session("bad")
    assert [e["message"] for e in bad[1:-1]] == [
        "before",
        "caught it",
        "Session failed: ZeroDivisionError: division by zero",
    ]
    assert "ZeroDivisionError" in bad[2]["exception"]
    assert "Traceback" in bad[3]["exception"]
    assert (bad[-1]["status"], bad[-1]["level"]) == ("error", "ERROR")


async def test_session_handle_async(tmp_path: Path) -> None:
    """`async with alog.session()` has the same semantics as the sync handle."""
    from async_session_logger import AsyncSessionLogger

    memory = MemorySink()
    async with AsyncSessionLogger(sinks=[memory], dead_letter_path=None) as alog:
        async with alog.session("ok") as s:
            await s.info("i", custom_fields={"a": 1})
        with pytest.raises(KeyError):
            async with alog.session("bad") as s:
                await s.warning("w")
                raise KeyError("missing")
    assert [e["event"] for e in memory.for_session("ok")] == [
        "session_start",
        "log",
        "session_close",
    ]
    bad = memory.for_session("bad")
    assert bad[-1]["status"] == "error"
    assert bad[-2]["message"] == "Session failed: KeyError: 'missing'"


async def test_async_logger_starts_lazily_and_rejects_use_after_close(tmp_path: Path) -> None:
    """The first verb starts an AsyncSessionLogger; after aclose() it cannot restart."""
    from async_session_logger import AsyncSessionLogger

    memory = MemorySink()
    alog = AsyncSessionLogger(sinks=[memory], dead_letter_path=None)
    assert alog.stats()["state"] == "new"
    await alog.start_session("lazy")
    await alog.close_session("lazy")
    report = await alog.aclose()
    assert report.ok and report["memory"].delivered == 2
    with pytest.raises(LoggerClosedError):
        await alog.start_session("again")
    with pytest.raises(LoggerClosedError):
        await alog.start()


def test_stats_and_health(tmp_path: Path) -> None:
    """stats() counts accepted and delivered entries per sink; health() is ok."""
    with SessionLogger(method="file", path=tmp_path / "s.jsonl", dead_letter_path=None) as logger:
        logger.start_session("s")
        logger.log_entry("s", "x")
        logger.save_logs()
        stats: dict[str, Any] = logger.stats()
        assert stats["accepted"] == 2
        assert stats["open_sessions"] == 1
        assert stats["sinks"]["file"]["delivered"] == 2
        assert stats["sinks"]["file"]["failed"] == 0
        assert logger.health() == {"ok": True, "sinks": {"file": True}}
        assert asyncio.iscoroutinefunction(SessionLogger.log_entry) is False


def test_session_closed_inside_its_block_is_not_closed_twice(tmp_path: Path) -> None:
    """Closing the session inside `with logger.session()` is fine; exit adds nothing."""
    memory = MemorySink()
    logger = SessionLogger(sinks=[memory], dead_letter_path=None)
    with pytest.raises(ValueError, match="original"), logger.session("s"):
        logger.close_session("s", status="error")
        raise ValueError("original")  # must not be masked by a SessionClosedError
    logger.close()
    assert [e["event"] for e in memory.entries] == ["session_start", "session_close"]
    assert memory.entries[-1]["status"] == "error"


def test_close_from_the_loop_thread_raises_and_keeps_the_logger_working(tmp_path: Path) -> None:
    """close() from an async handler raises WrongThreadError; the logger still closes later."""
    caught: list[BaseException] = []
    holder: dict[str, SessionLogger] = {}

    async def handler(message: str) -> None:
        try:
            holder["logger"].close()
        except WrongThreadError as exc:
            caught.append(exc)

    logger = SessionLogger(method="custom", custom_handler=handler, dead_letter_path=None)
    holder["logger"] = logger
    logger.start_session("s")
    assert logger.save_logs().ok
    assert caught
    logger.log_entry("s", "still accepted")
    report = logger.close()
    assert report["handler"].delivered == 3


async def test_cancelled_session_block_is_interrupted(tmp_path: Path) -> None:
    """A task cancelled inside `async with alog.session()` closes it as interrupted."""
    from async_session_logger import AsyncSessionLogger

    memory = MemorySink()
    async with AsyncSessionLogger(sinks=[memory], dead_letter_path=None) as alog:

        async def work() -> None:
            async with alog.session("s1"):
                await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await asyncio.sleep(0.05)
        assert alog.is_open("s1")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not alog.is_open("s1")
    assert [(e["event"], e["level"]) for e in memory.entries] == [
        ("session_start", "INFO"),
        ("session_close", "WARNING"),
    ]
    assert memory.entries[-1]["status"] == "interrupted"
