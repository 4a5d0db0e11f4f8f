"""FileSink rotation, retention, gzip, fsync and reopen, on the real filesystem."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import gzip
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from async_session_logger import (
    AsyncSessionLogger,
    ConfigurationError,
    DeliveryReport,
    SessionLogger,
    SinkError,
    read_entries,
    read_sessions,
)
from async_session_logger.sinks import Batch, FileSink, _rotation

from ..conftest import Face, FaceFactory, read_lines

ROOT = Path(__file__).parents[2]
ROTATED = re.compile(r"^app\.(\d{8}T\d{6}\.\d{6}Z)\.jsonl(\.gz)?$")
UTC = dt.UTC


# -- helpers ------------------------------------------------------------------------------------
def make_batch(seqs: range, *, session_id: str = "s", pad: int = 0) -> Batch:
    """Return a batch of schema-shaped log entries with these seqs (lines of ~60 + pad bytes)."""
    entries = [
        {"session_id": session_id, "seq": i, "event": "log", "message": "x" * pad} for i in seqs
    ]
    return Batch(entries, b"".join(orjson.dumps(e) + b"\n" for e in entries))


def all_files(path: Path) -> list[str]:
    """Return the rotated files of ``path``, oldest first, then ``path`` itself."""
    return [*FileSink.rotated_files(path), str(path)]


def seqs_in(*files: str, session_id: str | None = None) -> list[int]:
    """Return the seqs of the entries in ``files`` (every line must parse), in file order."""
    return [
        e["seq"]
        for e in read_entries(*files, strict=True)
        if session_id is None or e["session_id"] == session_id
    ]


def rotated_names(directory: Path) -> list[str]:
    """Return the names in ``directory`` of rotated files of app.jsonl, sorted."""
    return sorted(
        p.name for p in directory.iterdir() if ROTATED.match(p.name) and p.name not in UNRELATED
    )


def app_names(directory: Path) -> list[str]:
    """Return the names in ``directory`` that start with ``app.``, sorted."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("app."))


def exists(path: str | Path) -> bool:
    """Return whether ``path`` exists (a plain helper: async tests call no blocking os.path)."""
    return os.path.exists(path)


def size(path: str | Path) -> int:
    """Return the size of the file ``path``."""
    return os.path.getsize(path)


def write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path``."""
    Path(path).write_bytes(data)


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> float:
    """Return the epoch seconds of a UTC date and time."""
    return dt.datetime(year, month, day, hour, minute, second, us, tzinfo=UTC).timestamp()


async def finish(factory: FaceFactory, log: Face) -> DeliveryReport:
    """Close ``log`` and take it off the factory's teardown list.

    A second close() of a SessionLogger from a to_thread worker can fail: the facade tells its
    loop thread by ``threading.get_ident()``, and a finished thread's ident may be reused.
    """
    report = await log.close()
    factory.built.remove(log)
    return report


class Clock:
    """A settable clock for FileSink._clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def log_rounds(log: Any, sid: str, rounds: int, per_round: int, pad: int = 40) -> None:
    """Log ``rounds`` x ``per_round`` entries, waiting for delivery after each round."""
    for r in range(rounds):
        for i in range(per_round):
            await log.log_entry(sid, f"round {r} entry {i} " + "p" * pad)
        await log.save_logs()


# -- size rotation ------------------------------------------------------------------------------
async def test_size_rotation_bounds_every_file_and_keeps_every_entry(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """rotate_bytes: no file passes the limit, names sort in order, nothing is lost."""
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path, rotate_bytes=4000)])
    await log.start_session("s")
    await log_rounds(log, "s", rounds=30, per_round=7)
    await log.close_session("s")
    report = await finish(make_logger, log)
    assert report.ok and not log.errors
    names = rotated_names(tmp_path)
    assert len(names) >= 10
    assert report["file"].details["rotations"] == len(names)
    for name in [*names, "app.jsonl"]:
        assert (tmp_path / name).stat().st_size <= 4000
    # The stamps are UTC and strictly increasing: name order is write order.
    stamps = [m.group(1) for n in names if (m := ROTATED.match(n))]
    assert stamps == sorted(set(stamps))
    assert seqs_in(*all_files(path)) == list(range(30 * 7 + 2))


async def test_a_batch_goes_whole_into_one_file_unless_larger_than_the_limit(
    tmp_path: Path,
) -> None:
    """A batch that fits is never split; a larger one is cut between lines; a huge line alone."""
    path = tmp_path / "app.jsonl"
    sink = FileSink(path, rotate_bytes=1000)
    await sink.open()
    batches = [make_batch(range(n * 4, n * 4 + 4), pad=150) for n in range(6)]  # ~850 B each
    for batch in batches:
        await sink.write_batch(batch)
    big = make_batch(range(100, 120), pad=150)  # ~4.2 KB: must be cut
    await sink.write_batch(big)
    huge = make_batch(range(200, 201), pad=5000)  # one line larger than the limit
    await sink.write_batch(huge)
    await sink.write_batch(make_batch(range(300, 302)))
    await sink.close()
    files = all_files(path)
    contents = [seqs_in(f) for f in files]
    for n in range(6):  # each small batch sits in exactly one file
        assert [n * 4, n * 4 + 1, n * 4 + 2, n * 4 + 3] in contents
    for name, seqs in zip(files, contents, strict=True):
        assert size(name) <= 1000 or len(seqs) == 1
    assert [200] in contents
    written = [e["seq"] for b in [*batches, big, huge] for e in b.entries] + [300, 301]
    assert [seq for seqs in contents for seq in seqs] == written  # in order, each once


async def test_each_file_of_a_template_rotates_on_its_own(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """{session_id} paths: every session's file rotates into its own rotated files."""
    template = tmp_path / "{session_id}.jsonl"
    log = await make_logger(sinks=[FileSink(template, rotate_bytes=2000)])
    for sid in ("a", "b"):
        await log.start_session(sid)
    for r in range(12):
        for sid in ("a", "b"):
            for i in range(3):
                await log.log_entry(sid, f"{sid} {r} {i} " + "p" * 60)
        await log.save_logs()
    for sid in ("a", "b"):
        await log.close_session(sid)
    assert (await finish(make_logger, log)).ok
    for sid in ("a", "b"):
        live = tmp_path / f"{sid}.jsonl"
        rotated = FileSink.rotated_files(live)
        assert len(rotated) >= 3
        assert all(Path(r).name.startswith(f"{sid}.") for r in rotated)
        assert {e["session_id"] for e in read_entries(*rotated, live)} == {sid}
        assert seqs_in(*rotated, str(live)) == list(range(12 * 3 + 2))


async def test_method_file_takes_rotation_options(tmp_path: Path) -> None:
    """method='file' passes file={...} options through to the sink."""
    path = tmp_path / "app.jsonl"
    async with AsyncSessionLogger(
        method="file", path=path, file={"rotate_bytes": 2000}, dead_letter_path=None
    ) as alog:
        await alog.start_session("s")
        await log_rounds(alog, "s", rounds=10, per_round=5)
        await alog.close_session("s")
    assert len(rotated_names(tmp_path)) >= 5
    assert seqs_in(*all_files(path)) == list(range(52))


# -- time rotation ------------------------------------------------------------------------------
async def test_hourly_rotation_happens_at_the_utc_boundary(tmp_path: Path) -> None:
    """rotate_every='hourly': the first batch after each UTC hour starts a new file."""
    path = tmp_path / "app.jsonl"
    sink = FileSink(path, rotate_every="hourly")
    clock = sink._clock = Clock(at(2026, 11, 24, 10, 59, 59, 500000))
    await sink.open()
    await sink.write_batch(make_batch(range(0, 5)))
    clock.now = at(2026, 11, 24, 10, 59, 59, 999999)
    await sink.write_batch(make_batch(range(5, 10)))  # same hour: no rotation
    clock.now = at(2026, 11, 24, 11, 0, 0, 250000)
    await sink.write_batch(make_batch(range(10, 15)))
    clock.now = at(2026, 11, 24, 11, 59, 59)
    await sink.write_batch(make_batch(range(15, 20)))
    clock.now = at(2026, 11, 24, 13, 30)  # an idle hour is skipped, not a file per hour
    await sink.write_batch(make_batch(range(20, 25)))
    await sink.close()
    assert rotated_names(tmp_path) == [
        "app.20261124T110000.250000Z.jsonl",
        "app.20261124T133000.000000Z.jsonl",
    ]
    first, second = (str(tmp_path / n) for n in rotated_names(tmp_path))
    assert seqs_in(first) == list(range(10))
    assert seqs_in(second) == list(range(10, 20))
    assert seqs_in(str(path)) == list(range(20, 25))


async def test_daily_rotation_rotates_a_file_left_from_an_earlier_day(tmp_path: Path) -> None:
    """A live file last written yesterday (UTC) is rotated before today's first batch."""
    path = tmp_path / "app.jsonl"
    path.write_bytes(make_batch(range(0, 3), session_id="old").data)
    yesterday = time.time() - 86400
    os.utime(path, (yesterday, yesterday))
    sink = FileSink(path, rotate_every="daily")
    await sink.open()
    await sink.write_batch(make_batch(range(0, 2), session_id="new"))
    await sink.write_batch(make_batch(range(2, 4), session_id="new"))  # same day: no rotation
    await sink.close()
    [old] = FileSink.rotated_files(path)
    assert {e["session_id"] for e in read_entries(old)} == {"old"}
    assert seqs_in(str(path), session_id="new") == [0, 1, 2, 3]


async def test_tiny_interval_rotates_in_real_time(make_logger: FaceFactory, tmp_path: Path) -> None:
    """rotate_every=0.25 s: logging for ~1.5 s leaves several files and every entry."""
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path, rotate_every=0.25)])
    await log.start_session("s")
    deadline = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < deadline:
        await log.log_entry("s", f"entry {n}")
        n += 1
        if n % 10 == 0:
            await log.save_logs()
            await asyncio.sleep(0.02)
    await log.close_session("s")
    assert (await finish(make_logger, log)).ok
    assert len(rotated_names(tmp_path)) >= 3
    assert seqs_in(*all_files(path)) == list(range(n + 2))


# -- retention ----------------------------------------------------------------------------------
UNRELATED = [
    "app.jsonl.bak",
    "app.backup.jsonl",
    "other.20200101T000000.000000Z.jsonl",
    "app.20200101T000000.000000Z.txt",
    "app.20201399T000000.000000Z.jsonl",  # no such month: not a stamp
    "app.2020-01-01.jsonl",
]


@pytest.mark.parametrize("compress", [None, "gzip"])
async def test_keep_leaves_the_newest_rotated_files_only(
    make_logger: FaceFactory, tmp_path: Path, compress: Any
) -> None:
    """keep=3: three rotated files stay (the newest), beside the live file and unrelated files."""
    for name in UNRELATED:
        (tmp_path / name).write_text("not ours\n")
    path = tmp_path / "app.jsonl"
    sink = FileSink(path, rotate_bytes=2000, keep=3, compress=compress)
    log = await make_logger(sinks=[sink])
    await log.start_session("s")
    await log_rounds(log, "s", rounds=25, per_round=5)
    await log.close_session("s")
    report = await finish(make_logger, log)
    assert report.ok and not log.errors
    details = report["file"].details
    assert details["rotations"] >= 10
    names = rotated_names(tmp_path)
    assert len(names) == 3
    assert all(n.endswith(".gz") for n in names) == (compress == "gzip")
    assert details["expired"] == details["rotations"] - 3
    for name in UNRELATED:
        assert (tmp_path / name).read_text() == "not ours\n"
    # What is left is the tail of the stream: contiguous seqs up to the close entry.
    left = seqs_in(*all_files(path))
    assert left == list(range(left[0], 25 * 5 + 2))
    assert left[0] > 0


async def test_max_age_deletes_rotated_files_older_than_it(tmp_path: Path) -> None:
    """max_age: rotated files stamped longer ago go (at start and after rotations), others stay."""
    for name in UNRELATED:
        (tmp_path / name).write_text("not ours\n")
    path = tmp_path / "app.jsonl"
    siblings = _rotation.Siblings(str(path))
    now_us = int(time.time() * 1_000_000)
    old = siblings.name(now_us - 3 * 3600 * 1_000_000)
    old_gz = siblings.name(now_us - 2 * 3600 * 1_000_000) + ".gz"
    recent = siblings.name(now_us - 10 * 60 * 1_000_000)
    for name in (old, old_gz, recent):
        write(name, b"{}\n")
    sink = FileSink(path, rotate_bytes=500, max_age=dt.timedelta(hours=1))
    await sink.open()  # sweeps at start-up, in the background
    await sink.close()
    assert not exists(old) and not exists(old_gz)
    assert exists(recent) and exists(path)
    assert sink.stats()["expired"] == 2
    # Later, after a rotation: the clock moved on, so the recent file has aged out too.
    sink = FileSink(path, rotate_bytes=500, max_age=3600)
    sink._clock = Clock(time.time() + 2 * 3600)
    await sink.open()
    for n in range(4):
        await sink.write_batch(make_batch(range(n * 5, n * 5 + 5)))
    await sink.close()
    assert not exists(recent)
    assert len(FileSink.rotated_files(path)) == sink.stats()["rotations"] >= 1
    for name in UNRELATED:
        assert (tmp_path / name).read_text() == "not ours\n"


# -- compression --------------------------------------------------------------------------------
async def test_gzip_holds_exactly_the_rotated_entries(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """compress='gzip': every rotated file is a complete .gz; together with the live file, every
    entry once, in order; no plain rotated file or .tmp is left."""
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path, rotate_bytes=3000, compress="gzip")])
    await log.start_session("s")
    await log_rounds(log, "s", rounds=20, per_round=6)
    await log.close_session("s")
    report = await finish(make_logger, log)
    assert report.ok and not log.errors
    rotated = [n for n in app_names(tmp_path) if n != "app.jsonl"]
    assert len(rotated) >= 5
    assert all(n.endswith(".jsonl.gz") and ROTATED.match(n) for n in rotated)
    assert report["file"].details["compressed"] == len(rotated)
    for name in rotated:
        with gzip.open(tmp_path / name) as fh:  # a complete gzip stream (CRC checked at EOF)
            assert fh.read().endswith(b"\n")
    in_gz = seqs_in(*(str(tmp_path / n) for n in rotated))
    live = seqs_in(str(path))
    assert in_gz + live == list(range(20 * 6 + 2))


async def test_compression_failure_is_reported_and_keeps_the_plain_file(
    make_logger: FaceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip that fails (disk full) is reported; the plain rotated file stays, nothing lost."""

    def disk_full(src: Any, dst: Any) -> None:
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_rotation, "_copy", disk_full)
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path, rotate_bytes=2000, compress="gzip")])
    await log.start_session("s")
    await log_rounds(log, "s", rounds=8, per_round=5)
    await log.close_session("s")
    report = await finish(make_logger, log)
    assert report.ok  # logging itself never failed
    rotated = [n for n in app_names(tmp_path) if n != "app.jsonl"]
    assert rotated and all(ROTATED.match(n) and not n.endswith(".gz") for n in rotated)
    assert report["file"].details["compressed"] == 0
    compress_errors = [e for e in log.errors if "could not compress" in str(e)]
    assert len(compress_errors) == len(rotated)
    assert all(isinstance(e, SinkError) and e.sink_name == "file" for e in compress_errors)
    assert "No space left" in str(compress_errors[0].__cause__)
    assert seqs_in(*all_files(path)) == list(range(8 * 5 + 2))


async def test_a_later_run_compresses_files_left_plain(tmp_path: Path) -> None:
    """Plain rotated files (a crash, an earlier failure) are gzipped when the sink opens; a stale
    .gz.tmp is taken over, a fresh one (another process compressing) is left alone."""
    path = tmp_path / "app.jsonl"
    siblings = _rotation.Siblings(str(path))
    now_us = int(time.time() * 1_000_000)
    plain, crashed, busy, twice = (siblings.name(now_us - n * 10**6) for n in (4, 3, 2, 1))
    for n, name in enumerate((plain, crashed, busy, twice)):
        write(name, make_batch(range(n * 3, n * 3 + 3)).data)
    write(twice + ".gz", gzip.compress(make_batch(range(9, 12)).data))  # crashed before delete
    write(crashed + ".gz.tmp", b"half a gzip")
    hour_ago = time.time() - 3600
    os.utime(crashed + ".gz.tmp", (hour_ago, hour_ago))
    write(busy + ".gz.tmp", b"being written")
    sink = FileSink(path, rotate_bytes=10_000, compress="gzip")
    await sink.open()
    await sink.close()
    rotated = [plain + ".gz", crashed + ".gz", busy, twice + ".gz"]
    assert FileSink.rotated_files(path) == rotated
    assert seqs_in(*rotated) == list(range(12))
    assert exists(busy + ".gz.tmp") and not exists(crashed + ".gz.tmp")
    assert sink.stats()["compressed"] == 2


async def test_compression_runs_off_the_event_loop(tmp_path: Path) -> None:
    """While a ~60 MB rotated file compresses, the loop keeps ticking and logging goes on."""
    path = tmp_path / "app.jsonl"
    block = b"".join(
        orjson.dumps({"session_id": "pre", "seq": i, "event": "log", "r": os.urandom(48).hex()})
        + b"\n"
        for i in range(10_000)
    )
    # Random lines, repeated farther apart than gzip's 32 KiB window: slow to deflate.
    write(path, block * (60_000_000 // len(block)))
    lags: list[float] = []  # how late each 5 ms tick woke, from the rotation on

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - before - 0.005)

    async with AsyncSessionLogger(
        sinks=[FileSink(path, rotate_bytes=50_000_000, compress="gzip")], dead_letter_path=None
    ) as alog:
        await alog.start_session("s")
        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        await alog.log_entry("s", "first")  # the file is past the limit: it rotates
        await alog.save_logs()
        plain = _rotation.Siblings(str(path)).files()[0].removesuffix(".gz")
        logged = 0
        while not exists(plain + ".gz") and time.monotonic() - started < 60:
            await alog.log_entry("s", f"during compression {logged}")
            logged += 1
            if logged % 20 == 0:
                await alog.save_logs()  # delivered while the compression still runs
            await asyncio.sleep(0.005)
        duration = time.monotonic() - started
        ticking.cancel()
        await alog.close_session("s")
    assert exists(plain + ".gz") and not exists(plain) and not exists(plain + ".gz.tmp")
    # The test can only fail if the compression takes long enough to be seen on the loop.
    assert duration > 0.3, f"compression took only {duration:.2f} s"
    worst = max(lags)
    assert worst < duration / 2, f"the loop stalled {worst:.3f} s during a {duration:.2f} s gzip"
    assert len(lags) >= duration / 0.05  # ticking all along (at least every 50 ms on average)
    assert logged >= 20
    assert seqs_in(str(path), session_id="s") == list(range(logged + 3))


# -- fsync --------------------------------------------------------------------------------------
Syncs = list[tuple[int, int]]


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    """Record (inode, size) of every fsync/fdatasync, then do the real call."""
    calls: Syncs = []

    def counted(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            st = os.fstat(fd)
            calls.append((st.st_ino, st.st_size))
            real(fd)

        return sync

    monkeypatch.setattr(os, "fsync", counted(os.fsync))
    if hasattr(os, "fdatasync"):
        monkeypatch.setattr(os, "fdatasync", counted(os.fdatasync))
    return calls


async def test_fsync_never_does_not_sync(
    make_logger: FaceFactory, tmp_path: Path, syncs: Syncs
) -> None:
    """fsync='never' (the default) leaves write-back to the OS."""
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path)])
    await log.start_session("s")
    await log_rounds(log, "s", rounds=5, per_round=3)
    await finish(make_logger, log)
    assert [s for s in syncs if s[0] == path.stat().st_ino] == []


async def test_fsync_batch_flushes_each_batch_before_it_is_delivered(
    make_logger: FaceFactory, tmp_path: Path, syncs: Syncs
) -> None:
    """fsync='batch': when save_logs returns, the file was synced at its current size."""
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path, fsync="batch")])
    await log.start_session("s")
    await log.save_logs()
    ino = path.stat().st_ino
    for r in range(10):
        for i in range(3):
            await log.log_entry("s", f"{r} {i}")
        await log.save_logs()
        ours = [size for inode, size in syncs if inode == ino]
        assert ours and ours[-1] == path.stat().st_size
    assert len([s for s in syncs if s[0] == ino]) >= 11
    report = await finish(make_logger, log)
    assert report["file"].details["fsyncs"] >= 11


async def test_fsync_interval_syncs_at_most_that_often_and_at_close(
    make_logger: FaceFactory, tmp_path: Path, syncs: Syncs
) -> None:
    """fsync=0.2: while logging steadily, a flush at most every 0.2 s, and one at close."""
    path = tmp_path / "app.jsonl"
    log = await make_logger(sinks=[FileSink(path, fsync=0.2)])
    await log.start_session("s")
    await log.save_logs()
    ino = path.stat().st_ino
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 1.2:
        await log.log_entry("s", f"entry {n}")
        n += 1
        if n % 5 == 0:
            await log.save_logs()
            await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    during = len([s for s in syncs if s[0] == ino])
    assert 2 <= during <= elapsed / 0.2 + 2
    await log.log_entry("s", "last")
    await finish(make_logger, log)
    ours = [size for inode, size in syncs if inode == ino]
    assert ours[-1] == path.stat().st_size  # the close flushed everything


async def test_fsync_is_checked() -> None:
    """fsync takes 'never', 'batch' or positive seconds."""
    bad_values: list[Any] = ["always", 0, -1, True, None]
    for bad in bad_values:
        with pytest.raises(ConfigurationError, match="fsync"):
            FileSink("x.jsonl", fsync=bad)


# -- reopen -------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "renamed", "directory deleted"])
async def test_a_file_removed_under_the_writer_is_reopened(
    make_logger: FaceFactory, tmp_path: Path, how: str
) -> None:
    """rm or mv of the live file (or rm -r of its directory): the next batch goes to a new
    file at the path."""
    path = tmp_path / "logs" / "app.jsonl"
    moved = tmp_path / "moved.jsonl"
    log = await make_logger(sinks=[FileSink(path)])
    await log.start_session("s")
    await log_rounds(log, "s", rounds=1, per_round=4)
    if how == "deleted":
        path.unlink()
    elif how == "renamed":
        path.rename(moved)
    else:
        shutil.rmtree(path.parent)
    await log_rounds(log, "s", rounds=1, per_round=4)
    await log.close_session("s")
    report = await finish(make_logger, log)
    assert report.ok and not log.errors
    assert [e["seq"] for e in read_lines(path)] == list(range(5, 10))
    if how == "renamed":
        assert [e["seq"] for e in read_lines(moved)] == list(range(5))
    assert report["file"].details["reopens"] == 1


async def test_reopen_can_be_turned_off(tmp_path: Path) -> None:
    """reopen=False: no stat per batch; a deleted file keeps receiving (as before this option)."""
    path = tmp_path / "app.jsonl"
    sink = FileSink(path, reopen=False)
    await sink.open()
    await sink.write_batch(make_batch(range(2)))
    path.unlink()
    await sink.write_batch(make_batch(range(2, 4)))
    await sink.close()
    assert not path.exists()
    assert sink.stats()["reopens"] == 0


# -- failures -----------------------------------------------------------------------------------
async def test_a_failed_rotation_is_reported_once_and_retried_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename that fails: reported once, entries keep going to the live file, retried later."""
    path = tmp_path / "app.jsonl"
    errors: list[SinkError] = []
    real_rotate = _rotation.rotate

    def refuse(*args: Any) -> str | None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_rotation, "rotate", refuse)
    sink = FileSink(path, rotate_bytes=500)
    clock = sink._clock = Clock(time.time())
    sink.attach(errors.append)
    await sink.open()
    for n in range(6):
        await sink.write_batch(make_batch(range(n * 5, n * 5 + 5)))
    assert len(errors) == 1 and "could not rotate" in str(errors[0])
    assert isinstance(errors[0].__cause__, PermissionError)
    assert seqs_in(str(path)) == list(range(30))
    monkeypatch.setattr(_rotation, "rotate", real_rotate)
    clock.now += 10  # past the retry delay
    await sink.write_batch(make_batch(range(30, 35)))
    await sink.close()
    assert len(errors) == 1
    assert [seqs_in(f) for f in all_files(path)] == [list(range(30)), list(range(30, 35))]


def test_a_peer_holding_the_lock_fails_the_rotation_not_the_sink(tmp_path: Path) -> None:
    """A process that holds a lock on the file and never lets go (stopped, in a debugger):
    the rotation fails within the sink's timeout and is reported; every entry is appended,
    and the other file sink, which shares the I/O threads, is not held up."""
    path, other = tmp_path / "app.jsonl", tmp_path / "other.jsonl"
    path.write_bytes(b'{"x":1}\n' * 100)
    holder = (
        "import fcntl, sys, time\n"
        f"f = open({str(path)!r}, 'ab')\n"
        "fcntl.flock(f, fcntl.LOCK_SH)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    peer = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"locked\n"
        errors: list[SinkError] = []
        sinks = [
            FileSink(path, rotate_bytes=1000, timeout=0.3, retries=0, name="rot"),
            FileSink(other, fsync="batch", timeout=0.3, retries=0, name="other"),
        ]
        started = time.monotonic()
        with SessionLogger(sinks=sinks, on_error=errors.append, dead_letter_path=None) as log:
            log.start_session("s")
            for i in range(8):
                log.log_entry("s", f"m{i}")
                report = log.save_logs(timeout=5)
                assert report["rot"].failed == report["other"].failed == 0
        assert time.monotonic() - started < 10
        assert report["rot"].delivered == report["other"].delivered == 9
        assert [e["seq"] for e in read_lines(path)[100:]] == list(range(10))  # + close
        assert any("could not rotate" in str(e) for e in errors)
        assert isinstance(errors[0].__cause__, TimeoutError)
    finally:
        peer.kill()
        peer.wait()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rotate_bytes": 0}, "rotate_bytes"),
        ({"rotate_bytes": 1.5}, "rotate_bytes"),
        ({"rotate_every": "weekly"}, "rotate_every"),
        ({"rotate_every": 0}, "rotate_every"),
        ({"rotate_bytes": 10, "keep": -1}, "keep"),
        ({"rotate_bytes": 10, "max_age": 0}, "max_age"),
        ({"rotate_bytes": 10, "compress": "zip"}, "compress"),
        ({"keep": 3}, "rotate_bytes or rotate_every"),
        ({"compress": "gzip"}, "rotate_bytes or rotate_every"),
    ],
)
def test_rotation_options_are_checked(options: dict[str, Any], match: str) -> None:
    """Bad rotation options are configuration errors at construction."""
    with pytest.raises(ConfigurationError, match=match):
        FileSink("app.jsonl", **options)


# -- several processes --------------------------------------------------------------------------
N = 25_000
WORKER = """
import sys
from async_session_logger import SessionLogger
from async_session_logger.sinks import FileSink

path, n, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
sink = FileSink(path, rotate_bytes=150_000, compress="gzip")
with SessionLogger(sinks=[sink], dead_letter_path=None) as logger:
    sid = "proc-" + n
    logger.start_session(sid)
    for i in range(N):
        logger.log_entry(sid, "entry %d from %s" % (i, n), 20, {"i": i, "pad": "p" * 60})
        if i % 100 == 0:
            logger.save_logs()  # many small batches: many chances to race a rotation
    logger.close_session(sid)
"""


def test_processes_rotating_one_file_lose_nothing(tmp_path: Path) -> None:
    """4 processes append to one rotating, gzipping file: every entry once, every line valid."""
    path = tmp_path / "app.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(n), str(N)], env=env)
        for n in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    rotated = [n for n in names if n != "app.jsonl"]
    assert len(rotated) >= 10
    assert all(ROTATED.match(n) and n.endswith(".gz") for n in rotated)
    files = all_files(path)
    for n in range(4):
        assert seqs_in(*files, session_id=f"proc-{n}") == list(range(N + 2))


# -- the example --------------------------------------------------------------------------------
def test_rotating_files_example(tmp_path: Path) -> None:
    """examples/rotating_files.py writes gzipped rotated files and reads every session back."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rotating_files.py"), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rotated = rotated_names(tmp_path)
    assert len(rotated) >= 3 and all(n.endswith(".gz") for n in rotated)
    sessions = read_sessions(*all_files(tmp_path / "app.jsonl"))
    assert [s.session_id for s in sessions] == ["job-0", "job-1", "job-2"]
    assert all(s.status == "closed" and not s.missing_seqs for s in sessions)
    assert result.stdout.count(", whole") == 3
