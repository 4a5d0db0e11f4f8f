"""What issue 12's session features cost: held entries, annotate(), open sessions, the bound.

Run by hand, on a quiet machine::

    .venv/bin/python benchmarks/sessions.py [--entries 200000] [--repeat 5]
    .venv/bin/python benchmarks/sessions.py --storm [--repeat 5]   # 10,000 tasks, own sessions
    .venv/bin/python benchmarks/sessions.py --million        # 1,000,000 sessions, bounded
    .venv/bin/python benchmarks/sessions.py --trickle [--repeat 5]  # log, yield, log...

Each figure comes from a fresh child process, ``--repeat`` times; medians are printed.

- ``log written`` / ``log held``: the caller's µs per ``log_entry`` into one session, written
  (no buffer_level) or held (``buffer_level="DEBUG"``, entries at DEBUG, ``buffer_max`` large
  enough to keep them all); the sink is a no-op custom handler.
- ``annotate``: µs per ``annotate(session_id, step=i)``.
- ``bytes/held entry`` and ``bytes/open session``: tracemalloc's growth divided by the count
  (``log_entry(sid, "message %d", DEBUG, {"i": i})`` held; sessions opened with a small
  metadata dict and never closed).
- ``--storm``: issue 15's session storm: 10,000 concurrent asyncio tasks, each in its own
  session (``async with alog.session(...)``), 20 ``await s.info(...)`` each with a yield between,
  ``AsyncSessionLogger`` to a file; beside the same app without logging (total time to the end
  of ``save_logs()``, and the loop lag seen by a task sleeping 1 ms over and over). Targets:
  total <= 3x the app without logging, lag p99 within 1.5x of it.
- ``--trickle``: 1 task and 100 tasks, each in its own session, logging 20,000 entries in all
  with ``await s.info(...)`` then ``await asyncio.sleep(0)`` (a handler awaiting I/O between
  its log lines), ``AsyncSessionLogger`` to a file, with ``linger=0`` and the default linger:
  µs per entry until ``save_logs()`` returns.
- ``--million``: 1,000,000 sessions opened and never closed by one ``SessionLogger`` with
  ``max_open_sessions=10_000`` (every start past 10,000 evicts one), each with one entry, to a
  file; peak RSS of that process beside the same process opening nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _logger(**options: object) -> object:
    sys.path.insert(0, str(REPO_ROOT))
    from async_session_logger import SessionLogger

    return SessionLogger(
        method="custom",
        custom_handler=lambda line: None,
        dead_letter_path=None,
        max_queue=10_000_000,
        **options,
    )


def child(what: str, n: int) -> dict[str, float]:
    """Measure one figure in this process."""
    if what in ("written", "held"):
        log = _logger(buffer_level="DEBUG" if what == "held" else None, buffer_max=n + 1)
        log.start_session("s")  # type: ignore[attr-defined]
        entry = log.log_entry  # type: ignore[attr-defined]
        start = time.perf_counter()
        for _ in range(n):
            entry("s", "message", logging.DEBUG)
        caller = (time.perf_counter() - start) / n
        log.close()  # type: ignore[attr-defined]
        return {"us": caller * 1e6}
    if what == "annotate":
        log = _logger()
        log.start_session("s")  # type: ignore[attr-defined]
        annotate = log.annotate  # type: ignore[attr-defined]
        start = time.perf_counter()
        for i in range(n):
            annotate("s", step=i)
        caller = (time.perf_counter() - start) / n
        log.close()  # type: ignore[attr-defined]
        return {"us": caller * 1e6}
    if what == "held-bytes":
        log = _logger(buffer_level="DEBUG", buffer_max=n + 1)
        log.start_session("s")  # type: ignore[attr-defined]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            log.log_entry("s", f"message {i}", logging.DEBUG, {"i": i})  # type: ignore[attr-defined]
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        log.close()  # type: ignore[attr-defined]
        return {"bytes": grown / n}
    if what == "session-bytes":
        log = _logger()
        log.save_logs()  # type: ignore[attr-defined]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            log.start_session(f"session-{i:08d}", {"user_id": f"u{i}"})  # type: ignore[attr-defined]
        log.save_logs()  # type: ignore[attr-defined]  # the start entries are written: gone
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        log.close()  # type: ignore[attr-defined]
        return {"bytes": grown / n}
    raise ValueError(what)


STORM_TASKS = 10_000
STORM_ENTRIES = 20


async def _storm(logging_on: bool, directory: Path) -> dict[str, float]:
    from async_session_logger import AsyncSessionLogger

    lags: list[float] = []
    stop = False

    async def monitor() -> None:
        clock = time.perf_counter
        while not stop:
            t0 = clock()
            await asyncio.sleep(0.001)
            lags.append((clock() - t0 - 0.001) * 1000)

    alog = AsyncSessionLogger(path=str(directory / "storm.jsonl"), dead_letter_path=None)
    await alog.start()

    async def task_logged(i: int) -> None:
        async with alog.session(f"task-{i:05d}", {"i": i}) as s:
            for j in range(STORM_ENTRIES):
                await s.info("step", {"j": j})
                await asyncio.sleep(0)

    async def task_bare(i: int) -> None:
        for _j in range(STORM_ENTRIES):
            await asyncio.sleep(0)

    watcher = asyncio.create_task(monitor())
    await asyncio.sleep(0.05)
    lags.clear()
    body = task_logged if logging_on else task_bare
    start = time.perf_counter()
    await asyncio.gather(*(body(i) for i in range(STORM_TASKS)))
    if logging_on:
        await alog.save_logs()
    total = time.perf_counter() - start
    stop = True
    await watcher
    report = await alog.aclose()
    lines = 0
    path = directory / "storm.jsonl"
    if path.exists():
        with path.open("rb") as fh:
            lines = sum(1 for _ in fh)
    lags.sort()
    return {
        "seconds": total,
        "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
        "lag_max_ms": lags[-1] if lags else 0.0,
        "lines": float(lines),
        "ok": float(report.ok),
    }


def storm(logging_on: bool, directory: Path) -> dict[str, float]:
    """Run the session storm (or the same app without logging) in this process."""
    sys.path.insert(0, str(REPO_ROOT))
    return asyncio.run(_storm(logging_on, directory))


TRICKLE_ENTRIES = 20_000


async def _trickle(tasks: int, linger: float | None, directory: Path) -> dict[str, float]:
    from async_session_logger import AsyncSessionLogger

    options = {} if linger is None else {"linger": linger}
    alog = AsyncSessionLogger(
        path=str(directory / "trickle.jsonl"), dead_letter_path=None, **options
    )
    await alog.start()

    async def handler(i: int) -> None:
        async with alog.session(f"t{i}") as s:
            for j in range(TRICKLE_ENTRIES // tasks):
                await s.info("step", {"j": j})
                await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(*(handler(i) for i in range(tasks)))
    await alog.save_logs()
    elapsed = time.perf_counter() - start
    await alog.aclose()
    return {"us": elapsed / TRICKLE_ENTRIES * 1e6}


def million(bounded: bool, directory: Path) -> dict[str, float]:
    """Open 1,000,000 sessions (or none) and report peak RSS in MiB."""
    sys.path.insert(0, str(REPO_ROOT))
    from async_session_logger import SessionLogger

    log = SessionLogger(
        path=str(directory / "million.jsonl"),
        dead_letter_path=None,
        max_open_sessions=10_000,
    )
    start = time.perf_counter()
    if bounded:
        for i in range(1_000_000):
            sid = f"session-{i:08d}"
            log.start_session(sid, {"user_id": f"u{i % 1000}"})
            log.log_entry(sid, "request served", logging.INFO, {"status": 200})
    report = log.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "peak_rss_mib": peak,
        "seconds": time.perf_counter() - start,
        "evicted": float(log.stats()["evicted_sessions"]),
        "delivered": float(report.sinks["file"].delivered),
    }


def _run(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    """Run the figures in child processes and print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--million", action="store_true")
    parser.add_argument("--storm", action="store_true")
    parser.add_argument("--trickle", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "million":
        print(json.dumps(million(True, Path(args.dir))))
        return
    if args.child and args.child.startswith("trickle-"):
        _, tasks, linger = args.child.split("-")
        sys.path.insert(0, str(REPO_ROOT))
        result = asyncio.run(
            _trickle(int(tasks), None if linger == "default" else float(linger), Path(args.dir))
        )
        print(json.dumps(result))
        return
    if args.child in ("storm-on", "storm-off"):
        print(json.dumps(storm(args.child == "storm-on", Path(args.dir))))
        return
    if args.child == "baseline":
        print(json.dumps(million(False, Path(args.dir))))
        return
    if args.child:
        print(json.dumps(child(args.child, args.entries)))
        return
    if args.trickle:
        cases = [(t, lg) for t in (1, 100) for lg in ("0", "default")]
        runs: dict[tuple[int, str], list[float]] = {case: [] for case in cases}
        for _ in range(args.repeat):  # round-robin: noise spreads over every case
            for tasks, linger in cases:
                with tempfile.TemporaryDirectory() as tmp:
                    out = _run(["--child", f"trickle-{tasks}-{linger}", "--dir", tmp])
                runs[(tasks, linger)].append(out["us"])
        for (tasks, linger), values in runs.items():
            print(
                f"{tasks:>3} task(s), linger={linger}: {statistics.median(values):.1f} µs per "
                f"entry (median of {args.repeat})"
            )
        return
    if args.storm:
        on: list[dict[str, float]] = []
        off: list[dict[str, float]] = []
        for _ in range(args.repeat):  # alternate: noise spreads over both
            with tempfile.TemporaryDirectory() as tmp:
                off.append(_run(["--child", "storm-off", "--dir", tmp]))
            with tempfile.TemporaryDirectory() as tmp:
                on.append(_run(["--child", "storm-on", "--dir", tmp]))

        def med(runs: list[dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        expected = STORM_TASKS * (STORM_ENTRIES + 2)
        lines = sorted({int(r["lines"]) for r in on})
        print(
            f"{STORM_TASKS:,} tasks x own session x {STORM_ENTRIES} entries, medians of "
            f"{args.repeat}: without logging {med(off, 'seconds'):.2f} s (lag p99 "
            f"{med(off, 'lag_p99_ms'):.1f} ms, max {med(off, 'lag_max_ms'):.1f} ms); with "
            f"logging {med(on, 'seconds'):.2f} s (lag p99 {med(on, 'lag_p99_ms'):.1f} ms, max "
            f"{med(on, 'lag_max_ms'):.1f} ms); lines {lines} (expected {expected:,})"
        )
        ratio = med(on, "seconds") / med(off, "seconds")
        lag_ratio = med(on, "lag_p99_ms") / max(med(off, "lag_p99_ms"), 1e-9)
        for label, value, bound in (
            ("storm total time vs no logging", ratio, 3.0),
            ("storm loop-lag p99 vs no logging", lag_ratio, 1.5),
        ):
            verdict = "OK" if value <= bound else "MISSED"
            print(f"target: {label} <= {bound:g}x (measured {value:.2f}x) {verdict}")
        if lines != [expected]:
            print(
                f"target: storm writes every entry ({expected:,} lines) (measured {lines}) MISSED"
            )
        return
    if args.million:
        with tempfile.TemporaryDirectory() as tmp:
            base = _run(["--child", "baseline", "--dir", tmp])
            got = _run(["--child", "million", "--dir", tmp])
        print(
            f"1,000,000 sessions, max_open_sessions=10,000: peak RSS {got['peak_rss_mib']:.0f} MiB"
            f" (a logger opening none: {base['peak_rss_mib']:.0f} MiB); "
            f"{got['evicted']:,.0f} evicted, {got['delivered']:,.0f} entries written "
            f"in {got['seconds']:.1f} s"
        )
        return
    rows = [
        ("log written", "written", "us", "µs/entry"),
        ("log held", "held", "us", "µs/entry"),
        ("annotate", "annotate", "us", "µs/call"),
        ("held entry", "held-bytes", "bytes", "bytes"),
        ("open session", "session-bytes", "bytes", "bytes"),
    ]
    results: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for _ in range(args.repeat):
        for name, what, key, _unit in rows:
            results[name].append(_run(["--child", what, "--entries", str(args.entries)])[key])
    print(f"{args.entries:,} per figure, medians of {args.repeat}")
    for name, _what, _key, unit in rows:
        print(f"{name:<14} {statistics.median(results[name]):>10.2f} {unit}")


if __name__ == "__main__":
    main()
