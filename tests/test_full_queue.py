"""Async producers at a full queue (issue 15): the entry is queued at call time, then the caller
waits for room on a future of its own, woken first come first served as the writer frees slots.

Real files and sinks; a sink held shut by a gate keeps the queue full for as long as a test
needs it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    ConfigurationError,
    SessionLogger,
    read_entries,
)
from async_session_logger._intake import Intake
from async_session_logger._writer import Flush
from async_session_logger.sinks import Batch, FileSink, Sink

MAX_QUEUE = 20


class Gate(Sink):
    """Accepts nothing until ``gate`` is set; then takes everything (a ``block`` sink, so a
    shut gate holds the writer back and the logger's queue fills)."""

    default_name = "gate"

    def __init__(self, **options: Any) -> None:
        super().__init__(overflow="block", **options)
        self.gate = threading.Event()
        self.got: list[dict[str, Any]] = []

    async def write_batch(self, batch: Batch) -> None:
        while not self.gate.is_set():  # noqa: ASYNC110 - a threading.Event, set from anywhere
            await asyncio.sleep(0.002)
        self.got.extend(batch)


async def _fill(alog: AsyncSessionLogger, sid: str) -> int:
    """Log into ``sid`` until the queue stays full (the shut gate holds the writer back);
    return how many entries were logged.

    The call that filled it returned a wait nobody awaits: it never took a place in the line
    of waiters (``stats()["waiting"]`` does not count it)."""
    n = 0
    for _ in range(500):
        while alog.stats()["queued"] < MAX_QUEUE:
            alog.log_entry(sid, f"fill {n}")  # queued at call time; nothing to wait for yet
            n += 1
        await asyncio.sleep(0.01)  # the writer takes what the gate's lane still has room for
        if alog.stats()["queued"] >= MAX_QUEUE:
            return n
    raise AssertionError("the queue never filled")


async def _full_logger(tmp_path: Path, **options: Any) -> tuple[AsyncSessionLogger, Gate]:
    gate = Gate(max_pending=5, max_batch=5)
    alog = AsyncSessionLogger(
        sinks=[gate, FileSink(tmp_path / "log.jsonl")],
        max_queue=MAX_QUEUE,
        batch_size=5,
        dead_letter_path=tmp_path / "dead.jsonl",
        **options,
    )
    await alog.start()
    await alog.start_session("s")
    return alog, gate


async def test_a_cancelled_wait_for_room_loses_nothing(tmp_path: Path) -> None:
    """A task cancelled (a request's timeout) while it waits for room gets CancelledError at
    once, and the entry of the call it was waiting in is delivered all the same: it was queued
    when the call was made. (Before, the call's entry was held by the waiter and never queued.)"""
    alog, gate = await _full_logger(tmp_path)
    filled = await _fill(alog, "s")
    calls: list[str] = []

    async def request() -> None:
        for i in range(10):
            calls.append(f"request {i}")
            await alog.log_entry("s", f"request {i}")

    task = asyncio.create_task(request())
    await asyncio.sleep(0.05)
    assert not task.done() and calls == ["request 0"], "the request should wait for room"
    started = time.monotonic()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled() and time.monotonic() - started < 0.5  # at once, gate still shut
    gate.gate.set()
    await alog.close_session("s")
    report = await alog.aclose()
    assert report.ok and report.accepted == filled + len(calls) + 2
    messages = [e["message"] for e in read_entries(tmp_path / "log.jsonl") if e["event"] == "log"]
    assert messages == [f"fill {i}" for i in range(filled)] + calls
    assert [e["message"] for e in gate.got if e["event"] == "log"] == messages


async def test_waiters_resume_first_come_first_served(tmp_path: Path) -> None:
    """Ten tasks that find the queue full, one after the other, resume in that order as the
    writer frees room, and their entries are numbered in call order."""
    alog, gate = await _full_logger(tmp_path)
    await _fill(alog, "s")
    resumed: list[int] = []

    async def producer(n: int) -> None:
        await alog.log_entry("s", f"producer {n}")
        resumed.append(n)

    tasks = []
    for n in range(10):
        tasks.append(asyncio.create_task(producer(n)))
        await asyncio.sleep(0.01)  # each one waits before the next arrives
    assert resumed == [] and alog.stats()["waiting"] == 10
    gate.gate.set()
    await asyncio.gather(*tasks)
    assert resumed == list(range(10))
    await alog.close_session("s")
    report = await alog.aclose()
    assert report.ok
    ours = [e for e in read_entries(tmp_path / "log.jsonl") if e["message"].startswith("prod")]
    assert [e["message"] for e in ours] == [f"producer {n}" for n in range(10)]
    assert [e["seq"] for e in ours] == sorted(e["seq"] for e in ours)


async def test_calls_that_cannot_wait_take_no_place_in_the_line(tmp_path: Path) -> None:
    """Past the bound, calls whose wait is never awaited (the stdlib bridge on the loop thread
    calls the async face and cannot await) are no waiting producers. A task that then waits is
    the only one counted, and it resumes once the queue is below the bound. When each such
    call took a place in the line, the freed slots went to them first, the queue emptied
    with 180 of them still ahead of the task, and the task waited until someone else logged
    (here: for ever). Every entry is written, in call order."""
    alog, gate = await _full_logger(tmp_path)
    await _fill(alog, "s")
    dropped = [alog.log_entry("s", f"unawaited {n}") for n in range(200)]
    waited = asyncio.create_task(alog.log_entry("s", "awaited"))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    waiting = alog.stats()["waiting"]
    gate.gate.set()
    try:
        await asyncio.wait_for(asyncio.shield(waited), 5)
    except TimeoutError:
        raise AssertionError(f"the waiting task never resumed ({waiting} waiting)") from None
    assert waiting == 1
    del dropped
    await alog.close_session("s")
    report = await alog.aclose()
    assert report.ok
    messages = [e["message"] for e in read_entries(tmp_path / "log.jsonl")]
    ours = [m for m in messages if m.startswith(("unawaited", "awaited"))]
    assert ours == [f"unawaited {n}" for n in range(200)] + ["awaited"]


async def test_a_wait_for_room_passes_for_a_coroutine(tmp_path: Path) -> None:
    """What a verb returns at a full queue works wherever a coroutine does: create_task(),
    wait_for() (its timeout cancels the wait, never the entry), gather()."""
    alog, gate = await _full_logger(tmp_path)
    await _fill(alog, "s")
    task = asyncio.create_task(alog.log_entry("s", "by create_task"))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(alog.log_entry("s", "by wait_for"), 0.05)
    except TimeoutError:
        pass
    else:
        raise AssertionError("the queue should still be full")
    assert not task.done()
    gate.gate.set()
    await asyncio.gather(task, alog.log_entry("s", "by gather"))
    await alog.close_session("s")
    report = await alog.aclose()
    assert report.ok
    messages = [e["message"] for e in read_entries(tmp_path / "log.jsonl")]
    assert messages[-4:-1] == ["by create_task", "by wait_for", "by gather"]


async def test_closing_releases_every_waiting_producer(tmp_path: Path) -> None:
    """aclose() while 50 tasks wait for room behind a sink that never opens: the close gives up
    after its timeout, every task returns (none hangs), and every entry is accounted for
    (dead-lettered, the report says so)."""
    alog, _gate = await _full_logger(tmp_path, close_timeout=0.3)
    filled = await _fill(alog, "s")

    async def producer(n: int) -> None:
        await alog.log_entry("s", f"producer {n}")

    tasks = [asyncio.create_task(producer(n)) for n in range(50)]
    await asyncio.sleep(0.05)
    assert alog.stats()["waiting"] == 50
    report = await alog.aclose(timeout=1.0)
    done, pending = await asyncio.wait(tasks, timeout=5)
    assert not pending and all(t.exception() is None for t in done)
    assert report.accepted == 1 + filled + 50 + 1  # start, fill, producers, interrupted close
    gate_stats = report.sinks["gate"]
    assert gate_stats.delivered == 0
    assert gate_stats.dead_lettered + gate_stats.lost == report.accepted
    assert report.sinks["file"].delivered == report.accepted


async def test_the_queue_bound_holds_for_many_waiting_producers() -> None:
    """2,000 producer tasks against max_queue=200 and a slow sink: at every moment the queue
    holds at most max_queue entries plus one per producer waiting for room (the entry its
    call queued), producers do wait, and every entry arrives in order within its session."""
    got: list[dict[str, Any]] = []

    class Slow(Sink):
        default_name = "slow"

        async def write_batch(self, batch: Batch) -> None:
            await asyncio.sleep(0.00002 * len(batch))
            got.extend(batch)

    alog = AsyncSessionLogger(
        sinks=[Slow(max_batch=100, max_pending=200, overflow="block")],
        max_queue=200,
        dead_letter_path=None,
    )
    peak = peak_waiting = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak, peak_waiting
        while not stop.is_set():
            stats = alog.stats()
            assert stats["queued"] <= 200 + stats["waiting"], stats
            peak = max(peak, stats["queued"])
            peak_waiting = max(peak_waiting, stats["waiting"])
            await asyncio.sleep(0)

    async def producer(n: int) -> None:
        async with alog.session(f"p{n}") as s:
            for i in range(5):
                await s.info(f"{i}")

    async with alog:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(producer(n) for n in range(2000)))
        stop.set()
        await watcher
        report = await alog.save_logs()
    assert report.ok and report.accepted == 2000 * 7
    assert peak_waiting > 100, peak_waiting  # the bound was really reached
    assert peak <= 200 + 2000, peak
    seqs: dict[str, list[int]] = {}
    for entry in got:
        seqs.setdefault(entry["session_id"], []).append(entry["seq"])
    assert all(v == list(range(7)) for v in seqs.values()) and len(seqs) == 2000


class Counting(Sink):
    """Counts write_batch calls and keeps the entries."""

    default_name = "counting"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls = 0
        self.got: list[dict[str, Any]] = []

    async def write_batch(self, batch: Batch) -> None:
        self.calls += 1
        self.got.extend(batch)


async def _trickle(linger: float) -> Counting:
    """One task that logs 300 entries, yielding to the loop after each (a handler awaiting
    I/O between its log lines); return the sink that got them."""
    sink = Counting()
    alog = AsyncSessionLogger(sinks=[sink], linger=linger, dead_letter_path=None)
    async with alog, alog.session("s") as s:
        for i in range(300):
            await s.info(f"{i}")
            await asyncio.sleep(0)
    assert [e["message"] for e in sink.got if e["event"] == "log"] == [f"{i}" for i in range(300)]
    return sink


async def test_linger_writes_a_trickle_in_batches() -> None:
    """A task that logs and yields made the writer take one entry per turn of the loop, and
    every sink got a call per entry; with the default linger (2 ms) the entries gather into
    batches, in order, and linger=0 restores one call per entry."""
    lingering = await _trickle(0.002)
    eager = await _trickle(0.0)
    assert eager.calls > 150, eager.calls
    assert lingering.calls * 4 < eager.calls, (lingering.calls, eager.calls)


async def test_a_flush_close_or_full_queue_ends_the_linger(tmp_path: Path) -> None:
    """With linger=1 s, nobody waits for it: save_logs() and aclose() return at once, and a
    producer that fills the queue is let in at once."""
    sink = Counting()
    alog = AsyncSessionLogger(sinks=[sink], linger=1.0, max_queue=10, dead_letter_path=None)
    await alog.start()
    await alog.start_session("s")
    started = time.monotonic()
    await alog.log_entry("s", "one")
    await alog.save_logs()
    assert time.monotonic() - started < 0.5 and len(sink.got) == 2
    started = time.monotonic()
    for i in range(100):  # ten times the queue, one task: it must be let in each time
        await alog.log_entry("s", f"m{i}")
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    report = await alog.aclose()
    assert time.monotonic() - started < 0.5
    assert report.ok and len(sink.got) == 1 + 1 + 100 + 1


def test_a_thread_at_a_full_queue_ends_the_linger() -> None:
    """The sync face: a thread that fills the queue wakes a lingering writer at once."""
    sink = Counting()
    with SessionLogger(sinks=[sink], linger=1.0, max_queue=5, dead_letter_path=None) as log:
        log.start_session("s")
        started = time.monotonic()
        for i in range(100):
            log.log_entry("s", f"m{i}")
        log.save_logs()
        assert time.monotonic() - started < 0.5
    assert len([e for e in sink.got if e["event"] == "log"]) == 100


async def test_a_flush_or_close_of_an_idle_logger_does_not_wait_for_the_linger() -> None:
    """A flush marker that found the writer asleep woke it, and the writer then lingered
    before taking it: ``save_logs()`` (and ``aclose()``) of an idle logger took the whole
    linger (0.5 s here; 2 ms by default). A marker now wakes the writer at once."""
    sink = Counting()
    alog = AsyncSessionLogger(sinks=[sink], linger=0.5, dead_letter_path=None)
    await alog.start()
    await alog.start_session("s")
    await alog.save_logs()
    await asyncio.sleep(0.7)  # past the linger after that batch: the writer sleeps
    started = time.monotonic()
    report = await alog.save_logs()
    assert time.monotonic() - started < 0.25 and report.ok
    await asyncio.sleep(0.7)
    started = time.monotonic()
    report = await alog.aclose()
    assert time.monotonic() - started < 0.25 and report.ok
    assert [e["event"] for e in sink.got] == ["session_start", "session_close"]


async def test_a_sparse_batch_wakes_the_writer_once() -> None:
    """A web app at moderate load: a request's few entries, then a pause. The first entry
    woke the writer, which then lingered (a turn of the loop to set a timer), took the
    batch, lingered again and took nothing (another turn): three turns of the writer per
    batch, ~50,000 instructions of an idle app's loop more than needed. Now the first entry
    arms the linger's timer and the writer runs once per batch, when it fires."""
    sink = Counting()
    async with AsyncSessionLogger(sinks=[sink], linger=0.01, dead_letter_path=None) as alog:
        await alog.save_logs()
        before = sink.calls
        intake = alog._engine.intake
        take_batch = intake.take_batch
        takes = 0

        def counting(limit: int) -> tuple[list[Any], bool]:
            nonlocal takes
            takes += 1
            return take_batch(limit)

        intake.take_batch = counting  # type: ignore[method-assign]
        try:
            await asyncio.sleep(0.05)
            for i in range(10):
                async with alog.session(f"request-{i}") as s:
                    await s.info("handled")
                await asyncio.sleep(0.05)  # well past the linger: the writer sleeps again
        finally:
            del intake.take_batch  # type: ignore[method-assign]
        batches = sink.calls - before
    assert len(sink.got) == 30
    assert 1 <= batches <= 10 and takes == batches, (takes, batches)


async def test_a_records_wake_up_waits_for_the_linger_not_a_markers_or_a_full_intakes() -> None:
    """The intake's side of it: a record that finds the writer asleep arms the linger's
    timer (the writer does not run meanwhile); a marker, or a producer that must wait for
    room, ends the linger at once."""
    loop = asyncio.get_running_loop()
    for end in ("marker", "room"):
        intake = Intake(2, linger=60.0)
        intake.bind(loop)
        waiting = asyncio.ensure_future(intake.wait())
        await asyncio.sleep(0)
        assert intake.sleeping and not waiting.done()
        assert not intake.push(("record",))  # room left
        for _ in range(5):
            await asyncio.sleep(0)
        assert intake.lingering and not waiting.done()
        if end == "marker":
            intake.push(Flush())
        else:
            assert intake.push(("record",))  # full: this producer waits for room
            room = intake.room()
        await asyncio.wait_for(waiting, 5)
        assert not intake.lingering
        items, plain = intake.take_batch(10)
        assert len(items) == 2 and plain == (end == "room")
        if end == "room":
            assert room.done()
    # A wake-up that comes late (another thread's, while the writer was busy) armed a
    # timer; a marker queued then is taken at once when the writer next waits, not after it.
    intake = Intake(10, linger=60.0)
    intake.bind(loop)
    intake.push(("record",))
    intake.wake()
    assert intake.lingering
    intake.push(Flush())
    await asyncio.wait_for(intake.wait(), 5)
    assert intake.take_batch(10)[1] is False  # the marker is among them


@pytest.mark.parametrize("bad", [-0.1, 2.0])
def test_linger_is_checked(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="linger"):
        AsyncSessionLogger(sinks=[Counting()], linger=bad)
