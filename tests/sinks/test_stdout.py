"""StdoutSink: one JSON line per entry on the real standard output of a process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
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
