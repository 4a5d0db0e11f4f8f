"""Run the command line as a real subprocess, on logs written by the real logger."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from async_session_logger import SessionLogger

CLI = [sys.executable, "-m", "async_session_logger"]


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    **options: Any,
) -> subprocess.CompletedProcess[str]:
    """Run one command to completion; a user error must never show a traceback."""
    done = subprocess.run(  # cwd None: the tests pass absolute paths, the checkout stays clean
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(env),
        timeout=timeout,
        check=False,
        **options,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a CLI child: no colour forcing, unbuffered."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_cli(
    *args: str | os.PathLike[str], out: Path, err: Path, cwd: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """Start a long-running command with stdout and stderr going to files."""
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        return subprocess.Popen(
            [*CLI, *map(str, args)],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=cli_env(env),
        )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds, or fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def write_sessions(
    path: Path,
    sessions: Sequence[
        tuple[str, dict[str, Any], Sequence[tuple[str, int, dict[str, Any] | None]]]
    ],
    *,
    status: str = "closed",
    leave_open: Sequence[str] = (),
) -> None:
    """Write sessions with the real logger: (id, metadata, [(message, level, fields)])."""
    with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
        for session_id, metadata, entries in sessions:
            logger.start_session(session_id, metadata=metadata)
            for message, level, fields in entries:
                logger.log_entry(session_id, message, level, fields)
            if session_id not in leave_open:
                logger.close_session(session_id, status=status)
        logger.save_logs()


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON Lines file."""
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
