"""CustomSink: the seed's custom_handler, plain and async, isolated from the other sinks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from async_session_logger import AsyncSessionLogger, SessionLogger, SinkError, read_dead_letters
from async_session_logger.sinks import CustomSink, FileSink

from ..conftest import read_lines


def _wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> float:
    """Poll a file until it holds ``count`` lines; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {count} lines in {timeout} s")


def test_plain_handler_gets_each_json_line(tmp_path: Path) -> None:
    """A plain handler is called once per entry, in order, with the entry's JSON as str."""
    received: list[str] = []
    threads: set[str] = set()

    def handler(message: str) -> None:
        threads.add(threading.current_thread().name)
        received.append(message)

    with SessionLogger(method="custom", custom_handler=handler, dead_letter_path=None) as logger:
        logger.start_session("c")
        for i in range(300):
            logger.log_entry("c", f"m{i}")
        logger.close_session("c")
        report = logger.save_logs()
    assert report.ok and report["handler"].delivered == 302
    assert all(isinstance(m, str) for m in received)
    assert [json.loads(m)["seq"] for m in received] == list(range(302))
    # Plain handlers run off the event loop, on the sink's own thread.
    assert threads == {"async_session_logger.custom[handler]"}


async def test_async_handler_is_awaited_in_order(tmp_path: Path) -> None:
    """An async handler is awaited per entry, in order."""
    received: list[dict[str, object]] = []

    async def handler(message: str) -> None:
        received.append(json.loads(message))

    async with AsyncSessionLogger(
        method="custom", custom_handler=handler, dead_letter_path=None
    ) as alog:
        await alog.start_session("a")
        await alog.log_entry("a", "hello")
        await alog.close_session("a")
        await alog.save_logs()
    assert [(e["seq"], e["event"]) for e in received] == [
        (0, "session_start"),
        (1, "log"),
        (2, "session_close"),
    ]


def test_raising_handler_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    """A handler failing on some entries: they are retried, then dead-lettered; others pass."""
    path = tmp_path / "log.jsonl"
    dead = tmp_path / "dead.jsonl"
    errors: list[SinkError] = []
    calls: dict[str, int] = {}
    delivered: list[str] = []

    def handler(message: str) -> None:
        entry = json.loads(message)
        text = entry["message"]
        calls[text] = calls.get(text, 0) + 1
        if text.startswith("poison"):
            raise ValueError(f"cannot handle {text}")
        delivered.append(text)

    logger = SessionLogger(
        method=["file", "custom"],
        path=path,
        custom_handler=handler,
        dead_letter_path=dead,
        on_error=errors.append,
    )
    logger.start_session("s")
    for i in range(50):
        logger.log_entry("s", f"poison {i}" if i % 10 == 0 else f"fine {i}")
    logger.close_session("s")
    report = logger.save_logs()
    logger.close()
    assert report["file"].delivered == 52
    assert report["handler"].delivered == 47
    assert report["handler"].dead_lettered == 5
    assert report["handler"].retried == 15  # 5 entries x 3 retries
    assert not report.ok
    assert calls["poison 0"] == 4 and calls["fine 1"] == 1  # no duplicates of good entries
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["message"] for d in letters] == [f"poison {i}" for i in range(0, 50, 10)]
    assert {d["sink"] for d in letters} == {"handler"}
    assert letters[0]["reason"] == "ValueError: cannot handle poison 0"
    assert len(read_lines(path)) == 52
    # One report per incident, not per entry: the first failure of each failing batch episode.
    assert 1 <= len([e for e in errors if "failed" in str(e)]) <= 5
    assert all(e.sink_name == "handler" for e in errors)


def test_hanging_handler_does_not_stop_or_slow_the_file_sink(tmp_path: Path) -> None:
    """A handler that hangs: the file sink still writes everything promptly."""
    path = tmp_path / "log.jsonl"
    release = threading.Event()
    entered = threading.Event()

    def handler(message: str) -> None:
        entered.set()
        release.wait(30)

    logger = SessionLogger(
        sinks=[FileSink(path), CustomSink(handler, timeout=0.5, retries=1)],
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=lambda e: None,
        close_timeout=3,
    )
    logger.start_session("s")
    assert entered.wait(5)
    started = time.monotonic()
    for i in range(20_000):
        logger.log_entry("s", f"m{i}")
    logger.close_session("s")
    took = _wait_for_lines(path, 20_002)
    assert took < 5, f"file sink took {took:.1f} s behind a hung handler"
    report = logger.close()
    release.set()
    assert time.monotonic() - started < 15
    assert report["file"].delivered == 20_002
    stats = report["handler"]
    assert stats.delivered + stats.dead_lettered + stats.lost == 20_002
    assert stats.dead_lettered >= 20_000 and stats.lost == 0
    dead_entries = list(read_dead_letters(tmp_path / "dead.jsonl"))
    assert len(dead_entries) == stats.dead_lettered


def test_handlers_raising_systemexit_do_not_kill_the_logger(tmp_path: Path) -> None:
    """A plain or async handler raising SystemExit / KeyboardInterrupt fails like any other:
    its entries are dead-lettered, the file sink and the logger keep working."""

    def plain(message: str) -> None:
        raise SystemExit(3)

    async def coro(message: str) -> None:
        raise KeyboardInterrupt

    dead = tmp_path / "dead.jsonl"
    errors: list[SinkError] = []
    sinks = [
        FileSink(tmp_path / "log.jsonl"),
        CustomSink(plain, name="plain", retries=0),
        CustomSink(coro, name="coro", retries=0),
    ]
    with SessionLogger(sinks=sinks, dead_letter_path=dead, on_error=errors.append) as logger:
        logger.start_session("s")
        for i in range(100):
            logger.log_entry("s", f"m{i}")
        first = logger.save_logs()
        logger.log_entry("s", "after")  # the loop thread is still alive
        logger.close_session("s")
        report = logger.save_logs()
    assert first["file"].delivered == 101
    assert report["file"].delivered == 103
    assert report["plain"].dead_lettered == report["coro"].dead_lettered == 103
    assert len(read_lines(tmp_path / "log.jsonl")) == 103
    reasons = {(d["sink"], d["reason"].split(":")[0]) for d in read_dead_letters(dead)}
    assert reasons == {("plain", "SystemExit"), ("coro", "KeyboardInterrupt")}
