"""Session stores: entries/s through MQTT to 1 and 2 collectors into PostgreSQL, and the sinks.

Run by hand, on a quiet machine (it starts its own mosquitto and PostgreSQL cluster, as the
tests do; PostgreSQL from apt-get, run as the ``postgres`` user when started as root)::

    .venv/bin/python benchmarks/store.py [--publishers 3] [--sessions 20] [--entries 2000]
        [--per-message 100] [--repeat 3] [--only NAME ...]

Collection cases (``pg-1``, ``pg-2``, ``pg-2s``, ``sqlite-1``, ``sqlite-2``, ``sqlite-2s``,
``files-1``): the collectors are started and subscribed first -- ``-1``: one, ``-2``: two in one
group (``collect --group g``: the broker hands each message to either), ``-2s``: two, each
subscribed to its own shard of the topics (publisher i publishes to ``logs/<i % 2>/<id>``;
collector k takes ``logs/k/#``), so that a session's entries all reach one collector; then ``--publishers`` processes each
log ``--sessions`` sessions of ``--entries`` entries, interleaved, through ``MqttSink`` at QoS 1
with ``--per-message`` entries per MQTT message. The clock runs from the first publisher's first
call until the destination holds every entry (polled every 0.1 s: ``COUNT(*)`` of a fresh
database, or the newlines of the output files). Each round checks that every entry is there.
The broker allows 1,000 messages in flight per client (``max_inflight_messages``), as
docs/scaling.md advises for collectors.

Sink cases (``FileSink``, ``SqliteSink``): one process logs the same entries straight to a file
or to an SQLite store; the clock stops when ``save_logs()`` returns.

Rounds are interleaved (every case once, then again) and the table shows medians, the ratio of
2 collectors to 1 and SqliteSink to FileSink. Figures go into docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from tests.mqtt_broker import Broker  # noqa: E402
from tests.postgres_cluster import PostgresCluster, count_entries  # noqa: E402

PUBLISHER = r"""
import sys, time
from async_session_logger import SessionLogger
from async_session_logger.sinks import MqttSink
port, name, sessions, entries, per, topic = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                             int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
logger = SessionLogger(
    sinks=[MqttSink("127.0.0.1", port, qos=1, entries_per_message=per, topic=topic)],
    dead_letter_path=None,
)
ids = [f"{name}-s{s}" for s in range(sessions)]
print("first", time.time(), flush=True)
for sid in ids:
    logger.start_session(sid, metadata={"publisher": name, "user_id": f"u{len(sid) % 7}"})
for i in range(entries):
    for sid in ids:
        logger.log_entry(sid, f"step {i} of the job", "INFO", {"i": i})
for sid in ids:
    logger.close_session(sid)
report = logger.save_logs(timeout=120)
logger.close()
print("done", time.time(), report.ok, flush=True)
sys.exit(0 if report.ok else 1)
"""

SINK = r"""
import sys, time
from async_session_logger import SessionLogger
from async_session_logger.sinks import FileSink
from async_session_logger.sinks.sqlite import SqliteSink
kind, path, sessions, entries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sink = FileSink(path) if kind == "FileSink" else SqliteSink(path)
logger = SessionLogger(sinks=[sink], dead_letter_path=None)
ids = [f"s{s}" for s in range(sessions)]
start = time.perf_counter()
for sid in ids:
    logger.start_session(sid, metadata={"user_id": "u1"})
for i in range(entries):
    for sid in ids:
        logger.log_entry(sid, f"step {i} of the job", "INFO", {"i": i})
for sid in ids:
    logger.close_session(sid)
report = logger.save_logs(timeout=300)
elapsed = time.perf_counter() - start
logger.close()
print(elapsed, report.ok, flush=True)
"""

COLLECT = [sys.executable, "-m", "async_session_logger", "collect"]


def _count_sqlite(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the schema is not there yet


def _count_files(out: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in out.glob("*.jsonl")) if out.exists() else 0


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def collect_case(
    name: str, args: argparse.Namespace, work: Path, cluster: PostgresCluster | None, round_: int
) -> float:
    """Run one collection case once; return entries/s."""
    kind, members = name.split("-")
    # "2s": two collectors, each subscribed to its own shard of the topics (logs/0/#, logs/1/#):
    # a session's messages all reach one collector. "2": one group, the broker splits them.
    sharded = members.endswith("s")
    members = members.rstrip("s")
    total = args.publishers * args.sessions * (args.entries + 2)
    run = work / f"{name}-{round_}"
    run.mkdir()
    if kind == "pg":
        assert cluster is not None
        url = cluster.new_database(f"b{name.replace('-', '')}{round_}")
        target, count = ["--store", url], lambda: count_entries(url)
    elif kind == "sqlite":
        db = run / "sessions.db"
        target, count = ["--store", f"sqlite:///{db}"], lambda: _count_sqlite(db)
    else:
        out = run / "out"
        target, count = ["--out", str(out)], lambda: _count_files(out)
    procs: list[subprocess.Popen[bytes]] = []
    with Broker(workdir=run / "broker", extra_config=("max_inflight_messages 1000",)) as broker:
        try:
            errs = []
            for m in range(int(members)):
                err = run / f"c{m}.err"
                errs.append(err)
                with open(err, "wb") as stderr:
                    procs.append(
                        subprocess.Popen(
                            [
                                *COLLECT,
                                "--host",
                                "127.0.0.1",
                                "--port",
                                str(broker.port),
                                *target,
                                "--client-id",
                                f"c{m}",
                                *(
                                    ["--topic", f"logs/{m}/#"]
                                    if sharded
                                    else ["--topic", "logs/#", "--group", "g"]
                                ),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=stderr,
                            cwd=run,
                        )
                    )
            for err in errs:
                _wait(lambda err=err: b"subscribed" in err.read_bytes(), 30, f"{err.name}")
            publishers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        PUBLISHER,
                        str(broker.port),
                        f"p{p}",
                        str(args.sessions),
                        str(args.entries),
                        str(args.per_message),
                        f"logs/{p % int(members)}/{{session_id}}"
                        if sharded
                        else "logs/{session_id}",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                for p in range(args.publishers)
            ]
            _wait(lambda: count() >= total, 600, f"{total} entries in {name}")
            end = time.time()
            firsts = []
            for proc in publishers:
                stdout, stderr = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError(f"publisher failed: {stderr.decode()[-2000:]}")
                firsts.append(float(stdout.split(b"first ", 1)[1].split()[0]))
            time.sleep(0.3)
            if count() != total:
                raise RuntimeError(f"{name}: {count()} entries stored, {total} sent")
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return total / (end - min(firsts))


def sink_case(name: str, args: argparse.Namespace, work: Path, round_: int) -> float:
    """Log the same entries straight into a FileSink or an SqliteSink; return entries/s."""
    total = args.publishers * args.sessions * (args.entries + 2)
    path = work / f"{name}-{round_}" / ("log.jsonl" if name == "FileSink" else "log.db")
    path.parent.mkdir()
    sessions = args.publishers * args.sessions
    done = subprocess.run(
        [sys.executable, "-c", SINK, name, str(path), str(sessions), str(args.entries)],
        capture_output=True,
        check=True,
    )
    elapsed = float(done.stdout.split()[0])
    return total / elapsed


CASES = (
    "pg-1",
    "pg-2",
    "pg-2s",
    "sqlite-1",
    "sqlite-2",
    "sqlite-2s",
    "files-1",
    "FileSink",
    "SqliteSink",
)


def main() -> None:
    """Run the cases, interleaved, and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=CASES, default=list(CASES))
    args = parser.parse_args()
    total = args.publishers * args.sessions * (args.entries + 2)
    rates: dict[str, list[float]] = {name: [] for name in args.only}
    cluster = PostgresCluster() if any(n.startswith("pg") for n in args.only) else None
    if cluster is not None:
        cluster.start()
    print(
        f"{total:,} entries: {args.publishers} publishers x {args.sessions} sessions x "
        f"{args.entries} entries, {args.per_message} per MQTT message, QoS 1; "
        f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="asl-store-bench-") as tmp:
            work = Path(tmp)
            for round_ in range(args.repeat):
                for name in args.only:
                    if name in ("FileSink", "SqliteSink"):
                        rate = sink_case(name, args, work, round_)
                    else:
                        rate = collect_case(name, args, work, cluster, round_)
                    rates[name].append(rate)
                    print(f"  round {round_ + 1} {name:<10} {rate:>10,.0f} entries/s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    print(f"\n{'case':<12} {'median entries/s':>17}  rounds")
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"{name:<12} {medians[name]:>17,.0f}  {', '.join(f'{x:,.0f}' for x in r)}")
    for two, one in (
        ("pg-2", "pg-1"),
        ("pg-2s", "pg-1"),
        ("sqlite-2", "sqlite-1"),
        ("sqlite-2s", "sqlite-1"),
        ("SqliteSink", "FileSink"),
    ):
        if two in medians and one in medians:
            print(f"ratio {two} / {one}: {medians[two] / medians[one]:.2f}")


if __name__ == "__main__":
    main()
