"""The session browser on 100,000 sessions: index build, list pages, filters, text search, detail.

Run by hand: ``.venv/bin/python benchmarks/serve.py [--sessions 100000] [--entries 5]``.

Writes one log with the real ``SessionLogger`` (every 10th session fails), then times what
``serve`` does for a request, in-process (the server adds one HTTP round trip on top): building
the index from the file, the first page newest first, the status filter, a text search over
ids, metadata and messages, sorting by duration, and reading one session in full. Medians of 5.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from async_session_logger import SessionLogger
from async_session_logger.browser import FileSource, Query


def _median(fn: Callable[[], object], rounds: int = 5, fresh: FileSource | None = None) -> float:
    times = []
    for _ in range(rounds):
        if fresh is not None:
            fresh.index.version += 1  # as after a change: no cached result
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        for name, query in cases.items():
            total = source.page(query)[0]
            cold = _median(lambda q=query: source.page(q), fresh=source) * 1000
            warm = _median(lambda q=query: source.page(q)) * 1000
            print(f"{name:<28} {cold:8.1f} ms after a change, {warm:6.2f} ms again"
                  f"  ({total:,} match)")  # fmt: skip
        detail = _median(lambda: source.session(f"req-{args.sessions // 2}", None), rounds=3)
        print(f"{'one session in full':<28} {detail * 1000:8.1f} ms  (its lines read by offset)")
        source.close()


if __name__ == "__main__":
    main()
