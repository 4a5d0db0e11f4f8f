"""Per-record cost of the stdlib bridge beside a bare stdlib FileHandler.

Run by hand, on a quiet machine::

    .venv/bin/python benchmarks/stdlib_bridge.py [--records 100000] [--repeat 5]

Each contender runs in a fresh child process, ``--repeat`` times, interleaved round-robin; the
table shows medians. Every contender logs the same ``logger.info("request %d done", i,
extra={"user": "u1"})`` N times to a file and is timed twice in one pass: the caller's time (the
loop alone) and end to end (until every record is in the file: ``handler.flush()`` for stdlib,
``save_logs()`` for the bridge). The file's lines are counted afterwards.

- ``stdlib-file``: ``logging.FileHandler`` with the default ``Formatter`` (plain text).
- ``stdlib-json``: ``logging.FileHandler`` with a ``json.dumps`` formatter (the usual JSON setup).
- ``bridge-sync``: ``SessionLogHandler`` into a ``SessionLogger`` file sink, inside a session.
- ``bridge-async``: the same into an ``AsyncSessionLogger``, from a coroutine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("stdlib-file", "stdlib-json", "bridge-sync", "bridge-async")


class JsonFormatter(logging.Formatter):
    """What a stdlib user writes for JSON lines: one json.dumps per record."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "timestamp": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                "user": getattr(record, "user", None),
            }
        )


def _loop(logger: logging.Logger, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        logger.info("request %d done", i, extra={"user": "u1"})
    return time.perf_counter() - start


def child(name: str, n: int, path: Path) -> dict[str, float]:
    """Run one contender; return caller and end-to-end seconds and the lines written."""
    sys.path.insert(0, str(REPO_ROOT))
    logger = logging.getLogger("bench")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if name.startswith("stdlib"):
        handler = logging.FileHandler(path)
        if name == "stdlib-json":
            handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        start = time.perf_counter()
        caller = _loop(logger, n)
        handler.flush()
        total = time.perf_counter() - start
        handler.close()
    elif name == "bridge-sync":
        from async_session_logger import SessionLogger
        from async_session_logger.stdlib import SessionLogHandler

        slog = SessionLogger(path=str(path), dead_letter_path=None)
        logger.addHandler(SessionLogHandler(slog))
        with slog.session("bench"):
            start = time.perf_counter()
            caller = _loop(logger, n)
            slog.save_logs()
            total = time.perf_counter() - start
        slog.close()
    else:
        from async_session_logger import AsyncSessionLogger
        from async_session_logger.stdlib import SessionLogHandler

        async def main() -> tuple[float, float]:
            async with AsyncSessionLogger(path=str(path), dead_letter_path=None) as alog:
                logger.addHandler(SessionLogHandler(alog))
                async with alog.session("bench"):
                    start = time.perf_counter()
                    caller = _loop(logger, n)
                    await alog.save_logs()
                    return caller, time.perf_counter() - start

        caller, total = asyncio.run(main())
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return {"caller_s": caller, "total_s": total, "lines": lines}


def main() -> None:
    """Run every contender ``--repeat`` times round-robin and print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.records, Path(args.path))))
        return
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeat):
            for name in CONTENDERS:
                path = Path(tmp) / f"{name}-{round_}.log"
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        name,
                        "--records",
                        str(args.records),
                        "--path",
                        str(path),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                runs[name].append(json.loads(out))
    n = args.records
    base = statistics.median(r["total_s"] for r in runs["stdlib-file"]) / n
    print(f"{n:,} records, medians of {args.repeat} rounds")
    print(
        f"{'contender':<14} {'caller µs/rec':>14} {'end-to-end µs/rec':>18} {'vs stdlib-file':>15}"
    )
    for name in CONTENDERS:
        caller = statistics.median(r["caller_s"] for r in runs[name]) / n
        total = statistics.median(r["total_s"] for r in runs[name]) / n
        lines = {int(r["lines"]) for r in runs[name]}
        print(
            f"{name:<14} {caller * 1e6:>14.2f} {total * 1e6:>18.2f} {total / base:>14.2f}x"
            f"   lines {sorted(lines)}"
        )
    print()
    for name in ("bridge-sync", "bridge-async"):
        ratio = statistics.median(r["total_s"] for r in runs[name]) / n / base
        verdict = "OK" if ratio <= 1.5 else "MISSED"
        print(f"target: {name} <= 1.5x stdlib-file per record (measured {ratio:.2f}x) {verdict}")


if __name__ == "__main__":
    main()
