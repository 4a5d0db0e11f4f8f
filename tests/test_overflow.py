"""Overflow policies: block loses nothing; drops are counted and leave gap entries."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    ConfigurationError,
    SessionLogger,
    read_entries,
    read_sessions,
)
from async_session_logger.sinks import Batch, FileSink, Sink

from .conftest import FaceFactory


class Valve(Sink):
    """A sink that accepts nothing until opened: overloads the logger on demand."""

    default_name = "valve"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.gate = threading.Event()
        self.received = 0

    async def write_batch(self, batch: Batch) -> None:
        while not self.gate.is_set():  # noqa: ASYNC110 - a threading.Event, set from any thread
            await asyncio.sleep(0.005)
        self.received += len(batch)


def check_stream(path: Path) -> tuple[int, int]:
    """Assert every session's seqs are covered exactly once; return (gap entries, dropped)."""
    gaps = dropped = 0
    for session in read_sessions(path):
        session_dropped = dropped
        assert session.start is not None
        assert session.close is not None, f"{session.session_id} lost its close entry"
        covered = [session.start["seq"], session.close["seq"]]
        for entry in session.entries:
            covered.append(entry["seq"])
            if entry["event"] == "gap":
                gaps += 1
                dropped += entry["dropped"]
                runs = entry["dropped_seqs"]
                assert entry["seq"] == runs[0][0]
                assert entry["dropped"] == sum(hi - lo + 1 for lo, hi in runs)
                assert entry["level"] == "WARNING"
                covered.extend(seq for lo, hi in runs for seq in range(lo + 1, hi + 1))
        assert sorted(covered) == list(range(session.close["seq"] + 1)), session.session_id
        assert session.dropped == dropped - session_dropped
        assert session.close["entries"] == session.close["seq"] - 1
    return gaps, dropped


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_drops_are_counted_and_leave_gap_entries(
    make_logger: FaceFactory, tmp_path: Path, policy: str
) -> None:
    """A stalled sink: log entries are dropped, never lifecycle ones; gaps cover every hole."""
    valve = Valve(max_pending=50)
    log = await make_logger(
        sinks=[FileSink(tmp_path / "log.jsonl"), valve], max_queue=100, overflow=policy
    )
    for s in range(3):
        await log.start_session(f"s{s}", {"n": s})
    for i in range(3_000):
        await log.log_entry(f"s{i % 3}", f"m{i}")
    for s in range(3):
        await log.close_session(f"s{s}")
    valve.gate.set()
    report = await log.close()

    stats = log.stats()
    assert report.dropped == stats["dropped"] >= 2_500
    assert not report.ok
    assert f"{report.dropped} dropped by the overflow policy" in str(report)
    gaps, dropped = check_stream(tmp_path / "log.jsonl")
    assert dropped == report.dropped
    assert gaps == stats["gap_entries"] >= 3
    # Each sink got every entry that was not dropped, plus the gap entries.
    expected = report.accepted - report.dropped + gaps
    assert report["file"].delivered == report["valve"].delivered == expected == valve.received
    # Every sink's stats say how many entries it never got, and the identity holds per sink.
    assert report["file"].dropped == stats["sinks"]["valve"]["dropped"] == report.dropped
    messages = {e["message"] for e in read_entries(tmp_path / "log.jsonl")}
    if policy == "drop_newest":  # the oldest entries survive
        assert "m0" in messages and "m2999" not in messages
    else:  # the newest entries survive
        assert "m2999" in messages and "m0" not in messages


async def test_block_loses_nothing_and_bounds_the_queue(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """overflow="block" (the default): a slow sink slows the caller; every entry arrives."""
    log = await make_logger(
        sinks=[FileSink(tmp_path / "log.jsonl"), Slow(max_pending=100)], max_queue=50
    )
    await log.start_session("s")
    depth = 0
    for i in range(2_000):
        await log.log_entry("s", f"m{i}")
        depth = max(depth, log.stats()["queued"])
    await log.close_session("s")
    report = await log.close()
    assert report.ok and report.dropped == 0
    assert check_stream(tmp_path / "log.jsonl") == (0, 0)
    assert len(list(read_entries(tmp_path / "log.jsonl"))) == 2_002
    assert depth <= 50


class Slow(Sink):
    """A sink that takes 1 ms per 100 entries."""

    default_name = "slow"

    async def write_batch(self, batch: Batch) -> None:
        await asyncio.sleep(len(batch) / 100_000)


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_lifecycle_floods_are_never_dropped(
    make_logger: FaceFactory, tmp_path: Path, policy: str
) -> None:
    """Thousands of sessions started and closed into a full queue: all starts and closes kept."""
    valve = Valve(max_pending=20)
    log = await make_logger(
        sinks=[FileSink(tmp_path / "log.jsonl"), valve], max_queue=30, overflow=policy
    )

    # A thread, not a task: the sync face's callers block the test's loop while they wait.
    opener = threading.Timer(0.3, valve.gate.set)
    opener.start()
    for s in range(1_000):
        await log.start_session(f"s{s}")
        await log.log_entry(f"s{s}", "x")
        await log.close_session(f"s{s}")
    opener.join()
    report = await log.close()
    sessions = read_sessions(tmp_path / "log.jsonl")
    assert len(sessions) == 1_000
    assert all(s.start is not None and s.status == "closed" for s in sessions)
    _, dropped = check_stream(tmp_path / "log.jsonl")
    assert dropped == report.dropped > 0


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_threads_never_wait_under_a_drop_policy(tmp_path: Path, policy: str) -> None:
    """8 threads into a stalled sink: nobody blocks, and the arithmetic still holds."""
    valve = Valve(max_pending=100)
    logger = SessionLogger(
        sinks=[FileSink(tmp_path / "log.jsonl"), valve],
        max_queue=200,
        overflow=policy,
        dead_letter_path=tmp_path / "dead.jsonl",
    )

    def work(n: int) -> None:
        with logger.session(f"t{n}") as session:
            for i in range(5_000):
                session.info(f"m{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a caller blocked under a drop policy"
    valve.gate.set()
    report = logger.close()
    assert report.accepted == 8 * 5_002
    assert report.dropped >= 8 * 5_000 - 1_000
    gaps, dropped = check_stream(tmp_path / "log.jsonl")
    assert dropped == report.dropped
    assert report["file"].delivered == report.accepted - report.dropped + gaps


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_a_reused_id_gets_its_own_gaps(
    make_logger: FaceFactory, tmp_path: Path, policy: str
) -> None:
    """An id reused while its first session's close entry is still queued: each session's
    drops are reported in that session's stream, before its own close entry."""
    valve = Valve(max_pending=1)
    log = await make_logger(
        sinks=[FileSink(tmp_path / "log.jsonl"), valve], max_queue=3, overflow=policy
    )
    for _ in range(2):
        await log.start_session("a")
        for i in range(5):
            await log.log_entry("a", f"m{i}")
        await log.close_session("a")
    valve.gate.set()
    report = await log.close()
    assert report.dropped > 0
    runs: list[list[dict[str, Any]]] = []
    for entry in read_entries(tmp_path / "log.jsonl"):
        if entry["event"] == "session_start":
            runs.append([])
        runs[-1].append(entry)
    assert len(runs) == 2
    dropped = 0
    for entries in runs:
        assert entries[-1]["event"] == "session_close"
        covered = [e["seq"] for e in entries]
        for gap in (e for e in entries if e["event"] == "gap"):
            dropped += gap["dropped"]
            covered += [s for lo, hi in gap["dropped_seqs"] for s in range(lo + 1, hi + 1)]
        assert sorted(covered) == list(range(entries[-1]["seq"] + 1))
    assert dropped == report.dropped


def test_unknown_policy_is_refused() -> None:
    """A typo in the policy is a configuration error, not a silent default."""
    with pytest.raises(ConfigurationError, match="overflow must be one of"):
        AsyncSessionLogger(overflow="drop_everything")  # type: ignore[arg-type]
