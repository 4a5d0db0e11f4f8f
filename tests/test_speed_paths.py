"""The hot path's shortcuts (issue 15) keep what they might skip: same bytes, masking, seqs."""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from async_session_logger import AsyncSessionLogger, SessionLogger, read_entries
from async_session_logger._entry import LOG, EntryBuilder, Masker, format_timestamp
from async_session_logger.sinks import FileSink

from .conftest import held

_NS = st.integers(min_value=-(10**18), max_value=4 * 10**18)


def _reference(time_ns: int) -> str:
    """Format ``time_ns`` the slow, obvious way (the format before the shortcut)."""
    second, rest = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{rest // 1000:06d}Z"


@settings(max_examples=300, deadline=None)
@given(st.lists(_NS, min_size=1, max_size=20))
def test_timestamps_match_the_reference_format_in_any_order(times: list[int]) -> None:
    """The cached-second timestamp equals strftime + 6-digit micros, whatever came before."""
    builder = EntryBuilder(None, Masker())
    records = [(LOG, "s", i + 1, t, 20, "m", None, 0) for i, t in enumerate(times)]
    entries = builder.build_all(records)
    assert [e["timestamp"] for e in entries] == [_reference(t) for t in times]
    # The clock carries over to the next batch: a second batch is formatted right too.
    again = builder.build_all(list(reversed(records)))
    assert [e["timestamp"] for e in again] == [_reference(t) for t in reversed(times)]
    assert [format_timestamp(t) for t in times] == [_reference(t) for t in times]


def test_timestamps_across_second_boundaries_within_one_batch() -> None:
    """Entries just before, at and after a second boundary each get their own second."""
    base = 1_795_000_000 * 10**9
    times = [base - 1, base, base + 999_999_999, base + 10**9, base - 10**9, base + 1_000]
    builder = EntryBuilder(None, Masker())
    entries = builder.build_all([(LOG, "s", 1, t, 20, "m", None, 0) for t in times])
    assert [e["timestamp"] for e in entries] == [_reference(t) for t in times]


def test_masking_shortcut_still_masks_after_many_safe_entries() -> None:
    """Known-safe flat keys skip mask(); a secret key or a nested secret later is still masked."""
    builder = EntryBuilder(None, Masker())
    safe = [(LOG, "s", i, 0, 20, "m", {"i": i, "user": "u"}, 0) for i in range(1, 50)]
    tricky: list[dict[Any, Any]] = [
        {"i": 50, "password": "hunter2"},  # a new key that is a secret
        {"i": 51, "user": {"token": "t0k"}},  # known-safe key, nested secret
        {"i": 52, "user": ["x", {"api_key": "k"}]},  # nested in a list
        {1: "one", "i": 53},  # a non-str key beside a safe one
        {"i": 54, "user": "u"},  # flat and safe again
    ]
    records = safe + [(LOG, "s", 50 + n, 0, 20, "m", f, 0) for n, f in enumerate(tricky)]
    entries = builder.build_all(records)
    fields = [e["custom_fields"] for e in entries[-5:]]
    assert fields[0] == {"i": 50, "password": "***"}
    assert fields[1] == {"i": 51, "user": {"token": "***"}}
    assert fields[2] == {"i": 52, "user": ["x", {"api_key": "***"}]}
    assert fields[3] == {1: "one", "i": 53}
    assert fields[4] == {"i": 54, "user": "u"}
    assert tricky[0]["password"] == "hunter2"  # the caller's own dict is never changed


def test_end_to_end_bytes_seqs_and_masking(tmp_path: Path) -> None:
    """Through SessionLogger: keys in schema order, seqs 1..N, every entry once, secrets masked."""
    path = tmp_path / "log.jsonl"
    logger = SessionLogger(sinks=[FileSink(str(path))])
    logger.start_session("s")
    n = 3000
    for i in range(n):
        fields: dict[str, Any] = {"i": i}
        if i % 1000 == 999:
            fields["secret"] = "s3"
        logger.log_entry("s", "message", logging.INFO, fields)
    logger.close_session("s")
    assert logger.save_logs().ok
    logger.close()
    lines = path.read_bytes().splitlines()
    logs = [json.loads(line) for line in lines[1:-1]]
    assert json.loads(lines[0])["seq"] == 0  # the session_start entry
    assert [e["seq"] for e in logs] == list(range(1, n + 1))
    assert [e["custom_fields"]["i"] for e in logs] == list(range(n))
    assert list(logs[0]) == [
        "timestamp",
        "session_id",
        "seq",
        "event",
        "level",
        "levelno",
        "message",
        "custom_fields",
    ]
    assert all(e["custom_fields"].get("secret", "***") == "***" for e in logs)
    assert sum("secret" in e["custom_fields"] for e in logs) == 3
    for e in logs:
        assert e["timestamp"] == _reference(_parse_ns(e["timestamp"]))
    assert len(list(read_entries(path))) == n + 2


def _parse_ns(stamp: str) -> int:
    """Read a written timestamp back as ns since the epoch (microsecond precision)."""
    day, frac = stamp[:-1].split(".")
    second = calendar.timegm(time.strptime(day, "%Y-%m-%dT%H:%M:%S"))
    return second * 10**9 + int(frac) * 1000


def test_session_storm_writes_every_entry_once_in_seq_order(tmp_path: Path) -> None:
    """3,000 tasks each in its own session, queue smaller than a turn: nothing lost, seqs whole."""
    path = tmp_path / "storm.jsonl"
    tasks, per_task = 3000, 5

    async def main() -> None:
        # max_queue below one turn's output: callers wait for room in line, and lose nothing.
        alog = AsyncSessionLogger(path=str(path), dead_letter_path=None, max_queue=1000)
        await alog.start()

        async def task(i: int) -> None:
            async with alog.session(f"t{i}") as s:
                for j in range(per_task):
                    await s.info("step", {"j": j})
                    await asyncio.sleep(0)

        await asyncio.gather(*(task(i) for i in range(tasks)))
        assert (await alog.aclose()).ok

    asyncio.run(main())
    seqs: dict[str, list[int]] = {}
    for entry in read_entries(path):
        seqs.setdefault(entry["session_id"], []).append(entry["seq"])
    assert len(seqs) == tasks
    assert all(s == list(range(per_task + 2)) for s in seqs.values())


def test_the_log_verb_releases_its_lock_when_it_raises(tmp_path: Path) -> None:
    """``Recorder.log`` takes its lock without a ``with`` (cheaper): a verb that raises inside
    it (an unknown session, a closed one, an unhashable id) must still release it, or the next
    call from any thread would hang."""
    import pytest

    from async_session_logger import (
        InvalidSessionIdError,
        SessionClosedError,
        UnknownSessionError,
    )

    logger = SessionLogger(path=str(tmp_path / "log.jsonl"), dead_letter_path=None)
    lock = logger._recorder._lock
    try:
        logger.start_session("ok")
        logger.start_session("done")
        logger.close_session("done")
        bad_calls: list[tuple[Any, type[Exception]]] = [
            ("nope", UnknownSessionError),
            ("done", SessionClosedError),
            (["unhashable"], InvalidSessionIdError),
        ]
        for bad, error in bad_calls:
            with pytest.raises(error):
                logger.log_entry(bad, "m")
            assert not held(lock), f"{bad!r}: the recorder's lock was left held"
        logger.log_entry("ok", "after them")
        logger.close_session("ok")
        assert logger.save_logs().ok
    finally:
        while lock._is_owned():  # the defect: free it so close() can run
            lock.release()
        logger.close()
    messages = [e["message"] for e in read_entries(tmp_path / "log.jsonl") if e["event"] == "log"]
    assert messages == ["after them"]
