"""Instructions per entry, counted by valgrind: a figure that does not move with the machine.

Run by hand (needs ``valgrind``: ``apt-get install valgrind``)::

    .venv/bin/python benchmarks/instructions.py [--entries 30000] [--only NAME ...] [--storm]

On a shared VM, wall-clock runs of one commit differ by 15-30%, so a change worth 5% needs
many alternated runs to show. Valgrind's cachegrind counts the instructions a process runs
(user space, every thread), the same on every run to within about 1%: each contender runs
twice in a child under it, with N entries and with none (the same imports, logger and
session, so start-up cancels), and the table shows ``(I(N) - I(0)) / N``.

What the count leaves out: time in the kernel (a stdlib ``FileHandler`` makes one write per
record, which costs it more time than its count says), cache misses, and the hand-offs
between threads. Use it to compare two commits of the same code, or a contender with the
floor, and confirm a gain with ``throughput.py`` or ``stdlib_bridge.py``.

The contenders are ``throughput.py``'s (the same passes: one session, 200,000 entries there)
and ``stdlib_bridge.py``'s (``logger.info("request %d done", i, extra=...)`` per record), plus
per-session and per-request costs, whose unit is a session or a request (no entries but the
ones named):

- ``session-verbs``: ``AsyncSessionLogger.start_session(id, metadata)`` and
  ``close_session(id)`` on the logger's loop, written to a file;
- ``session-handle``: the same through ``async with alog.session(id, metadata)``;
- ``asgi-bare``: a minimal ASGI app (a 200 response of two messages) called in-process, the
  loop getting a turn after each request as under a server (and the writer with it: each
  request's entries are written before the next, as at a moderate request rate);
- ``asgi-session``: the same app under ``SessionMiddleware``, whose route logs one entry in
  the request's session (a start, that entry, ``Response`` and a close per request). Its ratio
  is to ``asgi-bare``; their difference is what the middleware and its session cost.
- ``asgi-bare-paced`` and ``asgi-paced``: the same two with the default ``linger`` and a 5 ms
  pause after each request (an app at a moderate request rate, idle in between: each
  request's entries are a batch, and the writer's wake-ups are the app's to pay);
  ``min(N, 500)`` requests, as the pauses are real time.

``--storm`` counts ``sessions.py --storm``'s two processes instead (10,000 tasks, each in its
own session, 20 entries each, and the same app without logging), whole-process, start-up
included, and prints their ratio: the storm's time target (3x) in a figure that does not move
with the machine. Timed, three runs of one commit within an hour gave 4.8x to 6.8x, mostly
because the bare app's own time moved (0.39-0.66 s).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
THROUGHPUT = ("floor", "asl-sync", "asl-async", "asl-async-y100", "stdlib", "structlog")
BRIDGE = ("stdlib-file", "bridge-sync", "bridge-async")
SESSIONS = (
    "session-verbs",
    "session-handle",
    "asgi-bare",
    "asgi-session",
    "asgi-bare-paced",
    "asgi-paced",
)
PACED_REQUESTS = 500
# What each contender's ratio is taken against (none: no ratio printed).
BASELINE = {
    **{name: "floor" for name in THROUGHPUT},
    **{name: "stdlib-file" for name in BRIDGE},
    "asgi-session": "asgi-bare",
    "asgi-paced": "asgi-bare-paced",
}
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def child(name: str, n: int, directory: str) -> None:
    """Run one contender's pass with ``n`` entries (in the process valgrind watches)."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO_ROOT))  # this checkout, not an installed copy
    if name in SESSIONS:
        import asyncio

        asyncio.run(_sessions(name, n, Path(directory) / f"{name}.jsonl"))
        return
    if name in BRIDGE:
        import stdlib_bridge

        stdlib_bridge.child(name, n, Path(directory) / f"{name}.log")
        return
    import importlib

    import throughput

    contender = throughput.CONTENDERS[name]
    for module in contender.imports:
        importlib.import_module(module)
    contender.run(str(Path(directory) / f"{name}.jsonl"), n, None)


async def _sessions(name: str, n: int, path: Path) -> None:
    """``n`` sessions or requests of one of the SESSIONS contenders, written to ``path``."""
    import asyncio
    from typing import Any

    from async_session_logger import AsyncSessionLogger, current_session
    from async_session_logger.asgi import SessionMiddleware

    # linger=0: the writer takes what is queued whenever it gets a turn, so what it does does
    # not depend on the clock (valgrind runs ~50x slower than the machine). The paced apps
    # keep the default: their pauses are longer than it.
    paced = name.endswith("-paced")
    options: dict[str, Any] = {} if paced else {"linger": 0}
    alog = AsyncSessionLogger(path=str(path), dead_letter_path=None, max_queue=1_000_000, **options)
    await alog.start()
    metadata = {"user": "u1", "method": "GET", "path": "/items/1"}
    if name == "session-verbs":
        for i in range(n):
            sid = f"session-{i:08d}"
            await alog.start_session(sid, metadata)
            await alog.close_session(sid)
    elif name == "session-handle":
        for i in range(n):
            async with alog.session(f"session-{i:08d}", metadata):
                pass
    else:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            session = current_session()
            if session is not None:
                await session.info("handled", {"item": 1})  # type: ignore[misc]
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"{}"})

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            pass

        served: Any = app
        if name == "asgi-session" or name == "asgi-paced":
            served = SessionMiddleware(app, logger=alog, lifespan=False)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/items/1",
            "raw_path": b"/items/1",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"localhost"), (b"user-agent", b"bench/1.0")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        pause = 0.005 if paced else 0  # a server between requests: the writer gets its turn
        for _ in range(n):
            await served(dict(scope), receive, send)
            await asyncio.sleep(pause)
    await alog.save_logs()
    await alog.aclose()


def _instructions(args: list[str], what: str) -> int:
    """Run ``python *args`` under cachegrind (in a fresh temporary directory, passed as the
    last argument) and return the instructions it counted."""
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable,
                *args,
                directory,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    found = _REFS.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def count(name: str, n: int) -> int:
    """Return the instructions one child run of ``name`` with ``n`` entries takes."""
    return _instructions([__file__, "--child", name, str(n)], f"{name} ({n} entries)")


def count_storm(logging_on: bool) -> int:
    """Return the instructions of one ``sessions.py`` storm process (with or without logging)."""
    which = "storm-on" if logging_on else "storm-off"
    return _instructions([str(HERE / "sessions.py"), "--child", which, "--dir"], which)


def storm() -> None:
    """Count the session storm with and without logging and print the ratio."""
    print("storm, without logging ...", file=sys.stderr, flush=True)
    bare = count_storm(False)
    print("storm, with logging ...", file=sys.stderr, flush=True)
    logged = count_storm(True)
    print(
        f"\nsession storm (10,000 tasks x 20 entries; whole process, valgrind cachegrind): "
        f"without logging {bare / 1e9:.2f} G instructions, with logging {logged / 1e9:.2f} G: "
        f"{logged / bare:.2f}x (the timed target: 3x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--storm", action="store_true", help="count the session storm instead")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=THROUGHPUT + BRIDGE + SESSIONS)
    parser.add_argument("--child", nargs=3, metavar=("NAME", "N", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n, directory = args.child
        child(name, int(n), directory)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if args.storm:
        storm()
        return
    names = args.only or list(THROUGHPUT + BRIDGE + SESSIONS)
    n = args.entries
    per: dict[str, float] = {}
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        runs = min(n, PACED_REQUESTS) if name.endswith("-paced") else n
        per[name] = (count(name, runs) - count(name, 0)) / runs
    print(
        f"\ninstructions per entry, session or request ({n:,} of them; valgrind cachegrind, "
        "user space)\n"
    )
    print(f"{'contender':<16} {'instructions':>13}  ratio")
    for name in names:
        base = BASELINE.get(name)
        ratio = ""
        if base in per and name != base:
            # For the loggers: floor / ours, the throughput targets' sense (higher is better).
            # For the bridge: ours / FileHandler, the bridge target's sense (lower is better).
            if base == "floor":
                ratio = f"{per[base] / per[name]:.2f}x floor's speed"
            elif base == "stdlib-file":
                ratio = f"{per[name] / per[base]:.2f}x FileHandler's count"
            else:  # a web app under the middleware, against the same app without it
                ratio = f"{per[name] - per[base]:,.0f} more than the bare app's"
        print(f"{name:<16} {per[name]:>13,.0f}  {ratio}")
    if any(name.endswith("-paced") for name in names):
        print(f"(the paced contenders: {min(n, PACED_REQUESTS):,} requests each)")


if __name__ == "__main__":
    main()
