"""Custom handlers that raise or hang, formatters that raise: the file sink beside them is
complete, every failure is counted and dead-lettered, the application sees no exception."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import AsyncSessionLogger, SessionLogger, SinkError, read_dead_letters
from async_session_logger.sinks import CustomSink, FileSink, MemorySink

from ..conftest import read_lines
from .conftest import assert_report_accounted, wait_until

N = 10_000


def _raise_plain(message: str) -> None:
    raise ConnectionError("handler backend is down")


async def _raise_async(message: str) -> None:
    raise ConnectionError("handler backend is down")


@pytest.mark.parametrize("handler", [_raise_plain, _raise_async], ids=["plain", "async"])
def test_always_raising_handler_beside_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], handler: Callable[[str], Any]
) -> None:
    """A handler raising on each of 10,000 entries: all dead-lettered and counted, reported
    once, nothing on stderr or in the app; the file sink has every entry."""
    path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    errors: list[SinkError] = []
    logger = SessionLogger(
        sinks=[FileSink(path), CustomSink(handler, name="hook", retries=2)],
        dead_letter_path=dead,
        on_error=errors.append,
    )
    logger.start_session("r")
    for i in range(N):
        logger.log_entry("r", f"m{i}")
    logger.close_session("r")
    final = logger.close()

    accepted = N + 2
    assert_report_accounted(final, dead)
    assert final["file"].delivered == accepted and final["file"].failed == 0
    hook = final["hook"]
    assert (hook.delivered, hook.dead_lettered, hook.lost) == (0, accepted, 0)
    assert hook.retried == 2 * accepted and hook.last_error == (
        "ConnectionError: handler backend is down"
    )
    assert [e["seq"] for e in read_lines(path)] == list(range(accepted))
    letters = list(read_dead_letters(dead))
    assert sorted(d["entry"]["seq"] for d in letters) == list(range(accepted))
    assert {d["reason"] for d in letters} == {"ConnectionError: handler backend is down"}
    texts = [str(e) for e in errors]
    assert len(texts) == 2, texts  # one incident, one summary at close: not 10,002
    assert "sink 'hook' failed" in texts[0] and isinstance(errors[0].__cause__, ConnectionError)
    assert f"closed with {accepted} entries dead-lettered" in texts[1]
    assert capfd.readouterr().err == ""


def test_hanging_async_handler_times_out_without_delaying_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An async handler that never returns: each call times out, the entries are dead-lettered
    and counted; the file sink is complete at once; close() keeps its budget."""
    path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    entered = threading.Event()

    async def hang(message: str) -> None:
        entered.set()
        await asyncio.Event().wait()

    errors: list[SinkError] = []
    logger = SessionLogger(
        sinks=[FileSink(path), CustomSink(hang, name="hang", timeout=0.2, retries=1)],
        dead_letter_path=dead,
        on_error=errors.append,
        close_timeout=3,
    )
    logger.start_session("h")
    assert entered.wait(5)
    for i in range(N):
        logger.log_entry("h", f"m{i}")
    logger.close_session("h")
    took = wait_until(lambda: logger.stats()["sinks"]["file"]["delivered"] == N + 2, 10)
    assert took < 5, f"the file sink waited {took:.1f} s behind the hung handler"
    assert logger.stats()["sinks"]["hang"]["pending"] > 0  # still behind, and said so
    started = time.monotonic()
    final = logger.close()
    assert time.monotonic() - started < 3 + 1

    assert_report_accounted(final, dead)
    assert final["file"].delivered == N + 2
    hang_stats = final["hang"]
    assert hang_stats.delivered == 0 and hang_stats.dead_lettered == N + 2
    assert "TimeoutError" in (hang_stats.last_error or "")
    reasons = {d["reason"] for d in read_dead_letters(dead)}
    assert reasons <= {
        "TimeoutError: write_batch took longer than 0.2 s",
        "logger closed after 3 s before delivery",
    }
    assert 1 <= len(errors) <= 3, [str(e) for e in errors]
    assert capfd.readouterr().err == ""


async def test_handler_failing_on_some_entries_async_face(tmp_path: Path) -> None:
    """Through AsyncSessionLogger: a handler failing on every 7th entry; the failures are
    dead-lettered exactly, the rest delivered once each, the file complete."""
    path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    seen: list[int] = []

    async def picky(message: str) -> None:
        seq = json.loads(message)["seq"]
        if seq % 7 == 3:
            raise ValueError(f"refusing {seq}")
        seen.append(seq)

    errors: list[SinkError] = []
    async with AsyncSessionLogger(
        sinks=[FileSink(path), CustomSink(picky, name="picky", retries=1)],
        dead_letter_path=dead,
        on_error=errors.append,
    ) as alog:
        await alog.start_session("p")
        for i in range(2000):
            await alog.log_entry("p", f"m{i}")
        await alog.close_session("p")
    final = await alog.aclose()

    accepted = 2002
    refused = [s for s in range(accepted) if s % 7 == 3]
    assert_report_accounted(final, dead)
    assert final["picky"].dead_lettered == len(refused)
    assert sorted(seen) == [s for s in range(accepted) if s % 7 != 3]  # each exactly once
    assert sorted(d["entry"]["seq"] for d in read_dead_letters(dead)) == refused
    assert final["file"].delivered == accepted == len(read_lines(path))
    # Reported per incident: far fewer reports than the 286 failed entries.
    assert len(errors) < 50, len(errors)


class _Unencodable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _flaky_formatter(entry: dict[str, Any]) -> dict[str, Any]:
    seq = entry["seq"]
    if seq % 5 == 1:
        raise KeyError("formatter bug")
    if seq % 5 == 2:
        return {**entry, "odd": {1: _Unencodable(), "set": {3, 1, 2}}}
    if seq % 5 == 3:
        return ["not", "a", "dict"]  # type: ignore[return-value]
    return {**entry, "formatted": True}


def test_raising_formatter_beside_two_sinks(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A formatter that raises, returns a non-dict or unencodable values: every entry still
    reaches both sinks as a valid line, marked; the report is ok; no error is reported."""
    path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    memory = MemorySink()
    errors: list[SinkError] = []
    with SessionLogger(
        sinks=[FileSink(path), memory],
        custom_formatter=_flaky_formatter,
        dead_letter_path=dead,
        on_error=errors.append,
    ) as logger:
        logger.start_session("f")
        for i in range(1000):
            logger.log_entry("f", f"m{i}")
        logger.close_session("f")
        report = logger.save_logs()
    assert report.ok and errors == [] and not dead.exists()
    assert_report_accounted(report)
    lines = read_lines(path)
    assert lines == [json.loads(line) for line in memory.lines]
    assert [e["seq"] for e in lines] == list(range(1002))
    for entry in lines:
        kind = entry["seq"] % 5
        if kind == 1:
            assert entry["formatter_error"] == "KeyError: 'formatter bug'"
        elif kind == 2:
            assert entry["odd"] == {"1": "<unrepresentable _Unencodable>", "set": [1, 2, 3]}
        elif kind == 3:
            assert entry["formatter_error"] == "formatter returned list, expected dict"
        else:
            assert entry["formatted"] is True
    assert capfd.readouterr().err == ""
