"""Overload: entries offered far faster than a sink accepts them, under each overflow policy.

Run by hand: ``.venv/bin/python benchmarks/overload.py [--entries 2000000] [--repeat 3]``.

One process per (policy, repeat) so peak RSS is that case's alone. A ``SessionLogger`` with a
sink that accepts ``--rate`` entries per second (default 1,000) is offered ``--entries``
entries from one thread, in 100 sessions. Under ``drop_newest`` / ``drop_oldest`` every entry
is offered; under ``block`` the caller waits for the sink, so it stops after ``--block-seconds``
(offering 2,000,000 entries at 1,000/s would take 33 minutes: the point is the memory bound,
which blocking reaches within seconds). Reported: entries offered per second by the caller,
dropped, peak RSS of the process, and the logger's queue/sink backlog bounds.

``--child POLICY`` runs one case and prints one JSON line (the test suite uses this to check
the documented memory bound with the full 2,000,000 entries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

SESSIONS = 100


def peak_rss_mb() -> float:
    """Return this process's peak RSS in MB.

    VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from the parent through fork
    and exec, so a child of a big process (pytest) would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def child(policy: str, entries: int, rate: float, block_seconds: float) -> dict[str, Any]:
    """Run one case in this process; return its figures."""
    from async_session_logger import SessionLogger
    from async_session_logger.sinks import Batch, Sink

    class RateSink(Sink):
        """Accepts ``rate`` entries per second."""

        default_name = "slow"

        async def write_batch(self, batch: Batch) -> None:
            await asyncio.sleep(len(batch) / rate)

    incidents: list[str] = []
    logger = SessionLogger(
        sinks=[RateSink()],
        overflow=policy,
        dead_letter_path=None,
        close_timeout=2.0,
        on_error=lambda error: incidents.append(str(error)),
    )
    ids = [f"s{n}" for n in range(SESSIONS)]
    for sid in ids:
        logger.start_session(sid, {"case": policy})
    log = logger.log_entry
    deadline = time.perf_counter() + block_seconds if policy == "block" else float("inf")
    offered = 0
    started = time.perf_counter()
    fields = {"user": "u1", "path": "/api/items", "status": 200}
    for i in range(entries):
        log(ids[i % SESSIONS], "request handled", 20, fields)
        offered += 1
        if policy == "block" and not i % 100 and time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - started
    stats = logger.stats()
    report = logger.close(timeout=2.0)
    # Gap entries go out before a session's next record: here its close entry.
    gap_entries = logger.stats()["gap_entries"]
    return {
        "policy": policy,
        "offered": offered,
        "seconds": round(elapsed, 3),
        "offered_per_s": round(offered / elapsed),
        "dropped": report.dropped,
        "gap_entries": gap_entries,
        "queued_at_end": stats["queued"],
        "sink_pending_at_end": stats["sinks"]["slow"]["pending"],
        # Entries still queued when close() gave up (2 s): counted as lost, not hidden.
        "lost_at_close": report["slow"].lost,
        "incidents": len(incidents),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_case(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh interpreter."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            policy,
            "--entries",
            str(args.entries),
            "--rate",
            str(args.rate),
            "--block-seconds",
            str(args.block_seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Parse arguments and run the cases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--block-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=["block", "drop_newest", "drop_oldest"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.entries, args.rate, args.block_seconds)))
        return
    print(f"{args.entries:,} entries offered to a sink accepting {args.rate:,.0f}/s")
    print(f"{'policy':<12} {'offered/s':>10} {'dropped':>10} {'peak RSS MB':>12}  (median)")
    for policy in ("block", "drop_newest", "drop_oldest"):
        runs = [run_case(policy, args) for _ in range(args.repeat)]
        rate = statistics.median(r["offered_per_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        dropped = statistics.median(r["dropped"] for r in runs)
        print(f"{policy:<12} {rate:>10,.0f} {dropped:>10,.0f} {rss:>12.1f}")
        for r in runs:
            print("   ", json.dumps(r))


if __name__ == "__main__":
    main()
