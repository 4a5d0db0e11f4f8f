"""FileSink and symlinks planted at its predictable names: never followed, never widened."""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from async_session_logger import SessionLogger, SinkError, read_dead_letters
from async_session_logger.sinks import Batch, FileSink, _rotation

from ..conftest import SECRET, FaceFactory, read_lines


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run with the usual umask, so files created with 0o666 come out 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def batch(seqs: range, session_id: str = "s") -> Batch:
    """Return a batch of schema-shaped log entries with these seqs (~80-byte lines)."""
    entries = [
        {"session_id": session_id, "seq": i, "event": "log", "message": "m" * 40} for i in seqs
    ]
    return Batch(entries, b"".join(orjson.dumps(e) + b"\n" for e in entries))


def rotated_name(path: Path, seconds_ago: float) -> Path:
    """Return a rotated-file name of ``path`` for a rotation ``seconds_ago``."""
    us = int((time.time() - seconds_ago) * 1_000_000)
    return Path(_rotation.Siblings(str(path)).name(us))


def plant(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (what an attacker does)."""
    link.symlink_to(target)


def exists(path: Path | str) -> bool:
    """Return whether anything, even a dangling link, is at ``path``."""
    return os.path.lexists(path)


def write(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with these permission bits."""
    path.write_bytes(data)
    path.chmod(mode)


def read(path: Path) -> bytes:
    """Return the content of ``path``."""
    return path.read_bytes()


def mode(path: Path | str) -> int:
    """Return the permission bits of ``path`` (not following a link)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_untouched(target: Path, link: Path) -> None:
    """The link's target kept its content and mode, and the link is still a link to it."""
    assert target.read_bytes() == SECRET and mode(target) == 0o600
    assert link.is_symlink() and os.readlink(link) == str(target)


# -- the live file ------------------------------------------------------------------------------
async def test_a_link_at_the_live_path_is_a_sink_failure_never_written_through(
    make_logger: FaceFactory, tmp_path: Path, secret: Path
) -> None:
    """A symlink at log_{date}.jsonl: the logger starts, every entry is retried and
    dead-lettered (the reason names the link), reported; the target is never appended to."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    link = tmp_path / f"log_{today}.jsonl"
    link.symlink_to(secret)
    dead = tmp_path / "dead.jsonl"
    log = await make_logger(
        sinks=[FileSink(tmp_path / "log_{date}.jsonl", retries=1)], dead_letter_path=dead
    )
    await log.start_session("s")
    await log.log_entry("s", "would land in the target")
    await log.close_session("s")
    report = await log.save_logs()
    assert_untouched(secret, link)
    assert (report["file"].delivered, report["file"].dead_lettered) == (0, 3)
    assert report["file"].retried >= 3
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["seq"] for d in letters] == [0, 1, 2]
    assert all("is a symbolic link" in d["reason"] for d in letters)
    assert log.errors and "is a symbolic link" in str(log.errors[0].__cause__)


async def test_a_link_swapped_in_for_the_live_file_is_refused(
    make_logger: FaceFactory, tmp_path: Path, secret: Path
) -> None:
    """The live file replaced by a link while the logger runs: the next batch is not written
    through it (reopen refuses it); the entries before it are in the file that was moved."""
    path = tmp_path / "app.jsonl"
    dead = tmp_path / "dead.jsonl"
    log = await make_logger(sinks=[FileSink(path, retries=0)], dead_letter_path=dead)
    await log.start_session("s")
    await log.log_entry("s", "before")
    await log.save_logs()
    path.rename(tmp_path / "moved.jsonl")
    path.symlink_to(secret)
    await log.log_entry("s", "after")
    await log.close_session("s")
    report = await log.save_logs()
    assert_untouched(secret, path)
    assert [e["seq"] for e in read_lines(tmp_path / "moved.jsonl")] == [0, 1]
    assert (report["file"].delivered, report["file"].dead_lettered) == (2, 2)
    assert [d["entry"]["seq"] for d in read_dead_letters(dead)] == [2, 3]


async def test_a_link_at_a_directory_a_placeholder_fills_is_not_followed(
    make_logger: FaceFactory, tmp_path: Path, secret: Path
) -> None:
    """logs/{date}/app.jsonl with logs/<today> planted as a link to another directory: nothing
    is created or appended there; the entries are dead-lettered, the reason names the link."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    logs = tmp_path / "logs"
    logs.mkdir()
    plant(logs / today, secret.parent)
    dead = tmp_path / "dead.jsonl"
    log = await make_logger(
        sinks=[FileSink(logs / "{date}" / "sub" / "app.jsonl", retries=0)], dead_letter_path=dead
    )
    await log.start_session("s")
    await log.close_session("s")
    report = await log.save_logs()
    assert sorted(p.name for p in secret.parent.iterdir()) == ["shadow"]
    assert read(secret) == SECRET
    assert (report["file"].delivered, report["file"].dead_lettered) == (0, 2)
    letters = list(read_dead_letters(dead))
    assert all("is a symbolic link" in d["reason"] and today in d["reason"] for d in letters)


def test_a_link_found_at_rotation_time_is_not_renamed_as_the_live_file(
    tmp_path: Path, secret: Path
) -> None:
    """rotate() on a path that now holds a link (even to the same file): nothing renamed."""
    path = tmp_path / "app.jsonl"
    path.write_bytes(batch(range(3)).data)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        real = tmp_path / "real.jsonl"
        path.rename(real)
        path.symlink_to(real)  # same inode behind the link: a stat() would have matched
        assert _rotation.rotate(str(path), fd, (st.st_dev, st.st_ino), 10**15, 1.0) is None
    finally:
        os.close(fd)
    assert path.is_symlink() and _rotation.Siblings(str(path)).scan(anything=True) == {}


def test_a_swap_between_the_check_and_the_rename_fails_the_rotation(
    tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaced by a link just before the rename: rotate() raises (a failed rotation, retried
    later) instead of returning the link as a rotated file to compress."""
    path = tmp_path / "app.jsonl"
    path.write_bytes(batch(range(3)).data)
    real_scan = _rotation.Siblings.scan

    def attacker_wins_the_race(self: _rotation.Siblings, **options: Any) -> Any:
        os.rename(path, tmp_path / "elsewhere.jsonl")
        os.symlink(secret, path)
        return real_scan(self, **options)

    monkeypatch.setattr(_rotation.Siblings, "scan", attacker_wins_the_race)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        with pytest.raises(OSError, match="replaced while it was being rotated"):
            _rotation.rotate(str(path), fd, (st.st_dev, st.st_ino), 10**15, 1.0)
    finally:
        os.close(fd)
    assert secret.read_bytes() == SECRET


# -- rotated files ------------------------------------------------------------------------------
async def test_a_planted_link_with_a_rotated_name_is_left_alone_and_reported(
    tmp_path: Path, secret: Path
) -> None:
    """A link named like a rotated file: not compressed (its target never read), not deleted
    by retention, not listed by rotated_files(), reported once."""
    path = tmp_path / "app.jsonl"
    link = rotated_name(path, 60)
    plant(link, secret)
    errors: list[SinkError] = []
    sink = FileSink(path, rotate_bytes=400, compress="gzip", keep=0)
    sink.attach(errors.append)
    await sink.open()
    for n in range(4):
        await sink.write_batch(batch(range(n * 4, n * 4 + 4)))
    await sink.close()
    assert_untouched(secret, link)
    assert not exists(f"{link}.gz") and not exists(f"{link}.gz.tmp")
    assert str(link) not in FileSink.rotated_files(path)
    assert sink.stats()["rotations"] >= 2  # the sink's own rotated files were expired (keep=0)
    assert FileSink.rotated_files(path) == []
    strangers = [e for e in errors if "has a rotated file's name" in str(e)]
    assert len(strangers) == 1 and str(link) in str(strangers[0])
    assert not [e for e in errors if "could not compress" in str(e)]


def test_compress_refuses_a_link_and_anything_not_regular(tmp_path: Path, secret: Path) -> None:
    """compress() on a link raises ELOOP and on a FIFO raises at once (no hang): the target is
    not read, nothing is created or deleted."""
    link = tmp_path / "app.20260101T000000.000000Z.jsonl"
    link.symlink_to(secret)
    with pytest.raises(OSError) as caught:
        _rotation.compress(str(link))
    assert caught.value.errno == errno.ELOOP and "symbolic link" in str(caught.value)
    fifo = tmp_path / "app.20260101T000001.000000Z.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        _rotation.compress(str(fifo))
    assert_untouched(secret, link)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["private", link.name, fifo.name])


async def test_gzip_keeps_the_rotated_files_permissions(tmp_path: Path, umask_022: None) -> None:
    """A 0600 live file rotates into 0600 .gz files (not the umask's 0644); a 0640 leftover
    plain file is compressed to 0640."""
    path = tmp_path / "app.jsonl"
    write(path, b"", 0o600)
    leftover = rotated_name(path, 60)
    write(leftover, batch(range(100, 103)).data, 0o640)
    sink = FileSink(path, rotate_bytes=400, compress="gzip")
    await sink.open()
    for n in range(4):
        await sink.write_batch(batch(range(n * 4, n * 4 + 4)))
    await sink.close()
    rotated = FileSink.rotated_files(path)
    assert len(rotated) >= 3 and all(name.endswith(".gz") for name in rotated)
    assert rotated[0] == f"{leftover}.gz" and mode(rotated[0]) == 0o640
    assert {mode(name) for name in rotated[1:]} == {0o600}
    with gzip.open(rotated[0]) as fh:
        assert fh.read() == batch(range(100, 103)).data


def test_sessionlogger_with_a_planted_link_starts_and_loses_nothing_silently(
    tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """method='file' in a directory where log_{date}.jsonl is a link: the constructor does not
    raise, close() reports the entries dead-lettered, the target is untouched."""
    monkeypatch.chdir(tmp_path)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    link = tmp_path / f"log_{today}.jsonl"
    link.symlink_to(secret)
    errors: list[SinkError] = []
    logger = SessionLogger(method="file", file={"retries": 0}, on_error=errors.append)
    logger.start_session("001")
    logger.close_session("001")
    report = logger.close()
    assert_untouched(secret, link)
    assert not report.ok and report["file"].dead_lettered == 2
    assert [d["entry"]["event"] for d in read_dead_letters(tmp_path / "dead_letters.jsonl")] == [
        "session_start",
        "session_close",
    ]
