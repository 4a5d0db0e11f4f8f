"""Requests/s of a minimal FastAPI app under uvicorn, with and without SessionMiddleware.

Run by hand, on a quiet machine::

    .venv/bin/python benchmarks/web_requests.py [--requests 5000] [--rounds 5]
        [--connections 32] [--json out.json]

Both variants serve the *same* app: one async route that calls ``current_session()`` and logs
one entry when there is a session (so, only under the middleware). ``plain`` is the bare
FastAPI app; ``session`` is ``SessionMiddleware(app, logger=AsyncSessionLogger(method="file"))``
writing to a temporary file: a start entry, the route's entry, the Response entry and a close
entry per request. uvicorn runs with its defaults (h11, one worker) except that its access log
is off in both variants, as its console output would dominate the figures.

Each round starts a fresh server process per variant (the order alternates between rounds so
that drift spreads evenly), sends ``--requests / 10`` warm-up requests, then times
``--requests`` requests over ``--connections`` keep-alive connections from a minimal asyncio
HTTP/1.1 client in this process (cheaper than httpx, so the server is what is measured). After
the server's SIGTERM the session variant's log is checked: one whole session per request,
warm-up included. The table shows the medians and the ratio session/plain of the same run, and
the server process's CPU time per timed request (from /proc, Linux): on a busy machine the
requests/s move with the neighbours' load, the CPU time per request much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
VARIANTS = ("plain", "session")
REQUEST = b"GET /hello HTTP/1.1\r\nHost: bench\r\nUser-Agent: web-requests-bench\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


# -- the server (a child process) ----------------------------------------------------------------
def serve(variant: str, log_path: str) -> None:
    """Serve the benchmark app (``variant``) on 127.0.0.1, a free port, until SIGTERM."""
    import uvicorn
    from fastapi import FastAPI

    from async_session_logger import AsyncSessionLogger, current_session
    from async_session_logger.asgi import SessionMiddleware

    api = FastAPI()

    @api.get("/hello")
    async def hello() -> dict[str, bool]:
        session = current_session()
        if session is not None:
            session.info("hello")  # queued at call time
        return {"ok": True}

    app: Any = api
    if variant == "session":
        app = SessionMiddleware(api, logger=AsyncSessionLogger(method="file", path=log_path))

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(self.servers[0].sockets[0].getsockname()[1], flush=True)

    config = uvicorn.Config(app, host=HOST, port=0, access_log=False, log_level="warning")
    # uvicorn re-raises SIGTERM after its graceful shutdown: make that a no-op, exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    asyncio.run(Server(config).serve())


# -- the load (this process) ---------------------------------------------------------------------
async def _connection(port: int, count: int) -> None:
    """Send ``count`` requests one after another on one keep-alive connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"unexpected response: {head[:80]!r}")
            match = CONTENT_LENGTH.search(head)
            if match is None:
                raise RuntimeError(f"no content-length: {head[:200]!r}")
            await reader.readexactly(int(match.group(1)))
    finally:
        writer.close()
        await writer.wait_closed()


async def _load(port: int, requests: int, connections: int) -> float:
    """Send ``requests`` over ``connections`` connections; return the seconds it took."""
    share, extra = divmod(requests, connections)
    counts = [share + (1 if i < extra else 0) for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, n) for n in counts if n))
    return time.perf_counter() - started


def _cpu_seconds(pid: int) -> float | None:
    """Return the user + system CPU seconds process ``pid`` used so far (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return None
    # Fields 14 and 15 of proc(5), counted after the command name: utime and stime in ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count_sessions(path: Path) -> tuple[int, int]:
    """Return (whole sessions, lines) of a session log: start + route entry + Response + close."""
    events: dict[str, list[str]] = {}
    lines = 0
    with open(path, "rb") as fh:
        for raw in fh:
            lines += 1
            entry = json.loads(raw)
            events.setdefault(entry["session_id"], []).append(entry["message"])
    whole = sum(
        1
        for messages in events.values()
        if messages == ["Session started", "hello", "Response", "Session closed"]
    )
    return whole, lines


@dataclass
class Run:
    """One timed round of one variant."""

    variant: str
    round: int
    requests: int
    seconds: float
    rps: float
    cpu_us_per_request: float | None = None
    sessions_checked: int | None = None
    notes: list[str] = field(default_factory=list)


async def run_round(variant: str, index: int, args: argparse.Namespace, workdir: Path) -> Run:
    """Start a server for ``variant``, warm it up, time ``args.requests`` requests, stop it."""
    log_path = workdir / f"{variant}-{index}.jsonl"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        variant,
        "--log",
        str(log_path),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    try:
        port = int(await asyncio.wait_for(child.stdout.readline(), 60))
        warmup = max(args.requests // 10, args.connections)
        await _load(port, warmup, args.connections)
        cpu_before = _cpu_seconds(child.pid)
        seconds = await _load(port, args.requests, args.connections)
        cpu_after = _cpu_seconds(child.pid)
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
        await asyncio.wait_for(child.wait(), 120)
    run = Run(variant, index, args.requests, seconds, args.requests / seconds)
    if cpu_before is not None and cpu_after is not None:
        run.cpu_us_per_request = (cpu_after - cpu_before) / args.requests * 1e6
    if child.returncode != 0:
        run.notes.append(f"server exit code {child.returncode}")
    if variant == "session":
        whole, lines = _count_sessions(log_path)
        run.sessions_checked = whole
        if whole != warmup + args.requests:
            run.notes.append(f"{whole} whole sessions of {warmup + args.requests} ({lines} lines)")
    return run


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every round and return the figures."""
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="web-requests-") as tmp:
        for index in range(args.rounds):
            order = VARIANTS if index % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                run = await run_round(variant, index, args, Path(tmp))
                runs.append(run)
                notes = f"  [{'; '.join(run.notes)}]" if run.notes else ""
                cpu = f", server CPU {run.cpu_us_per_request:5.0f} us/request"
                print(
                    f"round {index + 1}/{args.rounds} {variant:>7}: {run.rps:9,.0f} req/s"
                    f"{cpu if run.cpu_us_per_request is not None else ''}{notes}",
                    flush=True,
                )
    medians = {v: statistics.median(r.rps for r in runs if r.variant == v) for v in VARIANTS}
    cpu = {v: statistics.median(c) if (c := _cpu_of(runs, v)) else None for v in VARIANTS}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "requests": args.requests,
        "rounds": args.rounds,
        "connections": args.connections,
        "median_rps": medians,
        "ratio_session_to_plain": medians["session"] / medians["plain"],
        "median_cpu_us_per_request": cpu,
        "runs": [asdict(r) for r in runs],
    }


def _cpu_of(runs: list[Run], variant: str) -> list[float]:
    """Return the server CPU figures of ``variant``'s runs."""
    return [r.cpu_us_per_request for r in runs if r.variant == variant and r.cpu_us_per_request]


def main() -> None:
    """Parse the options; serve (child) or benchmark (parent)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are reported)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.log)
        return
    result = asyncio.run(bench(args))
    print()
    print(f"{'variant':>8} {'median req/s':>13} {'min':>9} {'max':>9} {'server CPU us/req':>18}")
    for variant in VARIANTS:
        rps = [r["rps"] for r in result["runs"] if r["variant"] == variant]
        cpu = result["median_cpu_us_per_request"][variant]
        print(
            f"{variant:>8} {result['median_rps'][variant]:13,.0f} {min(rps):9,.0f} "
            f"{max(rps):9,.0f} {cpu if cpu is None else round(cpu):>18}"
        )
    print(f"ratio session/plain (median req/s): {result['ratio_session_to_plain']:.3f}")
    cpu = result["median_cpu_us_per_request"]
    if cpu["plain"] and cpu["session"]:
        extra = cpu["session"] - cpu["plain"]
        print(f"server CPU per request: +{extra:.0f} us with the middleware")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
