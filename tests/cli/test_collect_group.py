"""`collect --group`: collectors sharing a stream and a DIR, killed and restarted, lose nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_session_logger.cli._store import Store
from async_session_logger.store import SqliteStore

from ..conftest import MountFactory
from ..mqtt_broker import Broker, mosquitto_pub
from .helpers import run_cli, start_cli, wait_until
from .test_collect import start_publisher

SESSIONS, ENTRIES = 2, 300
PUBLISHERS = ("p1", "p2", "p3")
TOTAL = len(PUBLISHERS) * SESSIONS * (ENTRIES + 2)


def _collected(out: Path) -> list[bytes]:
    return [line for f in sorted(out.glob("*.jsonl")) for line in f.read_bytes().splitlines()]


def _distinct(out: Path) -> int:
    return len(set(_collected(out)))


def _publish(broker: Broker, tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    return [start_publisher(broker.port, name, SESSIONS, ENTRIES, tmp_path) for name in PUBLISHERS]


def _collector(
    broker: Broker, out: Path, tmp_path: Path, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    err = tmp_path / f"{name}.err"
    # Path("-"): into the SQLite store tmp_path/sessions.db instead of files.
    target = ["--out", out] if str(out) != "-" else ["--store", f"sqlite:///{tmp_path}/sessions.db"]
    proc = start_cli(
        "collect", "--host", "127.0.0.1", "--port", broker.port, *target,
        "--client-id", name, "--reconnect-max", "0.3", *extra,
        out=tmp_path / f"{name}.out", err=err,
    )  # fmt: skip
    return proc


def _subscribed(tmp_path: Path, name: str, times: int = 1) -> None:
    err = tmp_path / f"{name}.err"
    wait_until(
        lambda: err.read_text().count("subscribed") >= times, 15, f"{name} subscribed x{times}"
    )


def _finish(publishers: list[subprocess.Popen[bytes]]) -> None:
    for proc in publishers:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, (stdout + stderr).decode()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=15)


def _written(tmp_path: Path, name: str) -> int:
    summary = (tmp_path / f"{name}.err").read_text().splitlines()[-1]
    match = re.search(r"stopped: (\d+) entr", summary)
    assert match, summary
    return int(match.group(1))


def _check_exactly_once(out: Path, tmp_path: Path) -> None:
    """The union of the files holds every published entry once, byte for byte, whole lines."""
    for f in out.glob("*.jsonl"):
        assert f.read_bytes().endswith(b"\n"), f"{f.name} ends in a half-written line"
    collected = _collected(out)
    sent = [
        line for n in PUBLISHERS for line in (tmp_path / f"{n}.jsonl").read_bytes().splitlines()
    ]
    assert len(sent) == TOTAL
    pairs = Counter((e["session_id"], e["seq"]) for e in map(json.loads, collected))
    assert max(pairs.values()) == 1, "an entry was written twice"
    assert Counter(collected) == Counter(sent)
    listed = run_cli("sessions", "--json", *sorted(out.glob("*.jsonl")))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {(r["session_id"], r["status"], r["entries"], r["missing"]) for r in rows} == {
        (f"{n}-s{s}", "closed", ENTRIES, 0) for n in PUBLISHERS for s in range(SESSIONS)
    }


def check_store_exactly_once(store: SqliteStore, tmp_path: Path) -> None:
    """The store (closed here) holds every published entry once, byte for byte, and every
    sessions row equals the one a single SQLite writer derives from the same entries."""
    try:
        entries = store.table("entries")
        rows = store.session_rows()
    finally:
        store.close()
    sent = [
        line for n in PUBLISHERS for line in (tmp_path / f"{n}.jsonl").read_bytes().splitlines()
    ]
    assert len(sent) == TOTAL
    assert Counter(e[-1].encode() for e in entries) == Counter(sent)  # each entry once, exact
    assert {(r["session_id"], r["status"], r["entries"], r["missing"]) for r in rows} == {
        (f"{n}-s{s}", "closed", ENTRIES, 0) for n in PUBLISHERS for s in range(SESSIONS)
    }
    one = SqliteStore(str(tmp_path / "one.db"))
    try:
        one.write(sent)
        assert sorted(map(repr, one.session_rows())) == sorted(map(repr, rows))
    finally:
        one.close()


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_collectors_in_a_group_one_sigkilled_and_restarted_lose_nothing(
    tmp_path: Path,
) -> None:
    """3 publishers, 2 collectors of a group in one DIR, one SIGKILLed mid-stream: exactly once."""
    out = tmp_path / "collected"
    procs: list[subprocess.Popen[bytes]] = []
    with Broker(workdir=tmp_path / "broker") as broker:
        try:
            for name in ("c1", "c2"):
                procs.append(_collector(broker, out, tmp_path, name, "--group", "g"))
                _subscribed(tmp_path, name)
            assert "subscribed to $share/g/logs/# on" in (tmp_path / "c1.err").read_text()
            publishers = _publish(broker, tmp_path)
            procs += publishers
            wait_until(lambda: _distinct(out) >= TOTAL // 4, 30, "a first share of the entries")
            assert all(p.poll() is None for p in publishers), "the kill must come mid-stream"
            procs[0].kill()  # SIGKILL: what it received but had not committed is not acked
            procs[0].wait()
            wait_until(lambda: _distinct(out) >= TOTAL // 2, 30, "c2 carrying on alone")
            procs[0] = _collector(broker, out, tmp_path, "c1b", "--group", "g", "--client-id", "c1")
            _subscribed(tmp_path, "c1b")
            _finish(publishers)
            wait_until(lambda: _distinct(out) >= TOTAL, 30, f"{TOTAL} distinct entries")
            time.sleep(0.5)  # a late duplicate would land now
            assert _stop(procs[0]) == 0 and _stop(procs[1]) == 0
            # A member stopped with SIGTERM acknowledged every QoS 1 message it was sent.
            log = broker.log_text()
            sent_to_c2 = len(re.findall(r"Sending PUBLISH to c2 \(d\d, q1", log))
            assert sent_to_c2 > 0
            assert log.count("Received PUBACK from c2 ") == sent_to_c2
        finally:
            _kill_all(procs)
    _check_exactly_once(out, tmp_path)
    # The survivor carried on; the restarted member (same client id) got the messages its
    # predecessor had received but not acknowledged again, and its share of the rest.
    written = {name: _written(tmp_path, name) for name in ("c2", "c1b")}
    print(f"\nentries written: {written} (c1 was SIGKILLed)")
    assert written["c2"] > 0
    assert {f.name for f in out.iterdir()} == {
        f"{n}-s{s}.jsonl" for n in PUBLISHERS for s in range(SESSIONS)
    }


def test_a_broker_crash_under_a_group_with_a_durable_safety_net(tmp_path: Path) -> None:
    """Broker SIGKILLed mid-stream (persistence on): the group re-subscribes; with a non-shared
    durable collector in the same DIR as a safety net, every entry is there exactly once."""
    out = tmp_path / "collected"
    procs: list[subprocess.Popen[bytes]] = []
    with Broker(persistence=True, workdir=tmp_path / "broker") as broker:
        try:
            for name, extra in (("c1", ("--group", "g")), ("c2", ("--group", "g")), ("net", ())):
                procs.append(_collector(broker, out, tmp_path, name, *extra))
                _subscribed(tmp_path, name)
            broker.save()  # the sessions (and net's plain subscription) survive the crash
            publishers = _publish(broker, tmp_path)
            procs += publishers
            wait_until(lambda: _distinct(out) >= TOTAL // 4, 30, "a first share of the entries")
            assert all(p.poll() is None for p in publishers), "the crash must come mid-stream"
            broker.kill()
            time.sleep(0.3)
            broker.restart()
            for name in ("c1", "c2", "net"):
                _subscribed(tmp_path, name, times=2)
            _finish(publishers)
            wait_until(lambda: _distinct(out) >= TOTAL, 30, f"{TOTAL} distinct entries")
            time.sleep(0.5)  # a late duplicate would land now
            assert all(_stop(p) == 0 for p in procs[:3])
        finally:
            _kill_all(procs)
    _check_exactly_once(out, tmp_path)
    for name in ("c1", "c2"):
        log = (tmp_path / f"{name}.err").read_text()
        assert "lost the connection" in log and "subscribed again to $share/g/logs/#" in log
    # Three writers shared the files: each one's dedup saw the others' appends.
    assert sum(_written(tmp_path, n) for n in ("c1", "c2", "net")) == TOTAL


def _entry(seq: int, sid: str = "a") -> bytes:
    return json.dumps(
        {"timestamp": f"2026-01-02T10:00:0{seq}.000000Z", "session_id": sid, "seq": seq,
         "event": "log", "message": f"m{seq}"}, separators=(",", ":"),
    ).encode()  # fmt: skip


def test_nothing_is_acknowledged_before_it_is_on_disk(tmp_path: Path, tmpfs: MountFactory) -> None:
    """A full disk, then SIGKILL: nothing was acked, so the restarted collector gets it all."""
    disk = tmpfs(size="64k")
    out = disk / "out"
    with Broker(workdir=tmp_path / "broker") as broker:
        procs = [_collector(broker, out, tmp_path, "full")]
        try:
            _subscribed(tmp_path, "full")
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                with pytest.raises(OSError, match="No space left"):
                    while True:
                        os.write(filler, b"\0" * 512)
            finally:
                os.close(filler)
            for seq in range(5):
                mosquitto_pub(broker.port, "logs/a", _entry(seq))  # the broker acked each
            wait_until(
                lambda: b"No space left" in (tmp_path / "full.err").read_bytes(), 15, "ENOSPC"
            )
            procs[0].kill()  # the entries were only in its memory
            procs[0].wait()
            assert "Received PUBACK from full " not in broker.log_text()
            os.unlink(disk / "filler")
            procs.append(_collector(broker, out, tmp_path, "again", "--client-id", "full"))
            wait_until(lambda: len(_collected(out)) >= 5, 15, "the 5 entries, sent again")
            time.sleep(0.3)  # a late duplicate would land now
            assert _stop(procs[1]) == 0
            # Each message acknowledged once: after its commit, by the second run.
            wait_until(
                lambda: broker.log_text().count("Received PUBACK from full ") == 5, 5, "5 PUBACKs"
            )
        finally:
            _kill_all(procs)
    assert (out / "a.jsonl").read_bytes() == b"".join(_entry(seq) + b"\n" for seq in range(5))
    assert "stopped: 5 entries written" in (tmp_path / "again.err").read_text()


def test_two_stores_appending_to_one_file_see_each_others_entries(tmp_path: Path) -> None:
    """Two writers of one DIR: each reads the other's appends before deciding; torn lines end."""
    stores = [Store(str(tmp_path), "session"), Store(str(tmp_path), "session")]
    seen: list[set[int]] = [set(), set()]
    path = stores[0].path_for("a", {})

    def append(i: int, seqs: range) -> list[int]:
        found: list[int] = []

        def others(entries: Iterator[dict[str, Any]], whole: bool) -> None:
            for entry in entries:
                seen[i].add(entry["seq"])
                found.append(entry["seq"])

        def decide() -> list[bytes]:
            new = [seq for seq in seqs if seq not in seen[i]]
            seen[i].update(new)
            return [_entry(seq) for seq in new]

        stores[i].commit(path, decide, others)
        return found

    assert append(0, range(0, 3)) == []
    assert append(1, range(2, 5)) == [0, 1, 2]  # read from the start: 2 is not written again
    with open(path, "ab") as fh:
        fh.write(_entry(9)[:20])  # a third writer killed mid-line
    assert append(0, range(4, 7)) == [3, 4]  # only what was appended since its last look
    assert append(1, range(0, 8)) == [5, 6]
    for store in stores:
        store.close()
    lines = Path(path).read_bytes().splitlines()
    assert lines[5] == _entry(9)[:20]  # ended, so the next entry stays whole
    assert [json.loads(line)["seq"] for line in lines[:5] + lines[6:]] == [0, 1, 2, 3, 4, 5, 6, 7]


def test_a_bad_group_name_is_refused() -> None:
    """A group name is one topic level: '/', '+', '#' and blanks are refused with exit 2."""
    for name in ("a/b", "a+", "#", "", "a b"):
        done = run_cli("collect", "--out", "/nonexistent/x", "--group", name)
        assert done.returncode == 2, (name, done.stderr)
        assert "--group" in done.stderr and "1 to 64 characters" in done.stderr


def test_a_group_into_one_sqlite_store_one_member_sigkilled(tmp_path: Path) -> None:
    """3 publishers, 2 collectors of a group into one SQLite file, one SIGKILLed: exactly once."""
    db = tmp_path / "sessions.db"
    procs: list[subprocess.Popen[bytes]] = []

    def stored() -> int:
        if not db.exists():
            return 0
        store = SqliteStore(str(db), create=False)
        try:
            return len(store.table("entries"))
        finally:
            store.close()

    with Broker(workdir=tmp_path / "broker") as broker:
        try:
            for name in ("s1", "s2"):
                procs.append(_collector(broker, Path("-"), tmp_path, name, "--group", "g"))
            for name in ("s1", "s2"):
                _subscribed(tmp_path, name)
            publishers = _publish(broker, tmp_path)
            procs += publishers
            wait_until(lambda: stored() >= TOTAL // 4, 30, "a first share of the entries")
            assert all(p.poll() is None for p in publishers), "the kill must come mid-stream"
            procs[0].kill()
            procs[0].wait()
            procs[0] = _collector(
                broker, Path("-"), tmp_path, "s1b", "--group", "g", "--client-id", "s1"
            )
            _finish(publishers)
            wait_until(lambda: stored() >= TOTAL, 30, f"{TOTAL} stored entries")
            time.sleep(0.5)  # a late duplicate would land now
            assert _stop(procs[0]) == 0 and _stop(procs[1]) == 0
        finally:
            _kill_all(procs)
    check_store_exactly_once(SqliteStore(str(db), create=False), tmp_path)
    assert "committed to sqlite:///" in (tmp_path / "s2.err").read_text().splitlines()[-1]
