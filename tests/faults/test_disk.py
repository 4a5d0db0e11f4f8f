"""The file sink on a real disk that fills up or refuses writes, beside a sink that does not."""

from __future__ import annotations

import time
from pathlib import Path

from async_session_logger import SessionLogger, SinkError, read_dead_letters
from async_session_logger.sinks import FileSink, MemorySink

from .conftest import (
    MountFactory,
    assert_accounted,
    assert_report_accounted,
    chattr,
    parse_file,
    wait_until,
)

PAD = "x" * 60  # ~150 bytes a line: 5,000 entries are ~750 KB, three times the disk


def test_disk_full_beside_another_sink_accounts_for_every_entry(
    tmp_path: Path, tmpfs: MountFactory
) -> None:
    """A 256 KiB tmpfs fills up: the file keeps whole lines, the rest is dead-lettered on
    another filesystem and counted; the memory sink gets everything; the app sees nothing."""
    disk = tmpfs("disk", "256k")
    path, dead = disk / "log.jsonl", tmp_path / "dead.jsonl"
    memory = MemorySink()
    errors: list[SinkError] = []
    logger = SessionLogger(
        sinks=[FileSink(path, retries=1), memory],
        dead_letter_path=dead,
        on_error=errors.append,
        batch_size=200,
    )
    logger.start_session("full", metadata={"disk": "256k"})
    for i in range(5000):
        logger.log_entry("full", f"entry {i:05d} {PAD}", "INFO", {"i": i})
    logger.close_session("full")
    report = logger.save_logs()
    health = logger.health()
    final = logger.close()

    accepted = 5002
    assert final.accepted == accepted
    assert_report_accounted(final, dead)
    file_stats = final["file"]
    assert file_stats.delivered > 0 and file_stats.dead_lettered > 0 and file_stats.lost == 0
    assert "No space left on device" in (file_stats.last_error or "")
    assert report["file"].dead_lettered == file_stats.dead_lettered  # nothing after the barrier
    assert health["sinks"] == {"file": False, "memory": True}
    # The other sink, on a healthy filesystem, has every entry in order.
    assert final["memory"].delivered == accepted
    assert [e["seq"] for e in memory.entries] == list(range(accepted))
    # What the file holds: whole lines of delivered entries, at most one torn fragment.
    written, torn = parse_file(path)
    assert torn <= 1
    written_seqs = [e["seq"] for e in written]
    assert written_seqs == sorted(set(written_seqs)), "no duplicates, in order"
    dead_seqs = [d["entry"]["seq"] for d in read_dead_letters(dead)]
    assert len(written_seqs) == file_stats.delivered
    assert len(dead_seqs) == file_stats.dead_lettered
    assert set(written_seqs).isdisjoint(dead_seqs)
    assert set(written_seqs) | set(dead_seqs) == set(range(accepted))
    assert all(d["sink"] == "file" for d in read_dead_letters(dead))
    # Reported once for the incident plus once at close, not once per failed batch.
    assert 1 <= len(errors) <= 5, [str(e) for e in errors]
    assert "No space left" in str(errors[0].__cause__)


def test_dead_letter_disk_full_too_counts_the_loss(tmp_path: Path, tmpfs: MountFactory) -> None:
    """The log on /dev/full, the dead letters on a 64 KiB tmpfs that fills up part-way: what the
    dead-letter file holds is exactly what is counted dead-lettered, the rest is counted lost
    and reported as lost; the memory sink has everything."""
    dead = tmpfs("dead", "64k") / "dead.jsonl"
    memory = MemorySink()
    errors: list[SinkError] = []
    logger = SessionLogger(
        sinks=[FileSink("/dev/full", retries=0), memory],
        dead_letter_path=dead,
        on_error=errors.append,
        batch_size=200,
    )
    logger.start_session("both")
    for i in range(50):
        logger.log_entry("both", f"entry {i:05d} {PAD}")
    first = logger.save_logs()  # a small first batch: its dead letters fit
    for i in range(50, 3000):
        logger.log_entry("both", f"entry {i:05d} {PAD}")
    logger.close_session("both")
    final = logger.close()

    accepted = 3002
    assert first["file"].dead_lettered == 51
    assert_accounted(final["file"], accepted)
    assert final["file"].delivered == 0 and final["file"].lost > 0
    assert final["memory"].delivered == accepted
    # All or nothing per dead-letter write: no torn letter, and no letter of a batch counted lost.
    raw_lines = dead.read_bytes().count(b"\n")
    kept = [d["entry"]["seq"] for d in read_dead_letters(dead)]
    assert raw_lines == len(kept) == final["file"].dead_lettered
    assert kept[:51] == list(range(51)) and kept == sorted(set(kept))
    lost_reports = [e for e in errors if "they are lost" in str(e)]
    assert lost_reports and "could not keep them" in str(lost_reports[0])
    assert f"and {final['file'].lost} lost" in str(errors[-1])


def test_write_permission_revoked_mid_run_then_restored(tmp_path: Path) -> None:
    """chattr +i on the open log file (EPERM even for root): those entries are retried then
    dead-lettered; after chattr -i the sink recovers, reports it, and writes the rest."""
    # On ext4 (tmp_path) an immutable file refuses writes on descriptors opened before; tmpfs
    # only refuses new opens, which would not fail this already-open file.
    path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    memory = MemorySink()
    errors: list[SinkError] = []
    logger = SessionLogger(
        sinks=[FileSink(path, retries=2), memory],
        dead_letter_path=dead,
        on_error=errors.append,
    )
    try:
        logger.start_session("perm")
        for i in range(100):
            logger.log_entry("perm", f"before {i}")
        assert logger.save_logs().ok
        chattr("+i", path)
        for i in range(100):
            logger.log_entry("perm", f"denied {i}")
        during = logger.save_logs()
        unhealthy = logger.health()
    finally:
        chattr("-i", path)
    for i in range(100):
        logger.log_entry("perm", f"after {i}")
    logger.close_session("perm")
    after = logger.save_logs()
    healthy = logger.health()
    final = logger.close()

    assert (during["file"].dead_lettered, during["file"].retried) == (100, 200)
    assert unhealthy == {"ok": False, "sinks": {"file": False, "memory": True}}
    assert after["file"].dead_lettered == 100 and healthy["ok"] is True
    assert_report_accounted(final, dead)
    assert final["memory"].delivered == 302
    written, torn = parse_file(path)
    assert torn == 0
    assert [e["seq"] for e in written] == [*range(101), *range(201, 302)]
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["seq"] for d in letters] == list(range(101, 201))
    assert all("Operation not permitted" in d["reason"] for d in letters)
    texts = [str(e) for e in errors]
    assert len(texts) == 3, texts  # the incident, the recovery, the summary at close
    assert "retrying up to 2 times" in texts[0]
    attempts = during["file"].failures  # 3 per batch: the 100 entries may come in 1 or more
    assert attempts % 3 == 0 and attempts >= 3
    assert f"recovered after {attempts} failed attempts; 100 entries dead-lettered" in texts[1]
    assert "closed with 100 entries dead-lettered" in texts[2]


def test_unwritable_directory_fails_only_the_sessions_it_holds(
    tmp_path: Path, tmpfs: MountFactory
) -> None:
    """Per-session files: one session's directory is immutable (chattr +i, EPERM on create),
    its entries are dead-lettered; the other session's file and the memory sink are complete."""
    disk = tmpfs("disk", "4m")
    (disk / "locked").mkdir()
    dead = tmp_path / "dead.jsonl"
    memory = MemorySink()
    errors: list[SinkError] = []
    chattr("+i", disk / "locked")
    try:
        logger = SessionLogger(
            sinks=[FileSink(disk / "{session_id}" / "log.jsonl", retries=1), memory],
            dead_letter_path=dead,
            on_error=errors.append,
        )
        for sid in ("open", "locked"):
            logger.start_session(sid)
        for i in range(500):
            logger.log_entry("open" if i % 2 else "locked", f"m{i}")
        for sid in ("open", "locked"):
            logger.close_session(sid)
        started = time.monotonic()
        final = logger.close()
        assert time.monotonic() - started < 5
    finally:
        chattr("-i", disk / "locked")

    assert_report_accounted(final, dead)
    assert (final["file"].delivered, final["file"].dead_lettered) == (252, 252)
    assert final["memory"].delivered == 504
    written, torn = parse_file(disk / "open" / "log.jsonl")
    assert torn == 0 and [e["seq"] for e in written] == list(range(252))
    assert not (disk / "locked" / "log.jsonl").exists()
    letters = list(read_dead_letters(dead))
    assert {d["entry"]["session_id"] for d in letters} == {"locked"}
    assert sorted(d["entry"]["seq"] for d in letters) == list(range(252))
    assert "Operation not permitted" in letters[0]["reason"]
    wait_until(lambda: len(errors) >= 2, 1, "the incident and the close summary")
