"""Process exit: the atexit drain and its budget, SIGTERM, SIGINT and kill -9."""

from __future__ import annotations

import json
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from async_session_logger import (
    ConfigurationError,
    LoggerClosedError,
    ReaderWarning,
    SessionLogger,
    read_dead_letters,
    read_entries,
)
from async_session_logger.sinks import MemorySink

from ..conftest import read_lines
from .conftest import Script, parse_file, wait_until

ScriptFactory = Callable[..., Script]

MANY_SESSIONS = """
import sys
from async_session_logger import SessionLogger

first = SessionLogger(method="file", path="first.jsonl", dead_letter_path=None)
second = SessionLogger(method="file", path="second.jsonl", dead_letter_path=None)
first.start_session("done")
first.log_entry("done", "finished properly")
first.close_session("done")
for sid in ("open-1", "open-2"):
    first.start_session(sid, metadata={"sid": sid})
    for i in range(1000):
        first.log_entry(sid, f"{sid} {i}")
second.start_session("other")
second.log_entry("other", "in the second logger")
print("logged", flush=True)
with second.session("handle") as s:
    s.info("inside the block")
    {ending}
"""


@pytest.mark.parametrize(
    ("ending", "code"),
    [("sys.exit(4)", 4), ("raise RuntimeError('boom')", 1)],
    ids=["sys-exit", "uncaught"],
)
def test_exit_without_close_closes_every_open_session_interrupted(
    script: ScriptFactory, ending: str, code: int
) -> None:
    """Two loggers, sessions closed and open, one inside `with logger.session()`: at exit every
    open session gets its close entry (interrupted, or error for a failing block); the closed
    one keeps `closed`; nothing is lost and nothing is reported."""
    s = script(MANY_SESSIONS.replace("{ending}", ending))
    run = s.run()
    assert run.returncode == code, run.stderr
    assert "async_session_logger:" not in run.stderr  # no incident, no loss to report
    first = read_lines(s.path.parent / "first.jsonl")
    closes = {e["session_id"]: e for e in first if e["event"] == "session_close"}
    assert {sid: e["status"] for sid, e in closes.items()} == {
        "done": "closed",
        "open-1": "interrupted",
        "open-2": "interrupted",
    }
    for sid in ("open-1", "open-2"):
        seqs = [e["seq"] for e in first if e["session_id"] == sid]
        assert seqs == list(range(1002)) and closes[sid]["entries"] == 1000
    second = read_lines(s.path.parent / "second.jsonl")
    statuses = {e["session_id"]: e["status"] for e in second if e["event"] == "session_close"}
    # SystemExit is an interruption; an exception escaping the block is a failed session.
    handle_status = "interrupted" if code == 4 else "error"
    assert statuses == {"other": "interrupted", "handle": handle_status}
    handle = [e["message"] for e in second if e["session_id"] == "handle"]
    assert handle[1] == "inside the block"
    if code == 1:
        assert handle[2] == "Session failed: RuntimeError: boom"


NEVER_FINISHING_SINK = """
import asyncio, sys
from async_session_logger import SessionLogger
from async_session_logger.sinks import FileSink, Sink

class Never(Sink):
    default_name = "never"
    async def write_batch(self, batch):
        await asyncio.Event().wait()

logger = SessionLogger(
    sinks=[FileSink("log.jsonl"), Never(timeout=None)],
    close_timeout=1.5,
    dead_letter_path="dead.jsonl",
)
for sid in ("a", "b"):
    logger.start_session(sid)
for i in range(2000):
    logger.log_entry("a" if i % 2 else "b", f"m{i}")
logger.close_session("b")
print("logged", flush=True)
"""


def test_exit_drain_with_a_sink_that_never_finishes_keeps_its_budget(
    script: ScriptFactory, tmp_path: Path
) -> None:
    """A sink whose write never returns: the process still exits within close_timeout plus a
    margin, says on stderr what it dead-lettered, and the dead-letter file holds it all."""
    proc = script(NEVER_FINISHING_SINK).popen()
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "logged"
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - started
    assert proc.returncode == 0, err
    assert took < 1.5 + 2.5, f"exit took {took:.1f} s with close_timeout=1.5"
    assert "sink 'never' closed with 2004 entries dead-lettered" in err
    assert err.count("async_session_logger:") == 1, err
    letters = list(read_dead_letters(tmp_path / "dead.jsonl"))
    assert len(letters) == 2004 and {d["sink"] for d in letters} == {"never"}
    assert {d["reason"] for d in letters} == {"logger closed after 1.5 s before delivery"}
    lines = read_lines(tmp_path / "log.jsonl")
    assert len(lines) == 2004
    assert {e["session_id"]: e["status"] for e in lines if "status" in e} == {
        "a": "interrupted",
        "b": "closed",
    }


BLOCKING_HANDLER = """
import time
from async_session_logger import SessionLogger

async def handler(message):
    time.sleep(3600)  # a blocking call inside an async handler: it holds the loop thread

logger = SessionLogger(
    method=["file", "custom"], path="log.jsonl", custom_handler=handler,
    close_timeout=1, dead_letter_path="dead.jsonl",
)
logger.start_session("s")
for i in range(100):
    logger.log_entry("s", f"m{i}")
print("logged", flush=True)
"""


def test_exit_drain_with_a_handler_blocking_the_loop_still_exits(script: ScriptFactory) -> None:
    """An async handler that blocks the loop thread: the exit drain gives up after
    close_timeout plus a 2 s grace, says so on stderr, and the process exits."""
    proc = script(BLOCKING_HANDLER).popen()
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "logged"
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - started
    assert proc.returncode == 0, err
    assert took < 1 + 2 + 2.5, f"exit took {took:.1f} s"
    assert "SessionLogger.close() gave up: the drain made no progress for 3 s" in err
    assert "Not delivered:" in err and "handler " in err


ENDLESS = """
import signal, sys, time
from async_session_logger import SessionLogger

{setup}
logger = SessionLogger(method="file", path="log.jsonl", dead_letter_path=None{options})
logger.start_session("endless")
print("ready", flush=True)
i = 0
while True:
    logger.log_entry("endless", f"entry {i}", "INFO", {"i": i})
    i += 1
    if i % 500 == 0:
        time.sleep(0.001)
"""


@dataclass
class Ended:
    """How a signalled script ended, and where its log is."""

    returncode: int
    stdout: str
    stderr: str
    log: Path


def _run_endless(script: ScriptFactory, sig: int, setup: str = "", options: str = "") -> Ended:
    """Start a script that logs without end, signal it once 200 kB are written, wait."""
    s = script(ENDLESS.replace("{setup}", setup).replace("{options}", options))
    log = s.path.parent / "log.jsonl"
    proc = s.popen()
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    wait_until(lambda: log.stat().st_size > 200_000, 20)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return Ended(proc.returncode, out, err, log)


def _assert_drained(path: Path, holes: int = 0) -> None:
    """Every entry logged is in the file, then the interrupted close entry.

    ``holes``: how many seqs may be missing (the entry being logged at the instant a signal
    raised its exception inside the verb).
    """
    lines = read_lines(path)
    close = lines[-1]
    assert (close["event"], close["status"]) == ("session_close", "interrupted")
    seqs = [e["seq"] for e in lines]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0 and seqs[-1] == close["entries"] + 1
    assert len(set(range(seqs[-1] + 1)) - set(seqs)) <= holes


def test_sigterm_by_default_kills_without_the_drain(script: ScriptFactory) -> None:
    """Documents Python's default: SIGTERM kills the process at once, the exit hook never
    runs, so the open session gets no close entry and whatever was queued is lost."""
    s = _run_endless(script, signal.SIGTERM)
    assert s.returncode == -signal.SIGTERM
    assert s.stderr == ""  # nothing said either
    entries, torn = parse_file(s.log)
    assert torn <= 1
    assert entries and not any(e["event"] == "session_close" for e in entries)


def test_sigterm_with_handle_sigterm_drains_and_exits_143(script: ScriptFactory) -> None:
    """handle_sigterm=True: SIGTERM becomes SystemExit(143), the exit hook drains, the open
    session is closed interrupted and every logged entry is in the file."""
    s = _run_endless(script, signal.SIGTERM, options=", handle_sigterm=True")
    assert s.returncode == 128 + signal.SIGTERM, s.stderr
    assert "Traceback" not in s.stderr
    _assert_drained(s.log)


def test_sigterm_chains_to_the_applications_own_handler(script: ScriptFactory) -> None:
    """With a SIGTERM handler installed before the logger, that handler is called (here it
    exits 0 itself) and the exit hook drains as on any exit."""
    setup = (
        "def on_term(signum, frame):\n"
        "    print('app handler', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
    )
    s = _run_endless(script, signal.SIGTERM, setup=setup, options=", handle_sigterm=True")
    assert s.returncode == 0, s.stderr
    assert "app handler" in s.stdout
    _assert_drained(s.log)


def test_sigint_drains_through_keyboard_interrupt(script: ScriptFactory) -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt: the exit hook drains without any option.

    Python raises KeyboardInterrupt wherever the main thread is, possibly inside log_entry
    after the entry's seq was taken: that one entry may be missing (a visible seq hole)."""
    s = _run_endless(script, signal.SIGINT)
    assert s.returncode in (1, -signal.SIGINT, 128 + signal.SIGINT)
    _assert_drained(s.log, holes=1)


def test_handle_sigterm_installs_and_restores_in_process(tmp_path: Path) -> None:
    """handle_sigterm installs a handler for the logger's life and close() restores the
    previous one; outside the main thread it is a ConfigurationError."""
    before = signal.getsignal(signal.SIGTERM)
    logger = SessionLogger(sinks=[MemorySink()], dead_letter_path=None, handle_sigterm=True)
    assert signal.getsignal(signal.SIGTERM) != before
    logger.close()
    assert signal.getsignal(signal.SIGTERM) == before
    caught: list[BaseException] = []

    def build() -> None:
        try:
            SessionLogger(sinks=[MemorySink()], dead_letter_path=None, handle_sigterm=True)
        except ConfigurationError as exc:
            caught.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert caught and "main thread" in str(caught[0])


KILL9 = """
from async_session_logger import SessionLogger

logger = SessionLogger(method="file", path="log.jsonl", dead_letter_path=None)
logger.start_session("doomed")
print("ready", flush=True)
for i in range(50_000):
    logger.log_entry("doomed", f"entry {i}", "INFO", {"i": i, "pad": "p" * 100})
logger.save_logs()
print("all written", flush=True)
import time; time.sleep(60)
"""


@pytest.mark.parametrize("kill_at", [100_000, 3_000_000], ids=["early", "late"])
def test_kill_9_mid_stream_leaves_only_whole_lines(script: ScriptFactory, kill_at: int) -> None:
    """SIGKILL while 50,000 entries stream to the file: every complete line parses, at most the
    last one is torn, and the file holds a gap-free prefix of the session."""
    s = script(KILL9)
    proc = s.popen()
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    path = s.path.parent / "log.jsonl"
    wait_until(lambda: path.exists() and path.stat().st_size > kill_at, 30)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    parsed = [json.loads(line) for line in complete]  # every complete line parses
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReaderWarning)  # a torn tail is skipped silently
        entries = list(read_entries(path))
    assert entries == parsed
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    if tail:  # a torn last line: a prefix of the next entry's JSON
        with pytest.raises(ValueError):
            json.loads(tail)
    print(f"\nkilled after {len(entries)} of 50,002 entries; torn tail: {len(tail)} bytes")


SIGTERM_DURING_CLOSE = """
import asyncio, os, signal, sys, threading
from async_session_logger import SessionLogger
from async_session_logger.sinks import Batch, Sink

out = sys.argv[1]

class Slow(Sink):
    default_name = "slow"

    async def write_batch(self, batch: Batch) -> None:
        await asyncio.sleep(0.005 * len(batch))
        with open(out, "ab") as fh:
            fh.write(batch.data)

logger = SessionLogger(sinks=[Slow(max_batch=10)], handle_sigterm=True, dead_letter_path=None)
logger.start_session("s")
for i in range(400):
    logger.log_entry("s", f"m{i}")
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
logger.close()
print("after close", flush=True)
"""


def test_sigterm_during_close_waits_for_the_drain(script: ScriptFactory, tmp_path: Path) -> None:
    """handle_sigterm=True, SIGTERM while close() drains (the end of a `with` block during
    `systemctl stop`): the drain finishes, then the SIGTERM takes effect."""
    out = tmp_path / "out.jsonl"
    done = script(SIGTERM_DURING_CLOSE).run(str(out), timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "after close" not in done.stdout
    entries = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert [e["seq"] for e in entries] == list(range(402))


def test_a_close_that_gave_up_refuses_further_verbs(tmp_path: Path) -> None:
    """close() that gave up on a stuck loop leaves a closed logger: verbs raise
    LoggerClosedError, save_logs() returns the final report at once."""
    release = threading.Event()

    async def stuck(message: str) -> None:
        release.wait(30)  # blocks the loop thread, as a careless async handler would

    logger = SessionLogger(
        method="custom",
        custom_handler=stuck,
        close_timeout=0.5,
        dead_letter_path=None,
        on_error=lambda error: None,
    )
    try:
        logger.start_session("s")
        logger.log_entry("s", "blocks the loop")
        report = logger.close()
        assert logger.closed
        with pytest.raises(LoggerClosedError):
            logger.log_entry("s", "after close")
        with pytest.raises(LoggerClosedError):
            logger.start_session("t")
        started = time.monotonic()
        assert logger.save_logs() is report
        assert time.monotonic() - started < 1
    finally:
        release.set()


async def test_no_thread_at_interpreter_shutdown_still_writes_and_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.12+ starts no new thread once the interpreter is shutting down, which is when
    the exit drain of a script that forgot ``close()`` runs. A sink's or the dead-letter
    file's thread that was not started yet must not cost the entries: the call runs in the
    loop's thread instead. (Seen on 3.12: every dead letter lost, "can't create new thread at
    interpreter shutdown". CI runs 3.11, so the refusal is made here as 3.12 makes it.)"""
    from async_session_logger import AsyncSessionLogger, read_dead_letters
    from async_session_logger.sinks import CustomSink, FileSink

    start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name.startswith("async_session_logger."):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start(self)

    async def down(message: str) -> None:
        raise RuntimeError("down")

    ours_before = {t for t in threading.enumerate() if t.name.startswith("async_session_logger.")}
    monkeypatch.setattr(threading.Thread, "start", refuse)
    sinks = [FileSink(tmp_path / "log.jsonl"), CustomSink(down, name="down", retries=0)]
    dead = tmp_path / "dead.jsonl"
    async with AsyncSessionLogger(sinks=sinks, dead_letter_path=dead) as alog:
        async with alog.session("s") as session:
            for i in range(100):
                await session.info("entry", {"i": i})
        report = await alog.save_logs()
    assert report["file"].delivered == 102
    assert report["down"].dead_lettered == 102 and report["down"].lost == 0
    assert len(read_lines(tmp_path / "log.jsonl")) == 102
    assert sum(1 for _ in read_dead_letters(dead)) == 102
    # None started (earlier tests' idle threads, a rotation's, may still be there).
    assert {
        t for t in threading.enumerate() if t.name.startswith("async_session_logger.")
    } <= ours_before


AS_312_AT_EXIT = """
import atexit, threading

def _refuse(*args, **kwargs):
    raise RuntimeError("can't create new thread at interpreter shutdown")

def as_312():  # what Python 3.12+ does once the interpreter is shutting down
    threading._start_new_thread = _refuse
    threading._start_joinable_thread = _refuse  # what Thread.start() calls on 3.13+

def handler(line):
    with open("handled.jsonl", "a") as out:
        out.write(line + "\\n")
"""

EXIT_WITHOUT_THREADS = {
    "async-face": """
import asyncio
from async_session_logger import AsyncSessionLogger
from async_session_logger.sinks import CustomSink, FileSink

async def main():
    alog = AsyncSessionLogger(
        sinks=[FileSink("log.jsonl"), CustomSink(handler, name="h")], dead_letter_path="dead.jsonl"
    )
    await alog.start_session("s")
    for i in range(500):
        await alog.log_entry("s", f"entry {i}")

asyncio.run(main())  # returns with the logger never closed: the exit hook drains it
atexit.register(as_312)  # runs before that hook (atexit: last in, first out)
""",
    "sync-face": """
from async_session_logger import SessionLogger
from async_session_logger.sinks import CustomSink, FileSink

async def down(line):
    raise RuntimeError("down")

log = SessionLogger(
    sinks=[FileSink("log.jsonl"), CustomSink(handler, name="h"), CustomSink(down, retries=0)],
    dead_letter_path="dead.jsonl",
)
log.start_session("s")
for i in range(500):
    log.log_entry("s", f"entry {i}")
atexit.register(as_312)
""",
}


@pytest.mark.parametrize("face", sorted(EXIT_WITHOUT_THREADS))
def test_exit_drain_without_new_threads_delivers_everything(
    script: ScriptFactory, face: str
) -> None:
    """Python 3.12+ starts no new thread once the interpreter is shutting down, which is when
    the exit hook drains a logger nobody closed. The async face drained on a new thread (none
    came: every entry was lost, with a traceback) and a plain custom handler got its batches
    on a thread of its own (dead-lettered instead). Both now run in the exiting thread. (Seen
    with a real 3.12.1; CI runs 3.11, so the script refuses threads as 3.12 does.)"""
    s = script(AS_312_AT_EXIT + EXIT_WITHOUT_THREADS[face])
    run = s.run()
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    folder = s.path.parent
    assert len(read_lines(folder / "log.jsonl")) == 502
    assert len(read_lines(folder / "handled.jsonl")) == 502
    if face == "sync-face":  # the failing sink's: dead letters need their thread at exit too
        assert sum(1 for _ in read_dead_letters(folder / "dead.jsonl")) == 502
    else:
        assert not (folder / "dead.jsonl").exists()


HANGING_HANDLER_AT_EXIT = """
import asyncio, time
from async_session_logger import AsyncSessionLogger
from async_session_logger.sinks import CustomSink, FileSink

def hangs(line):
    time.sleep(3600)  # a plain handler that never returns

async def main():
    alog = AsyncSessionLogger(
        sinks=[FileSink("log.jsonl"), CustomSink(hangs, name="hangs")],
        dead_letter_path="dead.jsonl",
        close_timeout=1,
    )
    await alog.start_session("s")
    for i in range(10):
        await alog.log_entry("s", f"entry {i}")

asyncio.run(main())
atexit.register(as_312)
"""


def test_exit_drain_without_new_threads_keeps_its_budget(script: ScriptFactory) -> None:
    """With no thread to be had at exit (Python 3.12+), a plain handler is called on the
    drain's own loop, in the exiting thread: one that never returns would hold the exit for
    ever, out of reach of the loop's timeouts. An alarm ends the drain at its budget (its
    ``close_timeout`` cap plus a grace); what is undelivered is reported."""
    s = script(AS_312_AT_EXIT + HANGING_HANDLER_AT_EXIT)
    started = time.monotonic()
    run = s.run(timeout=60)
    assert time.monotonic() - started < 30
    assert run.returncode == 0, run.stderr
    assert "exit drain gave up: a call blocked its loop past the drain's budget" in run.stderr
    assert "Traceback" not in run.stderr and "never retrieved" not in run.stderr, run.stderr
    # The hung handler held the loop, the other sink's lane with it: what that lane had not
    # written is reported pending, not lost in silence.
    written = len(read_lines(s.path.parent / "log.jsonl"))
    assert written == 12 or f"file {12 - written}, hangs" in run.stderr, run.stderr
