"""Memory stays bounded under overload, under every overflow policy (docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "overload.py"
# The documented bound for the defaults (max_queue=10,000, a sink's max_pending=50,000) and
# entries of this size; measured ~80-90 MB on CPython 3.11 / x86-64.
BOUND_MB = 150


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "block"])
def test_two_million_entries_into_a_1000_per_second_sink(policy: str) -> None:
    """2,000,000 entries offered to a sink accepting 1,000/s: peak RSS under the bound."""
    run = subprocess.run(
        [
            *(sys.executable, str(BENCH), "--child", policy),
            *("--entries", "2000000", "--rate", "1000", "--block-seconds", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["peak_rss_mb"] < BOUND_MB, result
    assert result["queued_at_end"] <= 10_001
    if policy == "block":
        # The caller waited for the sink: nothing dropped, far fewer entries offered.
        assert result["dropped"] == 0
        assert result["offered"] < 200_000
    else:
        # Every entry was offered without waiting; what the sink could not take was dropped,
        # counted, and reported by gap entries (one per session at least).
        assert result["offered"] == 2_000_000
        assert result["dropped"] > 1_800_000
        assert result["gap_entries"] >= 100
