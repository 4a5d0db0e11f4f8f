"""StdoutSink: one JSON line per entry on the real standard output of a process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

from async_session_logger import SessionLogger
from async_session_logger.sinks import StdoutSink


def test_stdout_lines_from_a_real_process(tmp_path: Path) -> None:
    """method='stdout' prints one JSON line per entry, after the program's own prints."""
    code = (
        "import logging\n"
        "from async_session_logger import SessionLogger\n"
        "print('before', flush=True)\n"
        "logger = SessionLogger(method='stdout')\n"
        "logger.start_session('001')\n"
        "logger.log_entry('001', 'This is a standard output log entry.', logging.INFO)\n"
        "logger.close_session('001')\n"
        "logger.save_logs()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "before"
    entries = [json.loads(line) for line in lines[1:]]
    assert [e["event"] for e in entries] == ["session_start", "log", "session_close"]
    assert entries[1]["message"] == "This is a standard output log entry."
    assert list(tmp_path.iterdir()) == []  # stdout only: no file written


def test_text_stream_without_buffer(tmp_path: Path) -> None:
    """A text stream without .buffer (StringIO) receives the same lines."""
    stream = io.StringIO()
    with SessionLogger(sinks=[StdoutSink(stream)], dead_letter_path=None) as logger:
        logger.start_session("s")
        logger.log_entry("s", "hé")
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[1])["message"] == "hé"


STALLED = """
import json, os, sys, threading, time
from async_session_logger import SessionLogger
from async_session_logger.sinks import FileSink, StdoutSink

sinks = [StdoutSink(timeout=0.5, retries=2), FileSink("{session_id}.jsonl")]
started = time.monotonic()
with SessionLogger(sinks=sinks, dead_letter_path="dead.jsonl", close_timeout=5) as logger:
    for k in range(4):
        logger.start_session(f"s{k}")
        for i in range(3_000):
            logger.log_entry(f"s{k}", "x" * 100, 20, {"i": i})
        logger.close_session(f"s{k}")
        logger.save_logs(timeout=60)
    report = logger.close()
stdout, file = report["stdout"], report["file"]
for _ in range(100):  # the closed logger's threads end; the stuck one cannot
    threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("async_session"))
    if len(threads) <= 1:
        break
    time.sleep(0.02)
print(json.dumps({
    "seconds": time.monotonic() - started,
    "stdout": [stdout.delivered, stdout.dead_lettered, stdout.lost],
    "file": [file.delivered, file.dead_lettered, file.lost],
    "threads": threads,
}), file=sys.stderr, flush=True)
"""


def test_a_stdout_nobody_reads_stops_neither_other_sinks_nor_dead_letters(
    tmp_path: Path,
) -> None:
    """The process's stdout is a pipe nobody reads (a paused ``| less``, a blocking container
    log driver): the stdout write blocks for good. The other sink still gets every entry, the
    stdout entries are dead-lettered, none lost, and it takes seconds, not a timeout per
    batch. Before, each retry left one more of the four shared I/O threads blocked: the file
    sink stopped after its first file, the dead letters were lost, 12,008 entries in all."""
    script = tmp_path / "stalled.py"
    script.write_text(STALLED)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,  # never read: 64 KiB fill it
        stderr=subprocess.PIPE,
        text=True,
    )
    # It may never exit: at shutdown Python flushes stdout, whose lock the stuck thread holds.
    deadline = threading.Timer(120, proc.kill)
    deadline.start()
    try:
        err = _read_stderr(proc)
    finally:
        deadline.cancel()
        proc.kill()
        proc.wait()
    result = json.loads(err.strip().splitlines()[-1])
    stdout_delivered, stdout_dead, stdout_lost = result["stdout"]
    assert result["file"] == [12_008, 0, 0]
    assert stdout_lost == 0 and stdout_delivered + stdout_dead == 12_008
    assert stdout_dead > 11_000  # what the pipe took (64 KiB) is all that went through
    dead = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(dead) == stdout_dead
    for k in range(4):
        assert len((tmp_path / f"s{k}.jsonl").read_text().splitlines()) == 3_002
    assert result["seconds"] < 60
    # The stdout sink's own thread is the one stuck in the pipe; no shared thread is.
    assert result["threads"] == ["async_session_logger.stdout[0]"]


def _read_stderr(proc: subprocess.Popen[str]) -> str:
    """Wait for the script's last stderr line (its stdout is never read, so it never exits)."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("{"):
            return "".join(lines)
    raise AssertionError("the script ended without its result: " + "".join(lines))
