"""`show` and `sessions` stream the files: peak memory follows what is shown, not the file size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import CLI, cli_env

# 1,000 sessions of 150 log entries, interleaved eight at a time, ~450 bytes a line: ~70 MB.
SESSIONS = 1_000
ENTRIES = 150
INTERLEAVE = 8
# Peak RSS allowed to a command reading that file, in MiB. The interpreter and the package take
# ~25 MiB; holding every entry as a dict took ~10 times the file size.
RSS_LIMIT_MIB = 60

# Runs a command in a child and prints the child's peak RSS in KiB (Linux ru_maxrss): the
# wrapper's own children are that command and nothing else.
_MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
sys.stderr.buffer.write(done.stderr)
sys.stdout.buffer.write(done.stdout)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode, file=sys.stderr)
"""

_START = (
    '{{"timestamp":"2026-11-24T{h:02d}:{m:02d}:{s:02d}.000000Z","session_id":"job-{n}",'
    '"seq":0,"event":"session_start","level":"INFO","levelno":20,'
    '"message":"Session started","metadata":{{"host":"build-{k}","user_id":"u{n}"}}}}\n'
)
_LOG = (
    '{{"timestamp":"2026-11-24T{h:02d}:{m:02d}:{s:02d}.{seq:06d}Z","session_id":"job-{n}",'
    '"seq":{seq},"event":"log","level":"{level}","levelno":{levelno},'
    '"message":"step {seq} of job {n}: {pad}","custom_fields":{{"attempt":{seq},'
    '"mirror":"eu-{k}","path":"/srv/build/{n}/artifact-{seq}.tar.zst"}}}}\n'
)
_CLOSE = (
    '{{"timestamp":"2026-11-24T{h:02d}:{m:02d}:{s:02d}.999999Z","session_id":"job-{n}",'
    '"seq":{seq},"event":"session_close","level":"INFO","levelno":20,'
    '"message":"Session closed","duration_s":1.5,"entries":{entries},"status":"closed"}}\n'
)
_PAD = "x" * 240


def _write_big_log(path: Path) -> None:
    """Write the log with plain Python (not the logger): seconds, not minutes."""
    with open(path, "w", encoding="utf-8") as fh:
        for first in range(0, SESSIONS, INTERLEAVE):
            group = range(first, min(first + INTERLEAVE, SESSIONS))
            clock = {n: divmod(n % 86_400, 3600) for n in group}
            stamp = {n: (h, *divmod(rest, 60)) for n, (h, rest) in clock.items()}
            chunk = [_START.format(h=h, m=m, s=s, n=n, k=n % 7) for n, (h, m, s) in stamp.items()]
            for seq in range(1, ENTRIES + 1):
                error = seq % 50 == 0
                for n in group:
                    h, m, s = stamp[n]
                    chunk.append(
                        _LOG.format(
                            h=h,
                            m=m,
                            s=s,
                            n=n,
                            k=n % 7,
                            seq=seq,
                            pad=_PAD,
                            level="ERROR" if error else "INFO",
                            levelno=40 if error else 20,
                        )
                    )
            for n, (h, m, s) in stamp.items():
                chunk.append(_CLOSE.format(h=h, m=m, s=s, n=n, seq=ENTRIES + 1, entries=ENTRIES))
            fh.write("".join(chunk))


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a ~70 MB log of 1,000 closed sessions."""
    path = tmp_path_factory.mktemp("big") / "log_2026-11-24.jsonl"
    _write_big_log(path)
    return path


def _peak(*args: str | os.PathLike[str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run one CLI command; return it and its peak RSS in MiB."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    *stderr, last = done.stderr.splitlines()
    kib, code = (int(word) for word in last.split())
    done.stderr = "\n".join(stderr)
    done.returncode = code
    assert "Traceback" not in done.stderr, done.stderr
    return done, kib // 1024


def test_the_generated_log_is_large_enough_to_tell(big_log: Path) -> None:
    """The file is several times the RSS limit: a whole-file reader cannot pass unnoticed."""
    assert big_log.stat().st_size > 64 * 2**20 > RSS_LIMIT_MIB * 2**20


def test_show_keeps_only_the_asked_for_session(big_log: Path) -> None:
    """show ID on a ~70 MB log: the whole session printed, peak RSS under 60 MiB."""
    done, mib = _peak("show", "job-500", big_log, "--color", "never")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("session job-500 · closed · started 2026-11-24 00:08:20 UTC")
    assert f"{ENTRIES} entries · 3 errors" in lines[0]
    heads = [line for line in lines if line.startswith("2026-")]
    assert [h.split()[1] for h in heads] == [f"#{seq}" for seq in range(ENTRIES + 2)]
    assert mib < RSS_LIMIT_MIB, f"show held {mib} MiB for a {big_log.stat().st_size >> 20} MB file"


def test_show_of_an_unknown_id_still_suggests_within_the_bound(big_log: Path) -> None:
    """A mistyped id scans the whole file and suggests close ids, still in bounded memory."""
    done, mib = _peak("show", "job-5000", big_log)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"async-session-logger: error: no session 'job-5000' in {big_log}"
    )
    assert "did you mean 'job-500'" in done.stderr
    assert mib < RSS_LIMIT_MIB


def test_sessions_keeps_one_summary_per_session(big_log: Path) -> None:
    """sessions on a ~70 MB log: every session listed with its counts, peak RSS under 60 MiB."""
    done, mib = _peak("sessions", big_log)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == [
        "SESSION",
        "STARTED",
        "(UTC)",
        "DURATION",
        "ENTRIES",
        "ERRORS",
        "STATUS",
    ]
    assert len(rows) == SESSIONS
    assert {tuple(row.split()[-4:]) for row in rows} == {("1.500s", str(ENTRIES), "3", "closed")}
    assert mib < RSS_LIMIT_MIB, f"sessions held {mib} MiB"
    listed, mib = _peak("sessions", big_log, "--json", "--meta", "host=build-3")
    assert listed.returncode == 0, listed.stderr
    chosen = json.loads(listed.stdout)
    assert len(chosen) == len([n for n in range(SESSIONS) if n % 7 == 3])
    assert chosen[0] == {
        "session_id": "job-3",
        "status": "closed",
        "started_at": "2026-11-24T00:00:03Z",
        "closed_at": "2026-11-24T00:00:03.999999Z",
        "duration_s": 1.5,
        "entries": ENTRIES,
        "errors": 3,
        "metadata": {"host": "build-3", "user_id": "u3"},
        "missing": 0,
        "duplicates": 0,
    }
    assert mib < RSS_LIMIT_MIB
