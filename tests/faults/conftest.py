"""Fault-injection helpers: real small disks, the accounting check, subprocess scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import DeliveryReport, SinkStats, read_dead_letters

from ..conftest import MountFactory

__all__ = ["MountFactory"]  # re-exported for the fault tests; the tmpfs fixture is in ../conftest


def chattr(flag: str, path: Path) -> None:
    """Set or clear an inode flag (``+i`` makes a file or directory immutable, even for root)."""
    subprocess.run(["chattr", flag, str(path)], check=True)


def assert_accounted(stats: SinkStats | dict[str, Any], accepted: int) -> None:
    """Every entry given to a sink is delivered, dead-lettered, lost (counted) or filtered."""
    s = stats if isinstance(stats, dict) else stats.as_dict()
    assert s["pending"] == 0, s
    total = s["delivered"] + s["dead_lettered"] + s["lost"] + s["filtered"]
    assert total == accepted, f"{s['name']}: {total} accounted for {accepted} accepted: {s}"


def dead_letters_by_sink(path: Path) -> Counter[str]:
    """Count the dead letters of each sink in a dead-letter file (none if it does not exist)."""
    if not path.exists():
        return Counter()
    return Counter(d["sink"] for d in read_dead_letters(path))


def assert_report_accounted(report: DeliveryReport, dead_path: Path | None = None) -> None:
    """Check every sink of a final report, and that the dead-letter file matches the counts.

    For the default overflow policy ("block"): nothing is dropped, so every sink is given
    every accepted entry.
    """
    assert report.dropped == 0
    for stats in report.sinks.values():
        assert_accounted(stats, report.accepted)
    if dead_path is not None:
        in_file = dead_letters_by_sink(dead_path)
        counted = {n: s.dead_lettered for n, s in report.sinks.items() if s.dead_lettered}
        assert dict(in_file) == counted


def parse_file(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Return the entries of a JSON Lines file and how many lines did not parse."""
    entries: list[dict[str, Any]] = []
    bad = 0
    for raw in path.read_bytes().splitlines():
        try:
            entries.append(json.loads(raw))
        except ValueError:
            bad += 1
    return entries, bad


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll ``condition`` until it holds; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(0.005)
    return time.monotonic() - start


@dataclass
class Script:
    """A Python script run in a child process, with its output."""

    path: Path

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        """Start the script; stdout and stderr are pipes (text)."""
        return subprocess.Popen(
            [sys.executable, str(self.path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd or self.path.parent,
        )

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the script to its end."""
        return subprocess.run(
            [sys.executable, str(self.path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.path.parent,
        )


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str], Script]:
    """Write a dedented script into the test's directory."""

    def write(code: str, name: str = "script.py") -> Script:
        path = tmp_path / name
        path.write_text(textwrap.dedent(code), encoding="utf-8")
        return Script(path)

    return write
