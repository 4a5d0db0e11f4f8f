"""The collector's files when the disk fills up: whole lines only, nothing lost once it frees."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from async_session_logger._oswrite import write_all
from async_session_logger.cli import _store
from async_session_logger.cli._store import Store

from ..conftest import MountFactory


def _line(seq: int) -> bytes:
    return json.dumps(
        {"session_id": "a", "seq": seq, "event": "log", "message": "m" * (60 + seq % 7)},
        separators=(",", ":"),
    ).encode()


def _fill(path: Path) -> None:
    """Take every free block of the filesystem."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)


def _whole_lines(path: Path) -> list[int]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a half-written line is left in the file"
    return [json.loads(line)["seq"] for line in data.splitlines()]


def test_a_disk_full_mid_line_keeps_the_file_whole_and_writes_the_rest_later(
    tmpfs: MountFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real tmpfs fills up mid-line: no torn line, and every entry once when it frees."""
    small_disk = tmpfs(size="64k")
    store = Store(str(small_disk), "session")
    path = store.path_for("a", {})
    for seq in range(3):
        store.add(path, _line(seq))
    store.flush()
    _fill(small_disk / "filler")
    for seq in range(3, 400):
        store.add(path, _line(seq))
    total = sum(len(_line(seq)) + 1 for seq in range(3, 400))
    store.flush()  # what fits in the file's last block is written, the disk refuses the rest
    assert "No space left on device; keeping entries in memory" in capsys.readouterr().err
    on_disk = _whole_lines(Path(path))
    assert 3 < len(on_disk) < 400, "the write must have been cut part-way"
    assert store.pending_bytes == total - sum(len(_line(s)) + 1 for s in on_disk[3:])
    store.flush()  # still full: reopens the file and fails again, still whole lines
    assert _whole_lines(Path(path)) == on_disk
    os.unlink(small_disk / "filler")
    store.flush()
    store.close()
    assert "writing works again" in capsys.readouterr().err
    assert store.pending_bytes == 0
    assert _whole_lines(Path(path)) == list(range(400))
    assert Path(path).read_bytes() == b"".join(_line(seq) + b"\n" for seq in range(400))


def test_a_half_line_that_cannot_be_cut_off_is_completed_not_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """If the torn line cannot be truncated away, the reopened file is not 'repaired' first."""
    store = Store(str(tmp_path), "session")
    path = store.path_for("a", {})
    for seq in range(3):
        store.add(path, _line(seq))
    real_write_all = write_all
    calls = 0

    def disk_full_after_50_bytes(fd: int, data: bytes) -> tuple[int, OSError | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            os.write(fd, data[:50])
            return 50, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_all(fd, data)

    def refuse(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_store, "write_all", disk_full_after_50_bytes)
    monkeypatch.setattr(os, "ftruncate", refuse)
    store.flush()
    store.flush()
    store.close()
    assert _whole_lines(Path(path)) == [0, 1, 2]
    assert capsys.readouterr().err.count("warning") == 2
