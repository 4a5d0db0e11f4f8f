"""A slow sink beside a fast file sink: the file sink keeps its pace, the slow one its backlog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from async_session_logger import SessionLogger
from async_session_logger.sinks import Batch, FileSink, Sink

from ..conftest import read_lines
from .conftest import assert_report_accounted

N = 10_000
# Writer batches of 100: the lane merges pending batches up to a sink's max_batch but never
# splits one, so small writer batches are what keep a 10 ms-per-call sink really behind.
BATCH = 100


class SlowSink(Sink):
    """Take 10 ms per batch of at most 100 entries: about 10,000 entries per second at best."""

    default_name = "slow"

    def __init__(self, **options: Any) -> None:
        options.setdefault("max_batch", BATCH)
        super().__init__(**options)
        self.seqs: list[int] = []
        self.calls = 0

    async def write_batch(self, batch: Batch) -> None:
        """Sleep 10 ms, then keep the batch."""
        self.calls += 1
        await asyncio.sleep(0.01)
        self.seqs.extend(e["seq"] for e in batch)


def _time_to_file(path: Path, sinks: list[Sink]) -> tuple[float, SessionLogger]:
    """Log N entries; return the seconds until the file sink delivered all of them."""
    logger = SessionLogger(sinks=[FileSink(path), *sinks], dead_letter_path=None, batch_size=BATCH)
    started = time.monotonic()
    logger.start_session("pace")
    for i in range(N - 2):
        logger.log_entry("pace", f"entry {i}", "INFO", {"i": i})
    logger.close_session("pace")
    while logger.stats()["sinks"]["file"]["delivered"] < N:
        assert time.monotonic() - started < 30, "the file sink stalled"
        time.sleep(0.001)
    return time.monotonic() - started, logger


def test_file_sink_keeps_its_pace_beside_a_slow_sink(tmp_path: Path) -> None:
    """The file is complete about as fast with a 10 ms-per-batch sink beside it as alone,
    while the slow sink still has a backlog; the slow sink then gets everything, in order."""
    alone, solo = _time_to_file(tmp_path / "alone.jsonl", [])
    solo.close()
    slow = SlowSink()
    beside, logger = _time_to_file(tmp_path / "beside.jsonl", [slow])
    backlog = logger.stats()["sinks"]["slow"]["pending"]
    final = logger.close(timeout=30)

    print(f"\nfile complete: alone {alone:.3f} s, beside the slow sink {beside:.3f} s")
    # Generous: a shared 2-core machine. The slow sink alone needs N / 100 * 10 ms = 1 s, so
    # within this bound it cannot have caught up: it still has a backlog.
    assert beside < alone * 4 + 0.5, (alone, beside)
    assert backlog > 0, "the slow sink had caught up: it was not slow"
    assert_report_accounted(final)
    assert final["slow"].delivered == N and slow.seqs == list(range(N))
    assert slow.calls >= N // BATCH
    assert [e["seq"] for e in read_lines(tmp_path / "beside.jsonl")] == list(range(N))
