"""Compare async_session_logger with other loggers writing N JSON entries to a file.

Run by hand, on a quiet machine::

    /work/venv/bin/python benchmarks/throughput.py [--entries 200000] [--repeat 3]
        [--only NAME ...] [--json out.json]

Every contender runs in its own fresh child process (so peak RSS is its own), ``--repeat`` times,
interleaved round-robin so that machine noise spreads over all of them; the table shows medians.
Each child makes two passes with two fresh loggers and two fresh files:

1. throughput: no per-call timers; the clock runs from just before the first call until the
   contender's own "everything is in the file" point (``save_logs()``, ``flush()``, ``remove()``,
   ``shutdown()``); right then the file's newlines are counted, and peak RSS is read afterwards.
   Async contenders also run a task that sleeps 1 ms in a loop and records how late it wakes.
2. latency: the same loop with ``time.perf_counter_ns()`` around every call.

After each pass the child parses every line of the file as JSON and checks that every entry
index ``0..N-1`` is there exactly once. See benchmarks/README.md for the columns and targets.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import functools
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SESSION_ID = "bench-session"
MESSAGE = "message"
YIELD_EVERY = 100  # the "realistic" async producer hands the loop over every 100 entries
LAG_INTERVAL_S = 0.001


@dataclass
class PassResult:
    """What one pass measured."""

    elapsed_s: float
    lines_at_done: int
    expected_lines: int
    lags_ms: list[float] | None = None
    idle_lags_ms: list[float] | None = None
    notes: list[str] = field(default_factory=list)


# -- helpers used in the child -------------------------------------------------------------------
def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _remove(path: str) -> None:
    if os.path.exists(path):  # a contender that lost everything never created its file
        os.remove(path)


def _entry_index(obj: Any) -> int | None:
    """Return the benchmark's entry index ``i`` from a parsed line of any contender."""
    if not isinstance(obj, dict):
        return None
    record = obj.get("record")
    if isinstance(record, dict):  # loguru serialize=True nests everything under record.extra
        obj = record.get("extra", {})
    fields = obj.get("custom_fields")
    if isinstance(fields, dict) and isinstance(fields.get("i"), int):
        return int(fields["i"])
    return None


def _verify(path: str, n: int) -> dict[str, int]:
    """Parse every line of ``path``; count lines, invalid JSON, entries found, missing, dupes."""
    seen = bytearray(n)
    lines = invalid = duplicates = other = 0
    if os.path.exists(path):
        with open(path, "rb") as fh:
            for raw in fh:
                lines += 1
                try:
                    obj = json.loads(raw)
                except ValueError:
                    invalid += 1
                    continue
                i = _entry_index(obj)
                if i is None or not 0 <= i < n:
                    other += 1  # e.g. our session_start / session_close lines
                elif seen[i]:
                    duplicates += 1
                else:
                    seen[i] = 1
    found = n - seen.count(0)
    return {
        "lines": lines,
        "invalid_json": invalid,
        "entries_found": found,
        "missing": n - found,
        "duplicates": duplicates,
        "other_lines": other,
    }


def _percentile(sorted_values: list[int] | list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def _latency_stats(lat: array.array[int]) -> dict[str, float]:
    values = sorted(lat)
    return {
        "caller_mean_us": sum(values) / len(values) / 1000,
        "caller_p50_us": _percentile(values, 0.50) / 1000,
        "caller_p99_us": _percentile(values, 0.99) / 1000,
        "caller_max_us": values[-1] / 1000,
    }


def _timer_floor_ns(samples: int = 20_000) -> float:
    """Return the median cost of the timing itself (two back-to-back perf_counter_ns calls)."""
    clock = time.perf_counter_ns
    lat = array.array("q", bytes(8 * samples))
    for i in range(samples):
        t0 = clock()
        lat[i] = clock() - t0
    return statistics.median(lat)


class LagMonitor:
    """A task that sleeps 1 ms over and over and records how late it wakes (ms)."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.idle_ms: list[float] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        clock = time.perf_counter
        while not self._stop:
            start = clock()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.lags_ms.append((clock() - start - LAG_INTERVAL_S) * 1000)

    async def start(self) -> None:
        """Start the task, let it settle, and drop the idle samples taken so far."""
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.05)
        # It is now asleep: a producer that never yields shows up as one very late wake-up.
        self.idle_ms, self.lags_ms = self.lags_ms, []

    async def stop(self) -> list[float]:
        """Stop the task and return its samples."""
        self._stop = True
        assert self._task is not None
        await self._task
        return self.lags_ms


# -- the contenders (each pass builds a fresh logger on a fresh file) ----------------------------
# Every contender has its loop written out twice, without and with timers: a shared loop calling
# a closure would add a Python call to every entry and distort the sub-microsecond figures.


def pass_asl_sync(
    path: str, n: int, lat: array.array[int] | None, **file_options: Any
) -> PassResult:
    """``SessionLogger(sinks=[FileSink(path, **file_options)])``: one session, log_entry in a
    loop (``file_options``: e.g. ``fsync="batch"`` for the cost of durability)."""
    from async_session_logger import SessionLogger
    from async_session_logger.sinks import FileSink

    logger = SessionLogger(sinks=[FileSink(path, **file_options)])
    logger.start_session(SESSION_ID)
    log, sid, msg, level = logger.log_entry, SESSION_ID, MESSAGE, logging.INFO
    clock = time.perf_counter_ns
    start = time.perf_counter()
    if lat is None:
        for i in range(n):
            log(sid, msg, level, {"i": i})
    else:
        for i in range(n):
            t0 = clock()
            log(sid, msg, level, {"i": i})
            lat[i] = clock() - t0
    logger.close_session(sid)
    report = logger.save_logs()
    elapsed = time.perf_counter() - start
    lines = _count_lines(path)
    final = logger.close()
    notes = [] if report.ok and final.ok else [f"save_logs: {report}; close: {final}"]
    return PassResult(elapsed, lines, n + 2, notes=notes)


async def _asl_async(
    path: str, n: int, lat: array.array[int] | None, monitor: LagMonitor | None, chunk: int
) -> PassResult:
    from async_session_logger import AsyncSessionLogger
    from async_session_logger.sinks import FileSink

    alog = AsyncSessionLogger(sinks=[FileSink(path)])
    await alog.start()
    await alog.start_session(SESSION_ID)
    if monitor is not None:
        await monitor.start()
    log, sid, msg, level = alog.log_entry, SESSION_ID, MESSAGE, logging.INFO
    clock = time.perf_counter_ns
    start = time.perf_counter()
    if lat is None:
        for base in range(0, n, chunk):
            for i in range(base, min(base + chunk, n)):
                await log(sid, msg, level, {"i": i})
            await asyncio.sleep(0)
    else:
        for base in range(0, n, chunk):
            for i in range(base, min(base + chunk, n)):
                t0 = clock()
                await log(sid, msg, level, {"i": i})
                lat[i] = clock() - t0
            await asyncio.sleep(0)
    await alog.close_session(sid)
    report = await alog.save_logs()
    elapsed = time.perf_counter() - start
    lags = await monitor.stop() if monitor is not None else None
    lines = _count_lines(path)
    final = await alog.aclose()
    notes = [] if report.ok and final.ok else [f"save_logs: {report}; aclose: {final}"]
    idle = monitor.idle_ms if monitor is not None else None
    return PassResult(elapsed, lines, n + 2, lags, idle, notes)


def pass_asl_async(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """``AsyncSessionLogger`` with a producer that never yields on its own (starves the loop)."""
    monitor = LagMonitor() if lat is None else None
    return asyncio.run(_asl_async(path, n, lat, monitor, chunk=max(n, 1)))


def pass_asl_async_y100(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """``AsyncSessionLogger`` with a producer that yields to the loop every 100 entries."""
    monitor = LagMonitor() if lat is None else None
    return asyncio.run(_asl_async(path, n, lat, monitor, chunk=YIELD_EVERY))


def pass_stdlib(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """``logging.FileHandler`` with a ``json.dumps`` formatter producing the same fields."""

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            stamp = datetime.fromtimestamp(record.created, UTC)
            return json.dumps(
                {
                    "timestamp": stamp.isoformat(timespec="microseconds")[:-6] + "Z",
                    "session_id": record.session_id,  # type: ignore[attr-defined]
                    "seq": record.seq,  # type: ignore[attr-defined]
                    "level": record.levelname,
                    "message": record.getMessage(),
                    "custom_fields": record.custom_fields,  # type: ignore[attr-defined]
                }
            )

    logger = logging.getLogger(f"bench.stdlib.{os.getpid()}.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    info, sid, msg = logger.info, SESSION_ID, MESSAGE
    clock = time.perf_counter_ns
    start = time.perf_counter()
    if lat is None:
        for i in range(n):
            info(msg, extra={"session_id": sid, "seq": i + 1, "custom_fields": {"i": i}})
    else:
        for i in range(n):
            t0 = clock()
            info(msg, extra={"session_id": sid, "seq": i + 1, "custom_fields": {"i": i}})
            lat[i] = clock() - t0
    handler.flush()
    elapsed = time.perf_counter() - start
    lines = _count_lines(path)
    logger.removeHandler(handler)
    handler.close()
    return PassResult(elapsed, lines, n)


def pass_floor(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """The inline floor: per entry a clock read, our entry dict and ``orjson.dumps`` appended to
    one bytearray, one write at the end: no sessions, no checks, no queue, no thread."""
    import orjson

    sid, msg, level, levelno = SESSION_ID, MESSAGE, "INFO", logging.INFO
    option = orjson.OPT_APPEND_NEWLINE
    dumps, now, strftime, gmtime = orjson.dumps, time.time_ns, time.strftime, time.gmtime
    buf = bytearray()
    extend = buf.extend
    second, prefix = -1, ""
    clock = time.perf_counter_ns
    start = time.perf_counter()
    if lat is None:
        _floor_lines(buf, 0, n)
    else:
        for i in range(n):  # _floor_lines() written out, with a timer around each entry
            t0 = clock()
            sec, rest = divmod(now(), 1_000_000_000)
            if sec != second:
                second, prefix = sec, strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
            entry = {
                "timestamp": f"{prefix}.{rest // 1000:06d}Z",
                "session_id": sid,
                "seq": i + 1,
                "event": "log",
                "level": level,
                "levelno": levelno,
                "message": msg,
                "custom_fields": {"i": i},
            }
            extend(dumps(entry, option=option))
            lat[i] = clock() - t0
    with open(path, "wb") as fh:
        fh.write(buf)
    elapsed = time.perf_counter() - start
    return PassResult(elapsed, _count_lines(path), n)


def _floor_lines(buf: bytearray, first: int, end: int) -> None:
    """Append the floor's lines for entries ``first``..``end - 1`` to ``buf``."""
    import orjson

    sid, msg, level, levelno = SESSION_ID, MESSAGE, "INFO", logging.INFO
    option = orjson.OPT_APPEND_NEWLINE
    dumps, now, strftime, gmtime = orjson.dumps, time.time_ns, time.strftime, time.gmtime
    extend = buf.extend
    second, prefix = -1, ""
    for i in range(first, end):
        sec, rest = divmod(now(), 1_000_000_000)
        if sec != second:
            second, prefix = sec, strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
        entry = {
            "timestamp": f"{prefix}.{rest // 1000:06d}Z",
            "session_id": sid,
            "seq": i + 1,
            "event": "log",
            "level": level,
            "levelno": levelno,
            "message": msg,
            "custom_fields": {"i": i},
        }
        extend(dumps(entry, option=option))


async def _floor_async(path: str, n: int, monitor: LagMonitor) -> PassResult:
    await monitor.start()
    start = time.perf_counter()
    # One write per step (not one at the end): a 30 MB bytearray that grows and is written in
    # one go would show its reallocations and its write as loop lag, which no logger has.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        for base in range(0, n, YIELD_EVERY):
            buf = bytearray()
            _floor_lines(buf, base, min(base + YIELD_EVERY, n))
            os.write(fd, buf)
            await asyncio.sleep(0)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    lags = await monitor.stop()
    return PassResult(elapsed, _count_lines(path), n, lags, monitor.idle_ms)


def pass_floor_async_y100(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """The inline floor as a coroutine that writes and yields every 100 entries, beside the
    1 ms sleeper: its loop lag is what this machine shows for a loop kept busy in small steps,
    whatever the logger (the physical floor of ``asl-async-y100``'s lag). The latency pass is
    :func:`pass_floor`'s."""
    if lat is not None:
        return pass_floor(path, n, lat)  # per-entry latency: the same loop body as "floor"
    return asyncio.run(_floor_async(path, n, LagMonitor()))


def pass_structlog(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """structlog's fastest documented setup: orjson, BytesLoggerFactory, filtering bound logger."""
    import orjson
    import structlog

    with open(path, "wb") as fh:
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.EventRenamer("message"),
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.BytesLoggerFactory(file=fh),
            cache_logger_on_first_use=True,
        )
        log = structlog.get_logger()
        info, sid, msg = log.info, SESSION_ID, MESSAGE
        clock = time.perf_counter_ns
        start = time.perf_counter()
        if lat is None:
            for i in range(n):
                info(msg, session_id=sid, seq=i + 1, custom_fields={"i": i})
        else:
            for i in range(n):
                t0 = clock()
                info(msg, session_id=sid, seq=i + 1, custom_fields={"i": i})
                lat[i] = clock() - t0
        fh.flush()
        elapsed = time.perf_counter() - start
        lines = _count_lines(path)
    structlog.reset_defaults()
    return PassResult(elapsed, lines, n)


def _loguru(path: str, n: int, lat: array.array[int] | None, enqueue: bool) -> PassResult:
    from loguru import logger

    logger.remove()  # the default stderr handler
    handler_id = logger.add(path, serialize=True, enqueue=enqueue, level="INFO")
    info, sid, msg = logger.info, SESSION_ID, MESSAGE
    clock = time.perf_counter_ns
    start = time.perf_counter()
    if lat is None:
        for i in range(n):
            info(msg, session_id=sid, seq=i + 1, custom_fields={"i": i})
    else:
        for i in range(n):
            t0 = clock()
            info(msg, session_id=sid, seq=i + 1, custom_fields={"i": i})
            lat[i] = clock() - t0
    if enqueue:
        logger.complete()
    logger.remove(handler_id)  # drains the queue (enqueue=True), flushes and closes the file
    elapsed = time.perf_counter() - start
    return PassResult(elapsed, _count_lines(path), n)


def pass_loguru(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """loguru ``logger.add(path, serialize=True)``."""
    return _loguru(path, n, lat, enqueue=False)


def pass_loguru_enqueue(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """loguru ``logger.add(path, serialize=True, enqueue=True)``."""
    return _loguru(path, n, lat, enqueue=True)


async def _aiologger(
    path: str, n: int, lat: array.array[int] | None, monitor: LagMonitor | None, awaited: bool
) -> PassResult:
    from aiologger.formatters.json import (
        FILE_PATH_FIELDNAME,
        FUNCTION_NAME_FIELDNAME,
        LINE_NUMBER_FIELDNAME,
        ExtendedJsonFormatter,
    )
    from aiologger.handlers.files import AsyncFileHandler
    from aiologger.levels import LogLevel
    from aiologger.loggers.json import JsonLogger

    logger = JsonLogger(name="bench", level=LogLevel.INFO)
    handler = AsyncFileHandler(path)
    handler.formatter = ExtendedJsonFormatter(
        exclude_fields=[FILE_PATH_FIELDNAME, FUNCTION_NAME_FIELDNAME, LINE_NUMBER_FIELDNAME],
        tz=UTC,
    )
    logger.add_handler(handler)
    if monitor is not None:
        await monitor.start()
    info, sid, msg = logger.info, SESSION_ID, MESSAGE
    clock = time.perf_counter_ns
    start = time.perf_counter()
    if awaited:
        if lat is None:
            for i in range(n):
                await info(msg, extra={"session_id": sid, "seq": i + 1, "custom_fields": {"i": i}})
        else:
            for i in range(n):
                t0 = clock()
                await info(msg, extra={"session_id": sid, "seq": i + 1, "custom_fields": {"i": i}})
                lat[i] = clock() - t0
    # Fire-and-forget, in the same realistic shape as asl-async-y100: the producer hands the
    # loop over every 100 entries, so the log tasks get to run while it logs.
    elif lat is None:
        for base in range(0, n, YIELD_EVERY):
            for i in range(base, min(base + YIELD_EVERY, n)):
                info(msg, extra={"session_id": sid, "seq": i + 1, "custom_fields": {"i": i}})
            await asyncio.sleep(0)
    else:
        for base in range(0, n, YIELD_EVERY):
            for i in range(base, min(base + YIELD_EVERY, n)):
                t0 = clock()
                info(msg, extra={"session_id": sid, "seq": i + 1, "custom_fields": {"i": i}})
                lat[i] = clock() - t0
            await asyncio.sleep(0)
    # The documented end: shutdown() flushes and closes the handlers. It does not wait for log
    # tasks still pending (fire-and-forget mode): what they had not written by now is lost.
    await logger.shutdown()
    elapsed = time.perf_counter() - start
    lines = _count_lines(path)
    lags = await monitor.stop() if monitor is not None else None
    notes: list[str] = []
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if pending:
        notes.append(f"{len(pending)} log tasks still pending after shutdown(), cancelled")
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # A cancelled task may have reopened the file after shutdown() and written more.
        await handler.close()
    idle = monitor.idle_ms if monitor is not None else None
    return PassResult(elapsed, lines, n, lags, idle, notes)


def pass_aiologger(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """aiologger ``JsonLogger`` + ``AsyncFileHandler``, ``await logger.info(...)`` per entry."""
    monitor = LagMonitor() if lat is None else None
    return asyncio.run(_aiologger(path, n, lat, monitor, awaited=True))


def pass_aiologger_nowait(path: str, n: int, lat: array.array[int] | None) -> PassResult:
    """aiologger, ``logger.info(...)`` not awaited (yield every 100), then ``shutdown()``."""
    monitor = LagMonitor() if lat is None else None
    return asyncio.run(_aiologger(path, n, lat, monitor, awaited=False))


@dataclass(frozen=True)
class Contender:
    """A named contender: its pass function and what it imports (measured in the baseline)."""

    run: Callable[[str, int, array.array[int] | None], PassResult]
    imports: tuple[str, ...]
    package: str
    ours: bool = False


_ASL = ("async_session_logger", "async_session_logger.sinks")
CONTENDERS: dict[str, Contender] = {
    "asl-sync": Contender(pass_asl_sync, _ASL, "async-session-logger", ours=True),
    "asl-async": Contender(pass_asl_async, _ASL, "async-session-logger", ours=True),
    "asl-async-y100": Contender(pass_asl_async_y100, _ASL, "async-session-logger", ours=True),
    # The cost of durability: fdatasync after every batch, or at most once a second.
    "asl-sync-fsync-batch": Contender(
        functools.partial(pass_asl_sync, fsync="batch"), _ASL, "async-session-logger", ours=True
    ),
    "asl-sync-fsync-1s": Contender(
        functools.partial(pass_asl_sync, fsync=1.0), _ASL, "async-session-logger", ours=True
    ),
    "floor": Contender(pass_floor, ("orjson",), "orjson"),
    "floor-async-y100": Contender(pass_floor_async_y100, ("orjson",), "orjson"),
    "stdlib": Contender(pass_stdlib, (), "python"),
    "structlog": Contender(pass_structlog, ("structlog", "orjson"), "structlog"),
    "loguru": Contender(pass_loguru, ("loguru",), "loguru"),
    "loguru-enqueue": Contender(pass_loguru_enqueue, ("loguru",), "loguru"),
    "aiologger": Contender(pass_aiologger, ("aiologger", "aiologger.loggers.json"), "aiologger"),
    "aiologger-nowait": Contender(
        pass_aiologger_nowait, ("aiologger", "aiologger.loggers.json"), "aiologger"
    ),
}


def run_child(name: str, n: int, workdir: str, result_path: str) -> None:
    """Measure one contender (called in its own process) and write the result as JSON."""
    sys.path.insert(0, str(REPO_ROOT))  # benchmark this checkout, not an installed copy
    contender = CONTENDERS[name]
    for module in contender.imports:
        importlib.import_module(module)
    out: dict[str, Any] = {
        "name": name,
        "entries": n,
        "version": _version(contender.package),
        "rss_baseline_mb": _rss_mb(),
    }

    # Pass 1: throughput, no per-call timers.
    path = os.path.join(workdir, f"{name}.throughput.jsonl")
    result = contender.run(path, n, None)
    out["rss_peak_mb"] = _rss_mb()  # before anything else reads the file into memory
    out["e2e_s"] = result.elapsed_s
    out["e2e_per_s"] = n / result.elapsed_s if result.elapsed_s > 0 else float("nan")
    out["expected_lines"] = result.expected_lines
    out["lines_at_done"] = result.lines_at_done
    out["throughput_check"] = _verify(path, n)
    out["complete"] = result.lines_at_done >= result.expected_lines
    out["notes"] = [f"throughput pass: {note}" for note in result.notes]
    if result.lags_ms is not None:
        lags = sorted(result.lags_ms)
        out["lag_samples"] = len(lags)
        out["lag_max_ms"] = lags[-1] if lags else float("nan")
        out["lag_p99_ms"] = _percentile(lags, 0.99)
        out["lag_p50_ms"] = _percentile(lags, 0.50)
    if result.idle_lags_ms:
        idle = sorted(result.idle_lags_ms)
        out["lag_idle_p50_ms"] = _percentile(idle, 0.50)
        out["lag_idle_max_ms"] = idle[-1]
    _remove(path)

    # Pass 2: per-call latency, fresh logger and file, same process.
    path = os.path.join(workdir, f"{name}.latency.jsonl")
    lat = array.array("q", bytes(8 * n))
    result = contender.run(path, n, lat)
    out.update(_latency_stats(lat))
    out["latency_pass_e2e_per_s"] = n / result.elapsed_s if result.elapsed_s > 0 else 0.0
    out["latency_pass_lines_at_done"] = result.lines_at_done
    out["latency_check"] = _verify(path, n)
    out["notes"] += [f"latency pass: {note}" for note in result.notes]
    out["rss_end_mb"] = _rss_mb()
    out["timer_floor_ns"] = _timer_floor_ns()
    _remove(path)

    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


def _version(package: str) -> str:
    if package == "python":
        return platform.python_version()
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- the parent: run children, aggregate, print ---------------------------------------------------
def _spawn(name: str, n: int, workdir: str, timeout: float) -> dict[str, Any]:
    child_dir = tempfile.mkdtemp(prefix=f"{name}.", dir=workdir)
    result_path = os.path.join(child_dir, "result.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--entries", str(n)]
    cmd += ["--workdir", child_dir, "--result", result_path]
    try:
        proc = subprocess.run(
            cmd, cwd=child_dir, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(child_dir, ignore_errors=True)
        return {"name": name, "error": f"timed out after {timeout:g} s"}
    try:
        if proc.returncode != 0 or not os.path.exists(result_path):
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            return {"name": name, "error": f"exit code {proc.returncode}:\n{tail}"}
        with open(result_path, encoding="utf-8") as fh:
            result: dict[str, Any] = json.load(fh)
        if proc.stderr.strip():
            result["stderr"] = proc.stderr.strip().splitlines()[-5:]
        return result
    finally:
        shutil.rmtree(child_dir, ignore_errors=True)


NUMERIC = (
    "e2e_per_s",
    "e2e_s",
    "caller_mean_us",
    "caller_p50_us",
    "caller_p99_us",
    "caller_max_us",
    "rss_peak_mb",
    "rss_baseline_mb",
    "rss_end_mb",
    "lag_max_ms",
    "lag_p99_ms",
    "lag_p50_ms",
    "lag_idle_p50_ms",
    "lag_idle_max_ms",
    "latency_pass_e2e_per_s",
    "timer_floor_ns",
)


def _check(run: dict[str, Any]) -> str:
    """Say whether each pass's file held every entry once, in valid JSON, at the done point."""
    parts = []
    for label, key, at_done in (
        ("", "throughput_check", "lines_at_done"),
        ("latency pass: ", "latency_check", "latency_pass_lines_at_done"),
    ):
        c, problems = run[key], []
        if c["missing"]:
            problems.append(f"LOST {c['missing']}")
        if c["invalid_json"]:
            problems.append(f"{c['invalid_json']} bad JSON")
        if c["duplicates"]:
            problems.append(f"{c['duplicates']} dup")
        if run[at_done] < run["expected_lines"] and not c["missing"]:
            problems.append("late")  # complete in the end, but not when the logger said done
        if problems:
            parts.append(label + ", ".join(problems))
    return "; ".join(parts) or "ok"


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one contender (the worst count for written lines)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[-1]["error"] if runs else "no run"}
    agg: dict[str, Any] = {"repeats": len(good), "version": good[0]["version"]}
    for key in NUMERIC:
        values = [r[key] for r in good if isinstance(r.get(key), int | float)]
        if values:
            agg[key] = statistics.median(values)
    agg["lines_at_done"] = min(r["lines_at_done"] for r in good)
    complete = all(
        r["lines_at_done"] >= r["expected_lines"]
        and not r["throughput_check"]["missing"]
        and not r["throughput_check"]["invalid_json"]
        for r in good
    )
    if not complete and "e2e_per_s" in agg:
        # Entries/s means nothing for a file that never held every entry: keep it apart.
        agg["e2e_until_done_per_s"] = agg.pop("e2e_per_s")
    agg["expected_lines"] = good[0]["expected_lines"]
    agg["entries_found"] = min(r["throughput_check"]["entries_found"] for r in good)
    agg["check"] = "; ".join(dict.fromkeys(_check(r) for r in good))
    if len(good) < len(runs):
        agg["check"] += f"; {len(runs) - len(good)} run(s) failed"
    agg["notes"] = sorted({note for r in good for note in r.get("notes", [])})
    return agg


def _fmt(value: Any, spec: str) -> str:
    if not isinstance(value, int | float) or value != value:  # missing or NaN
        return "-"
    return format(value, spec)


def e2e_cell(agg: dict[str, Any]) -> str:
    """Return the end-to-end cell: entries/s, or the figure marked incomplete."""
    if "e2e_per_s" in agg:
        return _fmt(agg["e2e_per_s"], ",.0f")
    if "e2e_until_done_per_s" in agg:
        return f"incomplete ({_fmt(agg['e2e_until_done_per_s'], ',.0f')}/s to its done point)"
    return "-"


def render(results: dict[str, dict[str, Any]], n: int, repeat: int) -> str:
    """Return the Markdown report: the table, the ratios and the targets."""
    out = [
        f"## {n:,} JSON entries to a file, median of {repeat} run(s) per contender",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}.",
        "",
        "| contender | version | end-to-end entries/s | caller mean µs | caller p50 µs "
        "| caller p99 µs | peak RSS MB | loop lag max ms | loop lag p99 ms "
        "| lines at done / expected | check |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, agg in results.items():
        if "error" in agg:
            first = agg["error"].splitlines()[0]
            out.append(f"| {name} | | ERROR: {first} | | | | | | | | failed |")
            continue
        out.append(
            f"| {name} | {agg['version']} | {e2e_cell(agg)} "
            f"| {_fmt(agg.get('caller_mean_us'), '.2f')} | {_fmt(agg.get('caller_p50_us'), '.2f')} "
            f"| {_fmt(agg.get('caller_p99_us'), '.2f')} | {_fmt(agg.get('rss_peak_mb'), '.0f')} "
            f"| {_fmt(agg.get('lag_max_ms'), '.1f')} | {_fmt(agg.get('lag_p99_ms'), '.1f')} "
            f"| {agg['lines_at_done']:,} / {agg['expected_lines']:,} | {agg['check']} |"
        )
    floors = [a["timer_floor_ns"] for a in results.values() if "timer_floor_ns" in a]
    if floors:
        out += ["", f"Timer floor (included in caller µs): {statistics.median(floors):.0f} ns."]
    errors = {k: a["error"] for k, a in results.items() if "error" in a}
    notes = {k: a["notes"] for k, a in results.items() if a.get("notes")}
    for name, error in errors.items():
        out += ["", f"**{name} failed:**", "```", error, "```"]
    for name, items in notes.items():
        out += [f"- {name}: {note}" for note in items]

    def e2e(name: str) -> float | None:
        value = results.get(name, {}).get("e2e_per_s")
        return value if isinstance(value, float | int) and value > 0 else None

    ours = [k for k in results if k in CONTENDERS and CONTENDERS[k].ours and e2e(k)]
    if ours:
        out += [
            "",
            "| ours | ratio to floor (e2e) | vs stdlib (e2e) | vs structlog (e2e) | RSS vs stdlib |",
        ]
        out.append("|---|--:|--:|--:|--:|")
        std, sl, fl = e2e("stdlib"), e2e("structlog"), e2e("floor")
        rss_std = results.get("stdlib", {}).get("rss_peak_mb")
        for name in ours:
            mine, rss = e2e(name) or 0.0, results[name].get("rss_peak_mb")
            ratios = (
                mine / fl if fl else None,
                mine / std if std else None,
                mine / sl if sl else None,
                rss / rss_std if rss and rss_std else None,
            )
            cells = [f"{r:.2f}x" if r is not None else "- (not run)" for r in ratios]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "Targets:", ""]
    out += [f"- {line}" for line in targets(results)]
    return "\n".join(out)


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """Return one line per target: ``target: X (measured Y) OK/MISSED``."""
    lines = []

    def get(name: str, key: str) -> float | None:
        value = results.get(name, {}).get(key)
        return value if isinstance(value, int | float) and value == value else None

    def verdict(label: str, value: float | None, bound: float, at_least: bool, unit: str) -> None:
        if value is None:
            lines.append(f"target: {label} (measured n/a: not run, failed, or incomplete) MISSED")
            return
        ok = value >= bound if at_least else value <= bound
        sign = ">=" if at_least else "<="
        shown = f"{value:.3f}" if unit == "x" else f"{value:.2f}"  # 2.998x must not read "3.00x"
        lines.append(
            f"target: {label} {sign} {bound:g}{unit} (measured {shown}{unit}) "
            f"{'OK' if ok else 'MISSED'}"
        )

    for name in ("asl-sync", "asl-async", "asl-async-y100"):
        if name not in results:
            continue
        mine, fl, sl = (
            get(name, "e2e_per_s"),
            get("floor", "e2e_per_s"),
            get("structlog", "e2e_per_s"),
        )
        verdict(f"{name} end-to-end vs floor", mine / fl if mine and fl else None, 0.6, True, "x")
        verdict(
            f"{name} end-to-end vs structlog", mine / sl if mine and sl else None, 2.5, True, "x"
        )
        rss, rss_std = get(name, "rss_peak_mb"), get("stdlib", "rss_peak_mb")
        verdict(
            f"{name} peak RSS vs stdlib",
            rss / rss_std if rss and rss_std else None,
            1.2,
            False,
            "x",
        )
    if "asl-sync" in results:
        verdict("asl-sync caller p50", get("asl-sync", "caller_p50_us"), 0.7, False, " µs")
        verdict("asl-sync caller p99", get("asl-sync", "caller_p99_us"), 4, False, " µs")
        if "floor" in results:
            # The µs targets are absolute: on a slower machine even the floor's own per-entry
            # work (a dict and orjson.dumps, no queue, no lock) may take longer than them.
            lines.append(
                f"floor caller p50 {_fmt(get('floor', 'caller_p50_us'), '.2f')} µs, p99 "
                f"{_fmt(get('floor', 'caller_p99_us'), '.2f')} µs: the per-entry work alone on "
                "this machine, beside the caller targets"
            )
    if "asl-async-y100" in results:
        verdict(
            "asl-async-y100 event-loop lag max",
            get("asl-async-y100", "lag_max_ms"),
            2,
            False,
            " ms",
        )
    if "floor-async-y100" in results:
        floor_lag = get("floor-async-y100", "lag_max_ms")
        mine = get("asl-async-y100", "lag_max_ms")
        lines.append(
            f"floor-async-y100 (no logger, yields every 100 entries) lag max: "
            f"{_fmt(floor_lag, '.1f')} ms, p99 {_fmt(get('floor-async-y100', 'lag_p99_ms'), '.1f')}"
            f" ms: this machine's own loop lag; asl-async-y100 at "
            f"{mine / floor_lag if mine and floor_lag else float('nan'):.2f}x it"
        )
    if "asl-async" in results:
        lag = get("asl-async", "lag_max_ms")
        lines.append(
            f"asl-async (producer never yields) lag max: {_fmt(lag, '.1f')} ms: informational; "
            "a loop that never yields starves every other task whatever the logger does"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run every contender in its own process, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000, help="entries per pass")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (medians)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(CONTENDERS),
        metavar="NAME",
        help=f"contenders to run (default all): {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    parser.add_argument("--dir", metavar="DIR", help="where the log files go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.entries < 1 or args.repeat < 1:
        parser.error("--entries and --repeat must be >= 1")

    if args.child:
        run_child(args.child, args.entries, args.workdir, args.result)
        return 0

    names = list(dict.fromkeys(args.only or CONTENDERS))
    workdir = tempfile.mkdtemp(prefix="asl-bench-", dir=args.dir)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for rep in range(args.repeat):
            for name in names:  # round-robin: noise spreads over every contender
                print(f"[{rep + 1}/{args.repeat}] {name} ...", file=sys.stderr, flush=True)
                started = time.perf_counter()
                result = _spawn(name, args.entries, workdir, args.timeout)
                runs[name].append(result)
                if "error" in result:
                    status = "ERROR " + result["error"].splitlines()[0]
                else:
                    status = f"{result['e2e_per_s']:,.0f} entries/s e2e, {_check(result)}"
                elapsed = time.perf_counter() - started
                print(f"    {elapsed:.1f} s: {status}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = {name: aggregate(runs[name]) for name in names}
    print(render(results, args.entries, args.repeat))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "entries": args.entries,
                    "repeat": args.repeat,
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "medians": results,
                    "targets": targets(results),
                    "runs": runs,
                },
                fh,
                indent=2,
            )
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
