"""`collect --group`: collectors sharing a stream and a DIR, killed and restarted, lose nothing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ..mqtt_broker import Broker
from .helpers import run_cli, start_cli, wait_until
from .test_collect import PUBLISHER

SESSIONS, ENTRIES = 2, 300
PUBLISHERS = ("p1", "p2", "p3")
TOTAL = len(PUBLISHERS) * SESSIONS * (ENTRIES + 2)


def _collected(out: Path) -> list[bytes]:
    return [line for f in sorted(out.glob("*.jsonl")) for line in f.read_bytes().splitlines()]


def _distinct(out: Path) -> int:
    return len(set(_collected(out)))


def _publish(broker: Broker, tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PUBLISHER,
                str(broker.port),
                name,
                str(SESSIONS),
                str(ENTRIES),
                str(tmp_path / f"{name}.jsonl"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in PUBLISHERS
    ]


def _collector(
    broker: Broker, out: Path, tmp_path: Path, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    err = tmp_path / f"{name}.err"
    proc = start_cli(
        "collect", "--host", "127.0.0.1", "--port", broker.port, "--out", out,
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
