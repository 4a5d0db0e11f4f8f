"""`collect` against a real mosquitto: two publishing processes, a broker crash, exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from async_session_logger import SessionLogger
from async_session_logger.sinks import MqttSink

from ..mqtt_broker import Broker, mosquitto_pub
from .helpers import lines_of, run_cli, start_cli, wait_until

# One publishing process: SESSIONS sessions of ENTRIES log entries each, over MqttSink (QoS 1),
# paced so that the broker crash lands in the middle; each entry also goes to a local file, whose
# bytes the collected files must match (the logger encodes an entry once for every sink).
PUBLISHER = r"""
import sys, time
from async_session_logger import SessionLogger

port, name, local = int(sys.argv[1]), sys.argv[2], sys.argv[5]
sessions, entries = int(sys.argv[3]), int(sys.argv[4])
logger = SessionLogger(
    method=["mqtt", "file"],
    mqtt={"host": "127.0.0.1", "port": port, "qos": 1, "reconnect_max": 0.3},
    path=local,
    dead_letter_path=local + ".dead",
    on_error=lambda e: None,
)
ids = [f"{name}-s{s}" for s in range(sessions)]
for sid in ids:
    logger.start_session(sid, metadata={"publisher": name})
for i in range(entries):
    for sid in ids:
        logger.log_entry(sid, f"m{i}", "INFO", {"i": i})
    if i % 10 == 9:
        time.sleep(0.02)
for sid in ids:
    logger.close_session(sid)
report = logger.save_logs(timeout=60)
logger.close()
print(report, flush=True)
sys.exit(0 if report.ok else 1)
"""


def _collected(out: Path) -> list[bytes]:
    return [line for f in sorted(out.glob("*.jsonl")) for line in f.read_bytes().splitlines()]


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_publisher(
    port: int, name: str, sessions: int, entries: int, tmp_path: Path
) -> subprocess.Popen[bytes]:
    """Start PUBLISHER as ``name``; its own copy of every entry goes to tmp_path/NAME.jsonl."""
    local = str(tmp_path / f"{name}.jsonl")
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(port), name, str(sessions), str(entries), local],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_publishers_and_a_broker_crash_collect_every_entry_once(tmp_path: Path) -> None:
    """Broker SIGKILLed mid-stream and restarted: files hold every (session, seq) exactly once."""
    out = tmp_path / "collected"
    sessions, entries = 2, 600
    with Broker(persistence=True, workdir=tmp_path / "broker") as broker:
        err = tmp_path / "collect.err"
        collector = start_cli(
            "collect", "--host", "127.0.0.1", "--port", broker.port, "--out", out,
            "--reconnect-max", "0.3", out=tmp_path / "collect.out", err=err,
        )  # fmt: skip
        publishers: list[subprocess.Popen[bytes]] = []
        try:
            wait_until(lambda: b"subscribed to logs/#" in err.read_bytes(), 15, "subscription")
            broker.save()  # the collector's persistent session survives the crash
            for name in ("p1", "p2"):
                publishers.append(start_publisher(broker.port, name, sessions, entries, tmp_path))
            wait_until(lambda: len(_collected(out)) >= 400, 30, "a first share of the entries")
            assert all(p.poll() is None for p in publishers), "the crash must come mid-stream"
            broker.kill()
            time.sleep(0.3)
            broker.restart()
            for proc in publishers:
                stdout, stderr = proc.communicate(timeout=60)
                assert proc.returncode == 0, (stdout + stderr).decode()
            total = 2 * sessions * (entries + 2)
            wait_until(lambda: len(set(_collected(out))) >= total, 30, f"{total} distinct entries")
            time.sleep(0.5)  # a late duplicate would land now
            assert _stop(collector) == 0
        finally:
            for proc in [collector, *publishers]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    collected = _collected(out)
    sent = [
        line for n in ("p1", "p2") for line in (tmp_path / f"{n}.jsonl").read_bytes().splitlines()
    ]
    assert len(sent) == total
    pairs = Counter((e["session_id"], e["seq"]) for e in map(json.loads, collected))
    assert max(pairs.values()) == 1, "an entry was written twice"
    assert Counter(collected) == Counter(sent)  # each entry once, the publisher's exact bytes
    assert sorted(p.name for p in out.iterdir()) == [
        "p1-s0.jsonl", "p1-s1.jsonl", "p2-s0.jsonl", "p2-s1.jsonl",
    ]  # fmt: skip
    log = err.read_text()
    assert "lost the connection" in log and "subscribed again" in log
    summary = log.splitlines()[-1]
    print(f"\ncollector: {summary}")
    assert summary.startswith(f"async-session-logger: stopped: {total} entries written to {out}")
    # The publishers re-sent their recent messages after the crash: dedup was at work.
    duplicates = int(summary.split(" (")[1].split(" duplicate")[0])
    assert duplicates > 0
    # The collected files are ordinary logs: the other commands read them.
    listed = run_cli("sessions", "--json", *sorted(out.glob("*.jsonl")))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {(r["session_id"], r["status"], r["entries"], r["missing"]) for r in rows} == {
        (f"{n}-s{s}", "closed", entries, 0) for n in ("p1", "p2") for s in range(sessions)
    }


def test_packed_payloads_statuses_junk_and_a_restart_per_day(tmp_path: Path) -> None:
    """JSON Lines payloads split; statuses, presence and junk skipped; dedup survives a restart."""
    out = tmp_path / "days"
    with Broker(workdir=tmp_path / "broker") as broker:
        args = ["collect", "--host", "127.0.0.1", "--port", str(broker.port), "--out", str(out),
                "--per", "day", "--topic", "logs/#", "--topic", "session_loggers/#",
                "--client-id", "collector-days"]  # fmt: skip

        def entry(seq: int, sid: str = "a", day: str = "2026-01-02") -> bytes:
            return json.dumps(
                {"timestamp": f"{day}T10:00:0{seq}.000000Z", "session_id": sid, "seq": seq,
                 "event": "log", "message": f"m{seq}"}, separators=(",", ":"),
            ).encode()  # fmt: skip

        def run_once(publish: list[tuple[str, bytes, bool]], wait_lines: int) -> str:
            err = tmp_path / "collect.err"
            proc = start_cli(*args, out=tmp_path / "collect.out", err=err)
            try:
                wait_until(lambda: b"subscribed" in err.read_bytes(), 15, "subscription")
                for topic, payload, retain in publish:
                    mosquitto_pub(broker.port, topic, payload, retain=retain)
                wait_until(lambda: len(_collected(out)) >= wait_lines, 15, f"{wait_lines} lines")
                time.sleep(0.4)
                assert _stop(proc, signal.SIGINT) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            return err.read_text()

        log = run_once(
            [
                ("logs/a", b"\n".join([entry(0), entry(1), entry(2)]), False),
                ("logs/a", entry(1), False),
                ("logs/a/status", b'{"session_id":"a","status":"open"}', True),
                ("session_loggers/dev-1", b'{"client_id":"dev-1","status":"online"}', True),
                ("logs/x", b"garbage", False),
                ("logs/x", entry(0, sid="../evil"), False),
                ("logs/x", b'{"session_id":"x","event":"log"}', False),
                ("logs/b", entry(0, sid="b", day="2026-01-03"), False),
            ],
            wait_lines=4,
        )
        assert log.splitlines()[-1] == (
            f"async-session-logger: stopped: 4 entries written to {out} (1 duplicate dropped, "
            "1 status and 1 other messages ignored, 3 lines rejected)"
        )
        assert "message on 'logs/x': not valid JSON; skipped" in log
        assert "forbidden character '/'" in log
        assert "entry lacks seq" in log
        assert not list(tmp_path.glob("evil*")) and not (tmp_path / "evil.jsonl").exists()
        assert (out / "2026-01-02.jsonl").read_bytes() == b"".join(
            entry(i) + b"\n" for i in range(3)
        )
        # A new run (same client id): the day files are read back, so a re-sent entry is not
        # written twice; the retained status is delivered again and ignored.
        again = [
            ("logs/a", b"\n".join([entry(2), entry(3)]), False),
            ("logs/b", entry(0, "b", "2026-01-03"), False),
        ]
        log = run_once(again, wait_lines=5)
        assert "stopped: 1 entry written" in log and "2 duplicates dropped" in log
        assert [e["seq"] for e in lines_of(out / "2026-01-02.jsonl")] == [0, 1, 2, 3]
        assert len(lines_of(out / "2026-01-03.jsonl")) == 1


def test_tls_and_password_from_the_environment_and_refusals(tmp_path: Path) -> None:
    """TLS with --cafile and auth from --password-env; per-session reload after a restart."""
    users = {"collector": "c-s3cret", "device": "d-s3cret"}
    out = tmp_path / "sessions"
    with Broker(users=users, tls=True, workdir=tmp_path / "broker") as broker:
        assert broker.tls_port is not None and broker.ca_pem_path is not None
        base = ["collect", "--host", "127.0.0.1", "--port", str(broker.tls_port), "--out", str(out),
                "--cafile", str(broker.ca_pem_path), "--username", "collector",
                "--password-env", "ASL_TEST_PW", "--client-id", "collector-tls"]  # fmt: skip
        err = tmp_path / "collect.err"
        for run, count in ((0, 3), (1, 6)):
            proc = start_cli(*base, out=tmp_path / "o", err=err, ASL_TEST_PW=users["collector"])
            try:
                wait_until(lambda: b"subscribed" in err.read_bytes(), 15, "subscription")
                sink = MqttSink(
                    "127.0.0.1", broker.tls_port, tls_context=broker.client_ssl_context(),
                    username="device", password=users["device"], qos=1,
                )  # fmt: skip
                with SessionLogger(sinks=[sink], dead_letter_path=None) as logger:
                    sid = f"secure-{run}"
                    logger.start_session(sid)
                    logger.log_entry(sid, "over TLS")
                    logger.close_session(sid)
                    assert logger.save_logs(timeout=20).ok
                wait_until(lambda n=count: len(_collected(out)) >= n, 15, f"{count} entries")
                assert _stop(proc) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert [e["message"] for e in lines_of(out / "secure-1.jsonl")][1] == "over TLS"

        wrong = run_cli(*base, env={"ASL_TEST_PW": "nope"}, timeout=30)
        assert wrong.returncode == 1
        (line,) = wrong.stderr.splitlines()
        assert line.startswith(f"async-session-logger: error: 127.0.0.1:{broker.tls_port}: ")
        assert "refused" in line and "nope" not in line
        untrusted = [a for a in base if a not in ("--cafile", str(broker.ca_pem_path))]
        bad_ca = run_cli(*untrusted, "--tls", env={"ASL_TEST_PW": users["collector"]})
        assert bad_ca.returncode == 1 and "certificate not trusted" in bad_ca.stderr
        unset = run_cli(*base)
        assert unset.returncode == 1
        assert unset.stderr == (
            "async-session-logger: error: --password-env: environment variable ASL_TEST_PW "
            "is not set\n"
        )
        no_password = run_cli(*base[:-4], "--client-id", "x")
        assert no_password.returncode == 1 and "--password-env VAR" in no_password.stderr


def test_a_reused_session_id_keeps_every_run_across_a_restart(tmp_path: Path) -> None:
    """An id used again after its close restarts at seq 0: each run is written, once, and a
    restarted collector rebuilds the runs from the file and still drops re-sent copies."""
    out = tmp_path / "runs"
    with Broker(workdir=tmp_path / "broker") as broker:
        args = ["collect", "--host", "127.0.0.1", "--port", str(broker.port), "--out", str(out),
                "--client-id", "collector-reuse"]  # fmt: skip
        err = tmp_path / "collect.err"

        def publish_runs(runs: range) -> None:
            sink = MqttSink("127.0.0.1", broker.port, qos=1)
            with SessionLogger(sinks=[sink], dead_letter_path=None) as logger:
                for run in runs:
                    logger.start_session("job", metadata={"run": run})
                    logger.log_entry("job", f"run {run}")
                    logger.close_session("job")
                assert logger.save_logs(timeout=20).ok

        for runs, total in ((range(2), 6), (range(2, 3), 9)):
            proc = start_cli(*args, out=tmp_path / "collect.out", err=err)
            try:
                wait_until(lambda: b"subscribed" in err.read_bytes(), 15, "subscription")
                if runs.start:
                    # Re-sent copies (a publisher's replay window) of both earlier runs' entries.
                    for line in (out / "job.jsonl").read_bytes().splitlines()[1::2]:
                        mosquitto_pub(broker.port, "logs/job", line)
                publish_runs(runs)
                wait_until(lambda n=total: len(_collected(out)) >= n, 15, f"{total} entries")
                time.sleep(0.4)  # a late duplicate would land now
                assert _stop(proc) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        summary = err.read_text().splitlines()[-1]
        assert "stopped: 3 entries written" in summary and "3 duplicates dropped" in summary
    collected = [json.loads(line) for line in _collected(out)]
    assert [(e["seq"], e["message"]) for e in collected] == [
        (seq, message)
        for run in range(3)
        for seq, message in ((0, "Session started"), (1, f"run {run}"), (2, "Session closed"))
    ]
    listed = run_cli("sessions", "--json", out / "job.jsonl")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["status"], r["entries"], r["duplicates"], r["metadata"]) for r in rows] == [
        ("closed", 1, 0, {"run": run}) for run in range(3)
    ]
