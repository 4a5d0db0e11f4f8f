"""A filesystem that stops answering (a hung NFS server), made real with FUSE.

The logger runs in a child process: on the code these tests guard against, a call on the hung
mount stopped the event loop itself, and only a process can be given up on.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from async_session_logger import AsyncSessionLogger, SinkError
from async_session_logger.sinks import FileSink

from ..conftest import HungMount, read_lines

LOG_TO_A_HUNG_MOUNT = """
import asyncio, json, sys, threading, time
from async_session_logger import AsyncSessionLogger
from async_session_logger.sinks import FileSink

hung_dir, ok_dir = sys.argv[1], sys.argv[2]

async def main():
    gaps = []

    async def ticker():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    hung = FileSink(f"{hung_dir}/log.jsonl", name="hung", fsync="batch", timeout=0.3, retries=1)
    ok = FileSink(f"{ok_dir}/ok.jsonl", name="ok", fsync="batch", timeout=2)
    alog = AsyncSessionLogger(sinks=[hung, ok], dead_letter_path=f"{ok_dir}/dead.jsonl")
    async with alog:
        for batch in range(8):
            async with alog.session(f"s{batch}") as session:
                await session.info("entry")
            await alog.save_logs(timeout=10)
        report = await alog.save_logs()
    tick.cancel()
    threads = [t.name for t in threading.enumerate() if t.name.startswith("async_session_logger.")]
    print(json.dumps({
        "sinks": {name: stats.as_dict() for name, stats in report.sinks.items()},
        "max_gap": max(gaps),
        "threads": threads,
    }), flush=True)

asyncio.run(main())
"""


def _end(child: subprocess.Popen[str], hung_mount: HungMount) -> str:
    """Let the mount answer, wait for the child (killed past 30 s); return its stderr."""
    hung_mount.release()
    try:
        return child.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        child.kill()
        return child.communicate()[1]


@pytest.mark.parametrize("operation", ["write", "fsync"])
def test_a_hung_mount_stops_neither_the_loop_nor_other_sinks(
    hung_mount: HungMount, tmp_path: Path, operation: str
) -> None:
    """A ``FileSink`` on a FUSE mount whose writes (or fsyncs) stop answering, beside a
    ``FileSink`` on a healthy disk, both with ``fsync="batch"``: the loop keeps running, the
    healthy sink gets every entry, the hung sink's entries are dead-lettered, and the hung
    calls hold one thread each (the sink's, its fsync's), not one per retry.

    Before: ``"auto"`` wrote on the loop, so a hung write (or a write waiting for the
    inode lock of a hung fsync) stopped the whole application; and each retry's fsync took
    one more of the four I/O threads all sinks shared."""
    script = tmp_path / "hung.py"
    script.write_text(LOG_TO_A_HUNG_MOUNT, encoding="utf-8")
    hung_mount.hang(operation)
    child = subprocess.Popen(
        [sys.executable, str(script), str(hung_mount.path), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        # The report, while the mount still hangs. The child cannot end before the mount
        # answers: a thread blocked in a FUSE (or hard NFS) write cannot even be killed.
        ready, _, _ = select.select([child.stdout], [], [], 60)
        report = child.stdout.readline() if ready else ""
    finally:
        err = _end(child, hung_mount)
    assert report, f"no report within 60 s: {err}"
    assert child.returncode == 0, err
    out = json.loads(report)
    ok, hung = out["sinks"]["ok"], out["sinks"]["hung"]
    assert ok["delivered"] == 24 and ok["dead_lettered"] == 0, ok
    assert hung["dead_lettered"] + hung["delivered"] == 24 and hung["lost"] == 0, hung
    assert hung["dead_lettered"] >= 21, hung  # at most its first batch went through
    assert len(read_lines(tmp_path / "ok.jsonl")) == 24
    assert out["max_gap"] < 1.0, out["max_gap"]  # the loop never stopped
    stuck = [name for name in out["threads"] if "hung" in name]
    assert len(stuck) <= 2, out["threads"]


async def test_a_close_waits_for_a_slow_fsync_then_flushes(
    hung_mount: HungMount, tmp_path: Path
) -> None:
    """``fsync=0.2`` on a mount whose fsync is slow: the close stops the interval's flush
    while its fsync still runs, waits for it, then flushes the file before closing it. That
    last fsync used to fail at once, the sink's fsync thread being still busy ("could not
    fsync a file before closing it"; seen in CI with a local disk's fsync)."""
    errors: list[SinkError] = []
    path = hung_mount.path / "log.jsonl"
    alog = AsyncSessionLogger(
        sinks=[FileSink(path, fsync=0.2)], dead_letter_path=None, on_error=errors.append
    )
    hung_mount.hang("fsync")
    await alog.start_session("s")
    await alog.close_session("s")
    await alog.save_logs()  # written; the interval's flush starts at once, and hangs
    await asyncio.sleep(0.3)
    asyncio.get_running_loop().call_later(0.5, hung_mount.release)
    await alog.aclose()
    assert errors == []
    fsyncs = hung_mount.fsyncs()
    assert fsyncs[-1] == ("/log.jsonl", path.stat().st_size), fsyncs
    assert len(fsyncs) == 2, fsyncs  # the interval's, then the close's


GIVE_A_FILE_UP = """
import asyncio, json, os, sys, time
from async_session_logger import AsyncSessionLogger
from async_session_logger.sinks import FileSink

hung_dir, ok_dir = sys.argv[1], sys.argv[2]
a_file = os.path.join(hung_dir, "a.jsonl")

def descriptors():  # this process's descriptors open on session a's file
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == a_file
        except OSError:
            pass
    return count

async def main():
    sink = FileSink(
        f"{hung_dir}/{{session_id}}.jsonl", write_mode="thread", timeout=0.3, retries=1
    )
    alog = AsyncSessionLogger(sinks=[sink], dead_letter_path=f"{ok_dir}/dead.jsonl")
    await alog.start_session("a")
    await alog.save_logs()
    opened = descriptors()
    print("hang now", flush=True)
    sys.stdin.readline()
    await alog.log_entry("a", "stuck")
    report = await alog.save_logs(timeout=10)
    dead = report.sinks["file"].dead_lettered
    print(json.dumps({"opened": opened, "given_up": descriptors(), "dead": dead}), flush=True)
    sys.stdin.readline()  # the mount answers again
    deadline = time.monotonic() + 10
    n = 0
    while descriptors() and time.monotonic() < deadline:
        n += 1
        await alog.start_session(f"b{n}")  # a new file: the sink closes what waits first
        await alog.save_logs()
        await asyncio.sleep(0.05)
    after = descriptors()
    report = await alog.save_logs()
    await alog.aclose()
    delivered = report.sinks["file"].delivered
    print(json.dumps({"after": after, "delivered": delivered, "accepted": report.accepted}))

asyncio.run(main())
"""


def _line(child: subprocess.Popen[str], seconds: float) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], seconds)
    return child.stdout.readline() if ready else ""


def test_a_file_given_up_while_its_thread_is_stuck_is_closed_there_later(
    hung_mount: HungMount, tmp_path: Path
) -> None:
    """Per-session files on a mount whose writes and closes hang, written on the sink's
    thread: session a's write hangs there, the lane times out, and the retry finds the
    thread still busy (an ``OSError``), so the sink gives a's file up. It must neither close
    it on the loop (close(2) waits for the mount: the whole application would stop, as NFS
    does) nor leak it: the file waits for the thread, and is closed there once the thread
    is free, when the sink next opens a file.

    Dropping the file object instead (no list of files to close later) closed it on the loop
    as it was freed: no report came while the mount hung."""
    script = tmp_path / "give_up.py"
    script.write_text(GIVE_A_FILE_UP, encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, str(script), str(hung_mount.path), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    try:
        assert _line(child, 30) == "hang now\n"
        hung_mount.hang("write", "flush")
        child.stdin.write("\n")
        child.stdin.flush()
        given_up = _line(child, 20)  # while the mount hangs
        hung_mount.release()
        child.stdin.write("\n")
        child.stdin.flush()
        final = _line(child, 30)
    finally:
        err = _end(child, hung_mount)
    assert given_up, f"the loop stopped while the mount hung: {err}"
    assert json.loads(given_up) == {"opened": 1, "given_up": 1, "dead": 1}, err
    assert child.returncode == 0, err
    out = json.loads(final)
    assert out["after"] == 0, out  # closed on the thread once it was free
    assert out["delivered"] == out["accepted"] - 1, out  # all but the dead-lettered entry
    assert len(read_lines(tmp_path / "dead.jsonl")) == 1
