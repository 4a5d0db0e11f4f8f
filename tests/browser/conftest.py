"""The session browser under test: the real `serve` command in a subprocess, real log files."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from async_session_logger import SessionLogger

HOSTILE = "<img src=x onerror=window.__xss=1>"


@dataclass
class Served:
    """A running `serve` process and where it listens."""

    url: str
    proc: subprocess.Popen[bytes]
    err: Path

    def stop(self) -> int:
        """SIGTERM it and return its exit status (a hang guard of 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


def start_serve(*args: str | os.PathLike[str], workdir: Path) -> Served:
    """Start `async-session-logger serve ARGS --port 0` and wait for its URL."""
    out, err = workdir / "serve.out", workdir / "serve.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "async_session_logger", "serve", *map(str, args), "--port", "0"],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while b"serving http://" not in out.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not start: {err.read_text()}")
        time.sleep(0.05)
    url = out.read_text().split("serving ", 1)[1].split()[0]
    return Served(url, proc, err)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `serve` processes; each is stopped with SIGTERM and must exit 0."""
    started: list[Served] = []

    def start(*args: str | os.PathLike[str]) -> Served:
        served = start_serve(*args, workdir=tmp_path)
        started.append(served)
        return served

    yield start
    for served in started:
        status = served.stop()
        assert status == 0, served.err.read_text()


def write_story(path: Path, *, sessions: int = 6) -> list[str]:
    """Log a varied set of sessions with the real logger; return their ids in start order."""
    ids = []
    with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
        for i in range(sessions):
            sid = f"req-{i}"
            ids.append(sid)
            logger.start_session(sid, metadata={"user_id": f"u{i % 3}", "path": f"/items/{i}"})
            logger.log_entry(sid, f"handling item {i}", logging.INFO, {"item": i})
            if i % 3 == 2:
                try:
                    raise ValueError(f"bad item {i}")
                except ValueError:
                    logger.log_entry(sid, "it failed", logging.ERROR, exc_info=True)
                logger.close_session(sid, "error")
            else:
                logger.log_entry(sid, f"done {i}", logging.DEBUG)
                logger.close_session(sid)
        logger.start_session("parent-1", metadata={"kind": "job"})
        logger.start_session("child-1", metadata={"kind": "step"}, parent_id="parent-1")
        logger.log_entry("child-1", "step work", logging.WARNING)
        logger.close_session("child-1")
        logger.log_entry("parent-1", HOSTILE, logging.WARNING)
        logger.log_entry("parent-1", "line one\x1b[31m\rfake line", logging.INFO)
        logger.close_session("parent-1")
        ids += ["parent-1", "child-1"]
    return ids
