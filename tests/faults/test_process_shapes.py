"""Nothing lost in any process shape: two loops, fork pools, os._exit children, Ctrl-C in
close(), a loop never closed (issue 10, items 1-5). Each runs a real child process."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Script, parse_file

ScriptFactory = Callable[[str], Script]


def _entries(path: Path) -> list[dict[str, object]]:
    entries, bad = parse_file(path)
    assert bad == 0
    return entries


TWO_RUNS = """
import asyncio
from async_session_logger import AsyncSessionLogger

alog = AsyncSessionLogger(method="file", path="log.jsonl")  # module level, as apps do

async def run(name):
    await alog.start_session(name)
    for i in range(500):
        await alog.log_entry(name, f"{name}-{i}")
    await alog.close_session(name)

asyncio.run(run("first"))     # ends without aclose(): its loop closes under the logger
asyncio.run(run("second"))    # a new loop takes over

async def finish():
    report = await alog.save_logs()
    print("ok" if report.ok else f"NOT OK {report}", report.accepted, flush=True)
    await alog.aclose()

asyncio.run(finish())
"""


def test_one_async_logger_across_two_asyncio_runs(script: ScriptFactory) -> None:
    """A module-level AsyncSessionLogger used by two asyncio.run() calls: both runs'
    entries are delivered once each, and save_logs() on the later loop does not hang."""
    run = script(TWO_RUNS).run(timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["ok", "1004"]
    entries = _entries(Path(run.args[1]).parent / "log.jsonl")
    counts = Counter(str(e["session_id"]) for e in entries)
    assert counts == {"first": 502, "second": 502}
    assert len({(e["session_id"], e["seq"]) for e in entries}) == 1004


NEVER_CLOSED_LOOP = """
import asyncio
from async_session_logger import AsyncSessionLogger

async def main():
    alog = AsyncSessionLogger(method="file", path="log.jsonl")
    await alog.start_session("s")
    for i in range(50_000):
        await alog.log_entry("s", f"m{i}")
    print("logged", flush=True)

loop = asyncio.new_event_loop()
loop.run_until_complete(main())   # the loop is never closed, the logger never aclose()d
"""


def test_a_loop_never_closed_is_drained_at_exit(script: ScriptFactory) -> None:
    """An AsyncSessionLogger whose loop is neither closed nor its logger closed: the exit
    hook runs that loop to drain it, so all 50,002 entries are written (start, log, close)."""
    s = script(NEVER_CLOSED_LOOP)
    run = s.run(timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Task was destroyed" not in run.stderr
    entries = _entries(s.path.parent / "log.jsonl")
    assert len(entries) == 50_002
    assert entries[-1]["event"] == "session_close" and entries[-1]["status"] == "interrupted"


FORK_POOL = """
import multiprocessing
from async_session_logger import SessionLogger, UnknownSessionError

logger = SessionLogger(method="file", path="log.jsonl")
logger.start_session("parent")
for i in range(2000):
    logger.log_entry("parent", f"p{i}")   # some still queued in the parent at fork time

def work(n):
    try:
        logger.log_entry("parent", "from a child")
    except UnknownSessionError as exc:
        refused = "parent process" in str(exc)
    else:
        refused = False
    logger.start_session(f"child-{n}")
    for i in range(500):
        logger.log_entry(f"child-{n}", f"c{n}-{i}")
    logger.close_session(f"child-{n}")
    return refused

if __name__ == "__main__":
    pool = multiprocessing.get_context("fork").Pool(4)
    refused = pool.map(work, range(16))
    pool.close()
    pool.join()
    for i in range(100):
        logger.log_entry("parent", f"after{i}")
    logger.close_session("parent")
    report = logger.close()
    print(all(refused), report.ok, flush=True)
"""


def test_fork_pool_children_log_through_the_parents_logger(script: ScriptFactory) -> None:
    """A fork Pool(4) working through 16 tasks with the parent's SessionLogger: every child
    entry is written exactly once, the parent's queued entries once (by the parent), and a
    child that logs into a session the parent opened gets a clear error."""
    s = script(FORK_POOL)
    run = s.run(timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "True"]
    entries = _entries(s.path.parent / "log.jsonl")
    keys = Counter((str(e["session_id"]), int(str(e["seq"]))) for e in entries)
    assert max(keys.values()) == 1, "an entry was written twice"
    counts = Counter(str(e["session_id"]) for e in entries)
    assert counts["parent"] == 1 + 2000 + 100 + 1
    for n in range(16):
        assert counts[f"child-{n}"] == 502, n


EXIT_CHILD = """
import multiprocessing, sys
from async_session_logger import SessionLogger

def child():
    name = multiprocessing.current_process().name
    logger = SessionLogger(method="file", path=f"log-{name}.jsonl")
    logger.start_session("c")
    for i in range(20_000):
        logger.log_entry("c", f"m{i}")
    # no close(): multiprocessing ends this process with os._exit(), atexit never runs

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    proc = ctx.Process(target=child, name="kid")
    proc.start()
    proc.join()
    print(proc.exitcode, flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_children_ending_with_os_exit_lose_nothing(script: ScriptFactory, method: str) -> None:
    """A logger made in a fork or forkserver child that forgets close(): multiprocessing's
    own finalizers drain it before os._exit(), so all 20,002 entries are written."""
    s = script(EXIT_CHILD)
    run = s.run(method, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"]
    entries = _entries(s.path.parent / "log-kid.jsonl")
    assert len(entries) == 20_002
    assert entries[-1]["event"] == "session_close"


HANDLED = "    print(message, file=open('handled.jsonl', 'a'))\n"
CTRL_C_IN_CLOSE = """
import time
from async_session_logger import SessionLogger

def slow(message):
    time.sleep(0.0005)

with SessionLogger(method=["file", "custom"], path="log.jsonl", custom_handler=slow,
                   custom={"max_pending": 100_000}, dead_letter_path="dead.jsonl") as logger:
    logger.start_session("s")
    for i in range(4000):
        logger.log_entry("s", f"m{i}")
    logger.close_session("s")
    print("closing", flush=True)
"""


def test_ctrl_c_during_close_lets_the_drain_finish(script: ScriptFactory) -> None:
    """Ctrl-C while the end of a `with SessionLogger(...)` block drains a slow sink: the
    drain finishes (all 4,002 entries reach the slow handler), then KeyboardInterrupt."""
    s = script(CTRL_C_IN_CLOSE.replace("    time.sleep", HANDLED + "    time.sleep"))
    proc = s.popen()
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "closing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0  # the KeyboardInterrupt still ends the program
    assert "KeyboardInterrupt" in err
    assert "delivering what is queued before stopping" in err
    handled = (s.path.parent / "handled.jsonl").read_text().splitlines()
    assert len({json.loads(line)["seq"] for line in handled}) == 4002
    assert len(_entries(s.path.parent / "log.jsonl")) == 4002


def test_second_ctrl_c_abandons_and_reports(script: ScriptFactory) -> None:
    """A second Ctrl-C abandons the drain, and stderr says how many entries were not
    delivered (nothing vanishes silently)."""
    s = script(CTRL_C_IN_CLOSE.replace("0.0005", "0.005"))
    proc = s.popen()
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "closing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "interrupted twice (Ctrl-C) while draining" in err
    assert "Not delivered:" in err and "per sink pending: file 0, slow " in err
