"""The engine under both faces: loops, handlers, bounds and drains (issue 10, items 1, 6-8,
10-13). Real files and real handlers; child processes where a hang must not reach pytest."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    SessionLogger,
    WrongLoopError,
    WrongThreadError,
    read_dead_letters,
)
from async_session_logger.sinks import Batch, PartialWriteError, Sink

from .faults.conftest import assert_report_accounted, parse_file


def _lines(path: Path) -> list[dict[str, Any]]:
    entries, bad = parse_file(path)
    assert bad == 0
    return entries


def test_a_second_live_loop_gets_a_clear_error(tmp_path: Path) -> None:
    """A logger running on a loop in another thread, used from a second running loop:
    WrongLoopError at the call site, and the first loop's logging goes on unharmed."""
    alog = AsyncSessionLogger(method="file", path=tmp_path / "log.jsonl")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(alog.start_session("a"), loop).result(10)

        async def other() -> None:
            with pytest.raises(WrongLoopError, match="another event loop"):
                await alog.log_entry("a", "from the wrong loop")
            with pytest.raises(WrongLoopError):
                await alog.save_logs()

        asyncio.run(other())
        report = asyncio.run_coroutine_threadsafe(alog.aclose(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert report.ok and report.accepted == 2
    assert [e["event"] for e in _lines(tmp_path / "log.jsonl")] == [
        "session_start",
        "session_close",
    ]


async def test_concurrent_first_verbs_wait_for_the_start(tmp_path: Path) -> None:
    """Many verbs at once on a logger not started yet (no lifespan hook): the first starts it,
    the others wait for that start instead of failing."""
    alog = AsyncSessionLogger(method="file", path=tmp_path / "log.jsonl")
    await asyncio.gather(*(alog.start_session(f"s{i}") for i in range(20)))
    await asyncio.gather(*(alog.log_entry(f"s{i}", "hi") for i in range(20)))
    report = await alog.aclose()
    assert report.ok and report.accepted == 60
    assert len(_lines(tmp_path / "log.jsonl")) == 60


async def test_handle_verbs_called_without_await_are_not_lost(tmp_path: Path) -> None:
    """A plain function calling a handle's verb without await (on the loop's thread, or in a
    worker thread like a FastAPI `def` route): the entry is queued at call time."""
    alog = AsyncSessionLogger(method="file", path=tmp_path / "log.jsonl")

    def plain_route(s: Any, text: str) -> None:
        s.info(text)  # no await: a sync function cannot
        alog.log_entry(s.session_id, text + " via the logger")

    async with alog, alog.session("req") as s:
        plain_route(s, "on the loop")
        await asyncio.to_thread(plain_route, s, "in a thread")
    messages = [e["message"] for e in _lines(tmp_path / "log.jsonl") if e["event"] == "log"]
    assert sorted(messages) == sorted(
        ["on the loop", "on the loop via the logger", "in a thread", "in a thread via the logger"]
    )


class _Slow(Sink):
    """Delivers steadily but slowly: ``per_entry`` seconds for each entry of a call (the lane
    may merge batches, so the cost is per entry, not per call)."""

    def __init__(self, per_entry: float, **options: Any) -> None:
        super().__init__(**options)
        self.per_entry = per_entry
        self.got: list[dict[str, Any]] = []

    async def write_batch(self, batch: Batch) -> None:
        await asyncio.sleep(self.per_entry * len(batch))
        self.got.extend(batch)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_close_waits_for_a_sink_that_keeps_delivering(tmp_path: Path, face: str) -> None:
    """A healthy sink slower than close_timeout needs: close() waits while it progresses
    (about 2.5 s here with close_timeout=1), and nothing is dead-lettered."""
    sink = _Slow(0.001, name="slow", max_batch=20)
    options: dict[str, Any] = {
        "sinks": [sink],
        "close_timeout": 1.0,
        "dead_letter_path": tmp_path / "dead.jsonl",
    }

    def log(verb: Any) -> None:
        for i in range(2500):
            verb("s", f"m{i}")

    if face == "sync":
        logger = SessionLogger(**options)
        logger.start_session("s")
        log(logger.log_entry)
        report = logger.close()
    else:

        async def main() -> Any:
            async with AsyncSessionLogger(**options) as alog:
                await alog.start_session("s")
                log(alog.log_entry)
            return await alog.aclose()

        report = asyncio.run(main())
    assert report.ok, report
    assert len(sink.got) == 2502
    assert not (tmp_path / "dead.jsonl").exists()


def test_close_still_gives_up_on_a_stuck_sink(tmp_path: Path) -> None:
    """A sink that makes no progress at all is given up after close_timeout, not waited for."""

    class Stuck(Sink):
        async def write_batch(self, batch: Batch) -> None:
            await asyncio.sleep(3600)

    logger = SessionLogger(
        sinks=[Stuck(name="stuck", timeout=None)],
        close_timeout=1.0,
        dead_letter_path=tmp_path / "dead.jsonl",
    )
    logger.start_session("s")
    logger.log_entry("s", "x")
    started = time.monotonic()
    report = logger.close()
    assert time.monotonic() - started < 1.0 + 1.5
    assert report["stuck"].dead_lettered == 3 and not report.ok
    assert_report_accounted(report, tmp_path / "dead.jsonl")


class _HalfThenStuck(Sink):
    """Takes the first half of its first batch (a partial write), then hangs on the retry."""

    def __init__(self) -> None:
        super().__init__(name="half", timeout=None, retries=3)
        self.taken: list[int] = []  # the seqs written
        self.calls = 0
        self.retrying: asyncio.Event | None = None  # set when the retry begins (and hangs)

    async def write_batch(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls > 1:
            if self.retrying is not None:
                self.retrying.set()
            await asyncio.Event().wait()
        half = len(batch) // 2
        self.taken.extend(entry["seq"] for entry in list(batch)[:half])
        raise PartialWriteError(range(half, len(batch)), OSError("the reader went away"))


def test_close_dead_letters_only_what_a_partial_write_left(tmp_path: Path) -> None:
    """A batch half written (``PartialWriteError``) whose retry hangs until close gives up:
    only the unwritten half is dead-lettered, and each entry is counted once. Before, the
    whole batch was: the written half counted delivered and dead-lettered both, and
    replaying the dead letters wrote it twice (seen with a FIFO whose reader closed)."""
    sink = _HalfThenStuck()
    dead = tmp_path / "dead.jsonl"
    logger = SessionLogger(sinks=[sink], close_timeout=1.0, dead_letter_path=dead)
    logger.start_session("s")
    for i in range(9):
        logger.log_entry("s", f"m{i}")
    logger.close_session("s")
    report = logger.close()
    assert sink.taken == [0, 1, 2, 3, 4]  # start, m0..m3 of the one batch of 11
    assert report["half"].delivered == 5 and report["half"].dead_lettered == 6
    assert sorted(d["entry"]["seq"] for d in read_dead_letters(dead)) == list(range(5, 11))
    assert_report_accounted(report, dead)
    assert report["half"].pending == 0


def test_a_new_loop_delivers_only_what_a_partial_write_left(tmp_path: Path) -> None:
    """The loop stops while a half-written batch waits for its retry: the next loop's lane
    delivers the unwritten half alone, not the whole batch again (duplicates before)."""

    class HalfThenFine(_HalfThenStuck):
        async def write_batch(self, batch: Batch) -> None:
            if self.calls >= 2:  # on the second loop: everything goes through
                self.calls += 1
                self.taken.extend(entry["seq"] for entry in batch)
                return
            await super().write_batch(batch)

    sink = HalfThenFine()
    alog = AsyncSessionLogger(sinks=[sink], dead_letter_path=None, linger=0)

    async def first() -> None:
        sink.retrying = asyncio.Event()
        await alog.start_session("s")
        for i in range(9):
            await alog.log_entry("s", f"m{i}")
        await alog.close_session("s")
        await sink.retrying.wait()  # written in part, and the retry hangs

    async def second() -> Any:
        return await alog.aclose()

    asyncio.run(first())  # the loop ends under the hung retry
    report = asyncio.run(second())
    assert sorted(sink.taken) == list(range(11)), sink.taken  # each entry once
    assert report.ok, report
    assert report["half"].delivered == 11 and report["half"].pending == 0


@pytest.mark.parametrize("face", ["sync", "async"])
def test_an_async_handler_raising_cancelled_error_is_a_failure_not_a_dead_lane(
    tmp_path: Path, face: str
) -> None:
    """An async handler that raises CancelledError on some entries: those are retried and
    dead-lettered; the lane lives on, save_logs() returns, and the report adds up."""

    async def handler(message: str) -> None:
        if '"message":"bad' in message:
            raise asyncio.CancelledError

    options: dict[str, Any] = {
        "method": "custom",
        "custom_handler": handler,
        "custom": {"retries": 1},
        "dead_letter_path": tmp_path / "dead.jsonl",
    }

    def log(verb: Any) -> None:
        for i in range(200):
            verb("s", f"bad {i}" if i % 20 == 0 else f"good {i}")

    if face == "sync":
        logger = SessionLogger(**options)
        logger.start_session("s")
        log(logger.log_entry)
        logger.close_session("s")
        flushed = logger.save_logs()
        report = logger.close()
    else:

        async def main() -> Any:
            alog = AsyncSessionLogger(**options)
            await alog.start_session("s")
            log(alog.log_entry)
            await alog.close_session("s")
            flushed = await alog.save_logs()
            return flushed, await alog.aclose()

        flushed, report = asyncio.run(main())
    assert flushed["handler"].pending == 0
    assert report["handler"].dead_lettered == 10 and report["handler"].delivered == 192
    assert_report_accounted(report, tmp_path / "dead.jsonl")


def test_save_logs_from_a_plain_handler_raises_at_once(tmp_path: Path) -> None:
    """A plain custom handler calling save_logs() or close() on its own logger gets
    WrongThreadError at once (it would wait for itself), not a 40 s stall."""
    caught: list[BaseException] = []
    holder: dict[str, SessionLogger] = {}

    def handler(message: str) -> None:
        for verb in (holder["logger"].save_logs, holder["logger"].close):
            try:
                verb()
            except WrongThreadError as exc:
                caught.append(exc)

    logger = holder["logger"] = SessionLogger(
        method="custom", custom_handler=handler, dead_letter_path=tmp_path / "dead.jsonl"
    )
    started = time.monotonic()
    logger.start_session("s")
    report = logger.save_logs()
    logger.close()
    assert time.monotonic() - started < 5
    assert report.ok and len(caught) == 4  # for the start entry, then the close entry
    assert not (tmp_path / "dead.jsonl").exists()


HUNG_DEAD_LETTERS = """
import asyncio, os, time
from async_session_logger import SessionLogger
from async_session_logger.sinks import Batch, Sink

class Failing(Sink):
    async def write_batch(self, batch):
        raise OSError("down")

os.mkfifo("dead.jsonl")  # opening it for writing blocks forever: a hung mount, for real
logger = SessionLogger(sinks=[Failing(name="failing", retries=0)], close_timeout=3,
                       dead_letter_path="dead.jsonl", on_error=lambda e: print(e, flush=True))
logger.start_session("s")
logger.log_entry("s", "x")
started = time.monotonic()
report = logger.close()
took = time.monotonic() - started
s = report["failing"]
print("RESULT", report.ok, report.accepted, s.delivered, s.dead_lettered, s.lost, s.pending,
      round(took, 1), flush=True)
os._exit(0)
"""


def test_a_hung_dead_letter_write_keeps_close_in_budget(tmp_path: Path) -> None:
    """A dead-letter write that blocks (a FIFO no one reads, like a hung network mount):
    close() keeps its budget, and its report adds up and says not ok."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(HUNG_DEAD_LETTERS))
    run = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    result = next(line for line in run.stdout.splitlines() if line.startswith("RESULT"))
    _, ok, accepted, delivered, dead, lost, pending, took = result.split()
    assert ok == "False" and accepted == "3"  # start, log, and the close entry of close()
    assert int(delivered) + int(dead) + int(lost) + int(pending) == 3
    assert int(lost) + int(pending) == 3
    assert float(took) < 3 + 2.5
    assert "Not delivered:" in run.stdout or "could not keep them" in run.stdout


def test_reports_add_up_after_an_overflow_dead_letter_storm(tmp_path: Path) -> None:
    """A guard for the lane's new accounting (shed entries stay pending until their letter is
    written): after an overflow storm the final report and the dead-letter file agree."""

    class Slow(Sink):
        async def write_batch(self, batch: Batch) -> None:
            await asyncio.sleep(0.01)

    logger = SessionLogger(
        sinks=[Slow(name="slow", max_pending=50, overflow="dead_letter", max_batch=10)],
        dead_letter_path=tmp_path / "dead.jsonl",
    )
    logger.start_session("s")
    for i in range(2000):
        logger.log_entry("s", f"m{i}", logging.INFO)
    logger.close_session("s")
    report = logger.close()
    assert report["slow"].dead_lettered > 0
    assert_report_accounted(report, tmp_path / "dead.jsonl")
    letters = list(read_dead_letters(tmp_path / "dead.jsonl"))
    assert len(letters) == report["slow"].dead_lettered
    assert os.path.getsize(tmp_path / "dead.jsonl") > 0


def test_a_link_planted_at_the_dead_letter_file_is_not_written_through(tmp_path: Path) -> None:
    """A symlink at the dead-letter path: nothing reaches its target; the entries are counted
    lost and reported (the report says not ok)."""

    class Failing(Sink):
        async def write_batch(self, batch: Batch) -> None:
            raise OSError("down")

    target = tmp_path / "victim"
    target.write_text("precious\n")
    (tmp_path / "dead.jsonl").symlink_to(target)
    errors: list[Exception] = []
    logger = SessionLogger(
        sinks=[Failing(name="failing", retries=0)],
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=errors.append,
    )
    logger.start_session("s")
    report = logger.close()
    assert target.read_text() == "precious\n"
    assert report["failing"].lost == 2 and not report.ok
    assert any("could not keep them" in str(e) for e in errors)


async def test_verbs_awaitables_work_with_create_task_and_warn_nothing_unawaited(
    tmp_path: Path,
) -> None:
    """What a verb returns is a coroutine to asyncio (create_task, gather take it); left
    unawaited it warns nothing, and its entry is written all the same."""
    import warnings

    alog = AsyncSessionLogger(method="file", path=tmp_path / "log.jsonl")
    async with alog:
        await asyncio.create_task(alog.start_session("s"))  # first use: starts the logger
        await asyncio.create_task(alog.log_entry("s", "task"))
        await asyncio.gather(alog.log_entry("s", "gathered"), alog.log_entry("s", "too"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            alog.log_entry("s", "dropped unawaited")
        await alog.close_session("s")
    messages = [e["message"] for e in _lines(tmp_path / "log.jsonl") if e["event"] == "log"]
    assert messages == ["task", "gathered", "too", "dropped unawaited"]


class _Scripted(Sink):
    """A sink whose write_batch does what the test says for each batch, timing each write."""

    def __init__(self, plan: Any, **options: Any) -> None:
        super().__init__(name="scripted", **options)
        self.plan = plan
        self.writes: list[tuple[float, float, str]] = []  # (started, ended, outcome)

    async def write_batch(self, batch: Batch) -> None:
        started = time.monotonic()
        outcome = "ok"
        try:
            await self.plan(len(self.writes), batch)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.writes.append((started, time.monotonic(), outcome))


async def test_a_slow_write_times_out_at_its_own_deadline_after_many_fast_ones(
    tmp_path: Path,
) -> None:
    """The delivery timeout is one watchdog timer per lane, not a timer per batch: after a
    stream of quick writes, a hung one still gets its whole ``timeout`` (not what was left of
    an earlier write's), then fails with TimeoutError, is retried and dead-lettered."""

    async def plan(index: int, batch: Batch) -> None:
        if b'"message":"m30"' in batch.data:
            await asyncio.Event().wait()  # hangs, and so does its retry
        await asyncio.sleep(0.01)  # the others are quick, each one suspending

    sink = _Scripted(plan, timeout=0.3, retries=1)
    dead = tmp_path / "dead.jsonl"
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=dead, linger=0) as alog:
        await alog.start_session("s")
        for i in range(40):
            await alog.log_entry("s", f"m{i}")
            await asyncio.sleep(0.012)  # a write every ~12 ms: the lane keeps delivering
        report = await alog.save_logs(timeout=10)
    timed_out = [w for w in sink.writes if w[2] != "ok"]
    assert len(timed_out) == 2  # the hung write and its one retry
    assert all(outcome == "CancelledError" for _s, _e, outcome in timed_out)
    before = [w for w in sink.writes if w[1] <= timed_out[0][0]]
    # The watchdog was armed by an earlier write, more than a timeout before this one began.
    assert len(before) >= 5 and timed_out[0][0] - before[0][0] > 0.3
    for started, ended, _outcome in timed_out:
        assert 0.29 <= ended - started < 2.0, ended - started
    assert sink.writes[-1][2] == "ok"  # the lane went on after them
    assert "TimeoutError: write_batch took longer than 0.3 s" in (
        report["scripted"].last_error or ""
    )
    reasons = {d["reason"] for d in read_dead_letters(dead)}
    assert reasons == {"TimeoutError: write_batch took longer than 0.3 s"}


async def test_a_sink_that_swallows_the_timeout_leaves_the_lane_sound(tmp_path: Path) -> None:
    """A write that catches the watchdog's cancellation and returns counts as delivered; the
    lane task is not left marked as being cancelled: later writes, save_logs() and close
    work, and a real cancellation at close still ends the lane."""
    swallowed = 0

    async def plan(index: int, batch: Batch) -> None:
        nonlocal swallowed
        if index == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed += 1  # and returns normally
        else:
            await asyncio.sleep(0)

    sink = _Scripted(plan, timeout=0.2, retries=0)
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None, linger=0) as alog:
        await alog.start_session("s")
        for i in range(6):
            await alog.log_entry("s", f"m{i}")
            await asyncio.sleep(0.05)
        flushed = await alog.save_logs(timeout=10)
        tasks = [t for t in asyncio.all_tasks() if "lane[scripted]" in t.get_name()]
        assert len(tasks) == 1 and tasks[0].cancelling() == 0
    assert swallowed == 1
    assert flushed["scripted"].pending == 0 and flushed["scripted"].dead_lettered == 0
    assert [outcome for _s, _e, outcome in sink.writes].count("ok") == len(sink.writes)


async def test_deliveries_schedule_no_timer_per_batch(tmp_path: Path) -> None:
    """Hundreds of batches arm the lanes' delivery timeout a handful of times, not once per
    batch (asyncio.timeout() per batch cost ~33,000 instructions and left a cancelled timer
    in the loop's heap each time); the logger's close cancels the one left."""
    loop = asyncio.get_running_loop()
    armed: list[str] = []
    watchdogs: list[asyncio.TimerHandle] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        armed.append(getattr(callback, "__qualname__", repr(callback)))
        handle = call_at(when, callback, *args, **kwargs)
        if armed[-1].endswith("._watch"):
            watchdogs.append(handle)
        return handle

    path = tmp_path / "log.jsonl"
    async with AsyncSessionLogger(path=str(path), dead_letter_path=None, linger=0) as alog:
        await alog.start_session("s")
        loop.call_at = counting  # type: ignore[method-assign]
        try:
            for i in range(300):
                await alog.log_entry("s", f"m{i}")
                await asyncio.sleep(0)  # the writer and the file lane get a turn: a batch each
            await alog.save_logs()
        finally:
            del loop.call_at  # type: ignore[method-assign]
    assert len(_lines(path)) == 302  # the start, 300 entries, the close at aclose()
    assert 1 <= len(watchdogs) <= 2, armed
    assert len(armed) < 30, armed
    assert all(handle.cancelled() for handle in watchdogs)  # none outlives the closed logger


class _Sizes(Sink):
    """Records the size of each batch; ``max_batch=1``: the lane hands over each writer
    batch as it is (it merges waiting batches only up to ``max_batch`` entries)."""

    def __init__(self) -> None:
        super().__init__(name="sizes", max_batch=1)
        self.sizes: list[int] = []

    async def write_batch(self, batch: Batch) -> None:
        self.sizes.append(len(batch))


async def test_the_writer_on_the_applications_loop_takes_short_turns_while_there_is_room() -> None:
    """AsyncSessionLogger's writer runs on the application's loop: 1,000 entries queued in
    one go (a queue of 2,000: room left) are written in turns of at most 256 entries (~0.4 ms
    of encoding each), so the loop's other tasks run between them; one turn of 1,000 held
    the loop for 1.3-2.5 ms (benchmarks/throughput.py's loop lag). A full queue, whose
    callers wait for it, is still taken ``batch_size`` at a time."""
    sink = _Sizes()
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None, linger=0) as alog:
        await alog.start_session("s")
        await alog.save_logs()
        for i in range(1_000):
            await alog.log_entry("s", f"m{i}")  # room: nothing waits, nothing yields
        await alog.save_logs()
        room = sink.sizes[1:]
        assert sum(room) == 1_000 and max(room) == 256, room
    sink = _Sizes()
    async with AsyncSessionLogger(
        sinks=[sink], dead_letter_path=None, linger=0, max_queue=600
    ) as alog:
        await alog.start_session("s")
        await alog.save_logs()
        for i in range(1_000):
            await alog.log_entry("s", f"m{i}")  # waits at 600 queued
        await alog.save_logs()
        full = sink.sizes[1:]
        assert sum(full) == 1_000 and max(full) == 600, full
