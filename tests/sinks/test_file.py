"""FileSink on a real filesystem: paths, templates, and a disk that fills up."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import ConfigurationError, SessionLogger, read_dead_letters
from async_session_logger.sinks import Batch, FileSink

from ..conftest import MountFactory, read_lines


def test_default_path_is_daily_file_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """method='file' with no path writes log_YYYY-MM-DD.jsonl (UTC date) in the cwd."""
    monkeypatch.chdir(tmp_path)
    with SessionLogger(method="file") as logger:
        logger.start_session("001")
        logger.close_session("001")
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"log_{today}.jsonl"]
    assert [e["event"] for e in read_lines(tmp_path / files[0])] == [
        "session_start",
        "session_close",
    ]


def test_session_and_date_placeholders(tmp_path: Path) -> None:
    """{session_id} and {date} split entries into one file per session and day; dirs are made."""
    template = str(tmp_path / "logs" / "{date}" / "{session_id}.jsonl")
    with SessionLogger(method="file", path=template, dead_letter_path=None) as logger:
        for sid in ("a", "b"):
            logger.start_session(sid)
        for i in range(10):
            logger.log_entry("a" if i % 2 else "b", f"m{i}")
        for sid in ("a", "b"):
            logger.close_session(sid)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    day = tmp_path / "logs" / today
    assert sorted(p.name for p in day.iterdir()) == ["a.jsonl", "b.jsonl"]
    for sid in ("a", "b"):
        lines = read_lines(day / f"{sid}.jsonl")
        assert {e["session_id"] for e in lines} == {sid}
        assert [e["seq"] for e in lines] == list(range(7))


def test_unknown_placeholder_is_a_configuration_error(tmp_path: Path) -> None:
    """A path with another {placeholder} is refused at construction."""
    with pytest.raises(ConfigurationError, match="placeholders"):
        FileSink(tmp_path / "{user}.jsonl")


def test_appends_to_existing_file(tmp_path: Path) -> None:
    """Two runs append to the same file (the seed's daily file keeps earlier sessions)."""
    path = tmp_path / "log.jsonl"
    for run in range(2):
        with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
            logger.start_session("001", {"run": run})
            logger.close_session("001")
    assert [e["metadata"]["run"] for e in read_lines(path) if e["event"] == "session_start"] == [
        0,
        1,
    ]


def test_write_errors_are_dead_lettered_not_raised(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC; entries go to the dead-letter file, counted."""
    errors: list[Exception] = []
    dead = tmp_path / "dead.jsonl"
    with SessionLogger(
        sinks=[FileSink("/dev/full", retries=2)],
        dead_letter_path=dead,
        on_error=errors.append,
    ) as logger:
        logger.start_session("full")
        logger.log_entry("full", "cannot be written")
        logger.close_session("full")
        report = logger.save_logs()
        assert logger.health()["ok"] is False
    assert not report.ok
    assert (report["file"].delivered, report["file"].dead_lettered) == (0, 3)
    assert report["file"].retried == 6
    assert "No space left on device" in (report["file"].last_error or "")
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["event"] for d in letters] == ["session_start", "log", "session_close"]
    assert all(d["sink"] == "file" and "No space left" in d["reason"] for d in letters)
    assert "No space left" in str(errors[0].__cause__)


def test_disk_full_then_freed_accounts_for_every_entry(tmp_path: Path, tmpfs: MountFactory) -> None:
    """A disk filling up mid-run: each entry is a whole line in the file or a dead letter."""
    small_disk = tmpfs(size="256k")
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 150_000)
    path = small_disk / "log.jsonl"
    dead = tmp_path / "dead.jsonl"
    logger = SessionLogger(
        sinks=[FileSink(path, retries=1)],
        dead_letter_path=dead,
        on_error=lambda e: None,
        batch_size=100,
    )
    logger.start_session("disk")
    for i in range(3000):
        logger.log_entry("disk", f"entry {i:05d} " + "x" * 40)
    full = logger.save_logs()
    os.unlink(ballast)  # space comes back: the sink must recover
    for i in range(3000, 3100):
        logger.log_entry("disk", f"entry {i:05d} " + "x" * 40)
    logger.close_session("disk")
    report = logger.close()
    assert full["file"].dead_lettered > 0
    assert report["file"].delivered + report["file"].dead_lettered == 3102
    written: dict[int, dict[str, object]] = {}
    torn = 0
    for raw in path.read_bytes().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            torn += 1  # the fragment of the write the disk cut short, ended by the next write
            continue
        written[entry["seq"]] = entry
    assert torn <= 1
    dead_seqs = {d["entry"]["seq"] for d in read_dead_letters(dead)}
    assert len(written) == report["file"].delivered
    assert len(dead_seqs) == report["file"].dead_lettered
    assert set(written) | dead_seqs == set(range(3102))
    assert 3101 in written  # the close entry, written after space came back


def test_direct_writes_cut_only_between_lines() -> None:
    """Chunks of a large batch end on line boundaries, so concurrent appenders never split one."""
    from async_session_logger.sinks._file_upkeep import line_cut
    from async_session_logger.sinks.file import _CHUNK

    line = b"x" * 999 + b"\n"
    data = line * 1000  # ~1 MB: four chunks or so
    start, cuts = 0, []
    while start < len(data):
        end = line_cut(data, start, _CHUNK, len(data))
        assert end - start <= _CHUNK
        assert data[end - 1 : end] == b"\n"
        cuts.append(end)
        start = end
    assert cuts[-1] == len(data) and len(cuts) == 4
    huge = b"y" * (_CHUNK * 2) + b"\n" + b"z\n"
    assert line_cut(huge, 0, _CHUNK, len(huge)) == _CHUNK * 2 + 1  # one long line goes whole
    assert line_cut(huge, 0, _CHUNK, _CHUNK * 2) == _CHUNK * 2  # never past the stop


async def _turns_during(sink: FileSink, batch: Batch) -> int:
    """Write ``batch`` while another task counts its turns; return how many it had."""
    turns = 0
    done = False

    async def neighbour() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(neighbour())
    await asyncio.sleep(0)
    turns = 0
    await sink.write_batch(batch)
    done = True
    await task
    return turns


async def test_direct_writes_yield_by_time_not_per_chunk(tmp_path: Path) -> None:
    """A direct write goes on for ~1 ms before it yields, so a turn of a busy loop writes
    megabytes, not one 256 KiB chunk; a long write still yields (the loop is not held)."""
    from async_session_logger.sinks.file import _CHUNK

    sink = FileSink(tmp_path / "a.jsonl", write_mode="direct")
    await sink.open()
    try:
        line = b"x" * 999 + b"\n"
        small = Batch([{}] * 2_000, line * 2_000)  # 2 MB: eight chunks
        # Writes to the page cache take tens of microseconds a chunk: one turn, maybe two.
        # Yielding after every chunk (the old way) took eight.
        assert await _turns_during(sink, small) < len(small.data) // _CHUNK
        big = Batch([{}] * 64_000, line * 64_000)  # 64 MB: tens of ms of writing
        assert await _turns_during(sink, big) >= 2
    finally:
        await sink.close()
    assert (tmp_path / "a.jsonl").stat().st_size == 66_000 * 1000


def test_four_processes_append_to_one_file(tmp_path: Path) -> None:
    """4 processes x 50,000 entries into one file: 200,000 valid lines, none interleaved."""
    import sys

    path = tmp_path / "shared.jsonl"
    code = (
        "import sys\n"
        "from async_session_logger import SessionLogger\n"
        "n = sys.argv[2]\n"
        "with SessionLogger(method='file', path=sys.argv[1], dead_letter_path=None) as logger:\n"
        "    logger.start_session('proc-' + n)\n"
        "    for i in range(50_000):\n"
        "        logger.log_entry('proc-' + n, 'entry %d from process %s' % (i, n), 20,"
        " {'i': i, 'pad': 'p' * 80})\n"
        "    logger.close_session('proc-' + n)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(n)]) for n in range(4)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    lines = read_lines(path)  # every line must parse: an interleaved write would break one
    assert len(lines) == 4 * 50_002
    for n in range(4):
        seqs = [e["seq"] for e in lines if e["session_id"] == f"proc-{n}"]
        assert seqs == list(range(50_002))


def _escape(entry: dict[str, Any]) -> dict[str, Any]:
    """Return the entry with a path-breaking id for session "evil", a bad stamp for "stamp"."""
    if entry["session_id"] == "evil":
        return {**entry, "session_id": "../../outside"}
    if entry["session_id"] == "stamp":
        return {**entry, "timestamp": "../../../x/"}
    return entry


def test_ids_a_formatter_rewrote_never_leave_the_directory(tmp_path: Path) -> None:
    """{session_id} and {date} filled from a formatted entry: an unsafe id fails just its
    entries (dead-lettered, reported), a timestamp that is no date falls back to today."""
    logs = tmp_path / "a" / "b" / "logs"
    dead = tmp_path / "dead.jsonl"
    errors: list[Exception] = []
    with SessionLogger(
        sinks=[FileSink(logs / "{date}" / "{session_id}.jsonl", retries=0)],
        custom_formatter=_escape,
        dead_letter_path=dead,
        on_error=errors.append,
    ) as logger:
        for sid in ("good", "evil", "stamp"):
            logger.start_session(sid)
            logger.log_entry(sid, "hello")
            logger.close_session(sid)
        report = logger.save_logs()
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        f"a/b/logs/{today}/good.jsonl",
        f"a/b/logs/{today}/stamp.jsonl",
        "dead.jsonl",
    ]
    assert [e["seq"] for e in read_lines(logs / today / "stamp.jsonl")] == [0, 1, 2]
    assert (report["file"].delivered, report["file"].dead_lettered) == (6, 3)
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["session_id"] for d in letters] == ["../../outside"] * 3
    assert all("InvalidSessionIdError" in d["reason"] and "'/'" in d["reason"] for d in letters)
    assert errors and "InvalidSessionIdError" in repr(errors[0].__cause__)


def _fifo_reader(path: Path) -> int:
    """Open ``path`` (a FIFO) for reading now, without waiting for a writer; return the fd."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def _read_all(fd: int) -> list[bytes]:
    """Read a FIFO to its end (every writer gone) and return its lines."""
    os.set_blocking(fd, True)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).splitlines()


async def test_a_fifo_whose_reader_stalls_does_not_block_the_loop(tmp_path: Path) -> None:
    """A FIFO is written non-blocking from the loop: while its reader stalls (the pipe full),
    the sink waits for room on the loop, which keeps running; every line arrives once the
    reader reads. A blocking write on the loop fails this (the loop stops for the stall)."""
    import threading
    import time

    from async_session_logger import AsyncSessionLogger

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    fd = _fifo_reader(fifo)
    received: list[bytes] = []
    stall = 1.0

    def reader() -> None:
        time.sleep(stall)  # the pipe's 64 KiB fill up meanwhile
        received.extend(_read_all(fd))

    thread = threading.Thread(target=reader)
    thread.start()
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        async with AsyncSessionLogger(sinks=[FileSink(fifo)], dead_letter_path=None) as alog:
            await alog.start_session("s")
            for i in range(2_000):  # ~400 KB: six times what the pipe holds
                await alog.log_entry("s", "through the pipe", 20, {"i": i, "pad": "p" * 150})
            await alog.close_session("s")
            report = await alog.save_logs()
    finally:
        stop = True
        await tick
        thread.join(10)
    assert report.ok
    assert not thread.is_alive()
    entries = [json.loads(line) for line in received]
    assert [e["custom_fields"]["i"] for e in entries if e["event"] == "log"] == list(range(2_000))
    assert entries[-1]["event"] == "session_close"
    assert sum(gaps) > stall  # the ticker ran through the stall...
    assert max(gaps) < stall / 2  # ...and no write held the loop for it


async def test_a_fifo_without_a_reader_neither_hangs_nor_holds_a_thread(tmp_path: Path) -> None:
    """Nothing reads the FIFO: the logger starts at once (opening it blocked a worker thread
    until a reader came, and the start with it, for ever), its entries are dead-lettered with
    the reason, another sink gets everything, and once a reader opens it the next entries go
    through."""
    from async_session_logger import AsyncSessionLogger

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    dead = tmp_path / "dead.jsonl"
    sinks = [FileSink(fifo, name="fifo", retries=1), FileSink(tmp_path / "all.jsonl")]
    alog = AsyncSessionLogger(sinks=sinks, dead_letter_path=dead, linger=0)
    async with asyncio.timeout(10):
        await alog.start()
        async with alog.session("early") as session:
            await session.info("nobody reads")
        assert (await alog.save_logs()).sinks["fifo"].dead_lettered == 3
        fd = _fifo_reader(fifo)
        async with alog.session("late") as session:
            await session.info("a reader came")
        report = await alog.aclose()
    lines = _read_all(fd)
    assert [json.loads(line)["session_id"] for line in lines] == ["late"] * 3
    assert report["fifo"].delivered == 3 and report["fifo"].dead_lettered == 3
    assert report["file"].delivered == 6
    reasons = {d["reason"] for d in read_dead_letters(dead)}
    assert len(reasons) == 1 and "a FIFO with no reader" in reasons.pop()


def test_a_socket_path_fails_the_start_as_the_os_says(tmp_path: Path) -> None:
    """Only a FIFO waiting for its reader is let through at start: a UNIX socket's path (which
    ``open()`` cannot open, with the same ENXIO) still fails the logger's start at once."""
    import errno
    import socket
    import threading
    import time

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(OSError) as caught:
            SessionLogger(sinks=[FileSink(path, name="sock")], dead_letter_path=None)
    assert caught.value.errno == errno.ENXIO
    assert "FIFO" not in str(caught.value)

    # The failed start leaves no thread of the sink's behind (it ends at once, not at exit).
    def left() -> list[str]:
        ours = "async_session_logger.sock["
        return [t.name for t in threading.enumerate() if t.name.startswith(ours)]

    for _ in range(100):
        if not left():
            break
        time.sleep(0.02)
    assert left() == []


async def test_a_fifo_reader_that_never_reads_times_out_the_write(tmp_path: Path) -> None:
    """The reader opens the FIFO and never reads: a write waiting for room ends at the sink's
    ``timeout`` (no thread stays blocked in it), is retried, then dead-lettered; every entry
    is counted once as delivered or dead-lettered, and close returns promptly."""
    import threading
    import time

    from async_session_logger import AsyncSessionLogger

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    fd = _fifo_reader(fifo)
    dead = tmp_path / "dead.jsonl"
    sink = FileSink(fifo, name="never-reads", timeout=0.3, retries=1)
    started = time.monotonic()
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=dead) as alog:
        await alog.start_session("s")
        for i in range(2_000):  # ~400 KB against the pipe's 64 KiB
            await alog.log_entry("s", "stuck", 20, {"i": i, "pad": "p" * 150})
        await alog.close_session("s")
        report = await alog.save_logs(timeout=30)
    assert time.monotonic() - started < 15
    stats = report["never-reads"]
    assert stats.delivered + stats.dead_lettered == 2_002 and stats.dead_lettered > 0
    assert "TimeoutError" in (stats.last_error or "")
    assert sum(1 for _ in read_dead_letters(dead)) == stats.dead_lettered
    os.close(fd)

    def ours() -> list[str]:
        names = ("async_session_logger.never-reads[", "async_session_logger.dead-letters[")
        return [t.name for t in threading.enumerate() if t.name.startswith(names)]

    # No thread was left blocked in the pipe: the sink's and the dead-letter file's own
    # threads end once the logger is closed.
    for _ in range(100):
        if not ours():
            break
        await asyncio.sleep(0.05)
    assert ours() == []


async def test_thread_write_mode_writes_a_regular_file(tmp_path: Path) -> None:
    """``write_mode="thread"`` on a regular file: every entry, in order, across batches."""
    from async_session_logger import AsyncSessionLogger

    path = tmp_path / "t.jsonl"
    sink = FileSink(path, write_mode="thread")
    alog = AsyncSessionLogger(sinks=[sink], dead_letter_path=None, batch_size=100)
    async with alog, alog.session("s") as session:
        for i in range(1_000):
            await session.info("entry", {"i": i})
            if i % 250 == 0:
                await asyncio.sleep(0)  # several batches, each its own threaded write
    entries = read_lines(path)
    assert [e["custom_fields"]["i"] for e in entries if e["event"] == "log"] == list(range(1_000))
    assert [e["seq"] for e in entries] == list(range(1_002))


async def test_a_reset_never_closes_a_descriptor_reused_since(tmp_path: Path) -> None:
    """``reset()`` (in a forked child, after a loop that is gone) closes the sink's files
    without I/O on the loop. It closed the descriptor behind the file object's back, and the
    object, freed later, closed the same number again: by then another file's. In a forked
    child that was the new event loop's wake-up socket, and the logger's start hung."""
    import gc

    sink = FileSink(tmp_path / "log.jsonl")
    await sink.open()
    sink.reset()
    pipes = [os.pipe() for _ in range(8)]  # take the number the reset freed, and more
    try:
        await sink.open()  # frees what the sink still held of the file before the reset
        gc.collect()
        for read_end, write_end in pipes:
            assert os.write(write_end, b"x") == 1
            assert os.read(read_end, 1) == b"x"
    finally:
        await sink.close()
        for pipe in pipes:
            for fd in pipe:
                with contextlib.suppress(OSError):  # the failure closed one already
                    os.close(fd)
