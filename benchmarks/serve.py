"""The session browser on 100,000 sessions: index build, list pages, filters, text search, detail.

Run by hand: ``.venv/bin/python benchmarks/serve.py [--sessions 100000] [--entries 5]``.

Writes one log with the real ``SessionLogger`` (every 10th session fails), then times what
``serve`` does for a request, in-process (the server adds one HTTP round trip on top): building
the index from the file, the first page newest first, the status filter, a text search over
ids, metadata and messages, sorting by duration, and reading one session in full. Medians of 5.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from async_session_logger import SessionLogger
from async_session_logger.browser import FileSource, Query


def _median(
    fn: Callable[[], object], rounds: int = 5, change: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(rounds):
        if change is not None:
            change()  # the index changed: no cached result
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _entry(session_id: str, seq: int, event: str, stamp: str) -> dict[str, object]:
    entry: dict[str, object] = {
        "v": 1,
        "session_id": session_id,
        "seq": seq,
        "event": event,
        "timestamp": stamp,
        "level": "INFO",
        "levelno": 20,
        "message": "more",
    }
    if event == "session_start":
        entry["metadata"] = {}
    return entry


def main() -> None:
    """Write the log, then time the browser's answers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asl-serve-bench-") as tmp:
        log = Path(tmp) / "app.jsonl"
        start = time.perf_counter()
        with SessionLogger(method="file", path=log, dead_letter_path=None) as logger:
            for i in range(args.sessions):
                sid = f"req-{i}"
                logger.start_session(sid, metadata={"user_id": f"u{i % 1000}", "path": "/x"})
                for j in range(args.entries):
                    logger.log_entry(sid, f"step {j} of request {i}", logging.INFO, {"j": j})
                logger.close_session(sid, "error" if i % 10 == 0 else "closed")
        written = time.perf_counter() - start
        size = log.stat().st_size
        print(f"{args.sessions:,} sessions x {args.entries} entries: {size / 1e6:.0f} MB "
              f"written in {written:.1f} s")  # fmt: skip
        start = time.perf_counter()
        source = FileSource([str(log)])
        built = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"index built in {built:.2f} s; peak RSS {rss:.0f} MiB")
        cases = {
            "first page (newest first)": Query(),
            "status=error": Query(status=["error"]),
            "q=request 4242 (messages)": Query(text="request 4242"),
            "q=u999 (metadata)": Query(text="u999"),
            "sort=-duration": Query(sort="-duration"),
            "page 1000 (offset 50,000)": Query(offset=50_000),
        }
        seq = itertools.count(100)
        now = datetime.now(UTC)

        def new_entry() -> None:
            # What a growing file brings most: an entry of a session already listed.
            sid = f"req-{args.sessions - 1}"
            stamp = now.isoformat().replace("+00:00", "Z")
            source.index.add(_entry(sid, next(seq), "log", stamp))

        def new_session() -> None:
            # A session that starts before others already listed: the start order is sorted.
            sid = f"late-{next(seq)}"
            stamp = (now - timedelta(days=1)).isoformat().replace("+00:00", "Z")
            source.index.add(_entry(sid, 0, "session_start", stamp))

        print(f"{'':<28} {'new entry':>10} {'new session':>12} {'same query':>11}")
        for name, query in cases.items():
            total = source.page(query)[0]
            cold = _median(lambda q=query: source.page(q), change=new_entry) * 1000
            sorted_ = _median(lambda q=query: source.page(q), change=new_session) * 1000
            warm = _median(lambda q=query: source.page(q)) * 1000
            print(f"{name:<28} {cold:7.1f} ms {sorted_:9.1f} ms {warm:8.2f} ms"
                  f"  ({total:,} match)")  # fmt: skip
        detail = _median(lambda: source.session(f"req-{args.sessions // 2}", None), rounds=3)
        print(f"{'one session in full':<28} {detail * 1000:8.1f} ms  (its lines read by offset)")
        source.close()


if __name__ == "__main__":
    main()
