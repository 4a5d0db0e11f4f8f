"""`tail`: follow a file while another process writes it and rotates it."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from .helpers import INFO, run_cli, start_cli, wait_until, write_sessions

# Writes sessions w1..w3 while rotating twice by renaming the file and starting a new one. At the
# first rotation a second writer that does not notice renames (a logger whose handler appends to
# a descriptor opened before the rename) keeps appending session "late" to the renamed file after
# the new file exists: `tail` must still print those entries.
WRITER = r"""
import os, sys, time
from async_session_logger import SessionLogger

path = sys.argv[1]

def logger():
    return SessionLogger(method="file", path=path, dead_letter_path=None)

def burst(log, sid, prefix, n):
    for i in range(n):
        log.log_entry(sid, f"{prefix}{i}", "INFO", {"i": i})
        if i % 5 == 4:
            log.save_logs()
            time.sleep(0.02)
    log.save_logs()

one = logger()
one.start_session("w1")
burst(one, "w1", "a", 20)
one.close_session("w1")
one.close()
held = open(path, "ab", buffering=0)
os.rename(path, path + ".1")
two = logger()                      # the new file exists from here on
two.start_session("w2")
two.save_logs()
time.sleep(0.3)                     # tail has switched to the new file by now
late = SessionLogger(
    method="custom", custom_handler=lambda m: held.write(m.encode() + b"\n"), dead_letter_path=None
)
late.start_session("late")
burst(late, "late", "b", 10)
late.close_session("late")
late.close()
held.close()
burst(two, "w2", "c", 20)
two.close_session("w2")
two.close()
os.rename(path, path + ".2")
three = logger()
three.start_session("w3")
burst(three, "w3", "d", 15)
three.close_session("w3")
three.close()
"""


def test_follows_a_file_written_and_rotated_by_another_process(tmp_path: Path) -> None:
    """Every entry of every rotated file is printed once, in order, byte for byte (--json)."""
    log = tmp_path / "app.jsonl"
    write_sessions(log, [("w0", {"host": "a"}, [("before", INFO, None)])])
    out, err = tmp_path / "tail.out", tmp_path / "tail.err"
    tail = start_cli("tail", log, "--json", "-n", "100", "--interval", "0.05", out=out, err=err)
    try:
        wait_until(lambda: out.read_bytes().count(b"\n") >= 3, 15, "the history of w0")
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(log)], capture_output=True, timeout=60
        )
        assert writer.returncode == 0, writer.stderr.decode()
        files = [Path(f"{log}.1"), Path(f"{log}.2"), log]
        expected = [line for f in files for line in f.read_bytes().splitlines()]
        assert len(expected) == 3 + 22 + 12 + 22 + 17
        wait_until(
            lambda: out.read_bytes().count(b"\n") >= len(expected), 20, "every entry printed"
        )
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=10) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    printed = out.read_bytes().splitlines()
    assert err.read_text() == ""
    assert Counter(printed) == Counter(expected)  # each exactly once, bytes unchanged
    entries = [json.loads(line) for line in printed]
    for sid in ("w0", "w1", "late", "w2", "w3"):
        seqs = [e["seq"] for e in entries if e["session_id"] == sid]
        assert seqs == sorted(seqs) and seqs == list(range(len(seqs))), sid


def test_human_output_session_filter_bad_lines_and_truncation(tmp_path: Path) -> None:
    """--session filters; a corrupt line warns with file:line; truncation restarts; SIGTERM=0."""
    log = tmp_path / "app.jsonl"
    write_sessions(
        log,
        [
            ("keep", {"user": "ada"}, [("old one", INFO, None), ("old two", INFO, {"k": 1})]),
            ("skip", {}, [("noise", INFO, None)]),
        ],
    )
    out, err = tmp_path / "tail.out", tmp_path / "tail.err"
    tail = start_cli(
        "tail", log, "--session", "keep", "-n", "2", "--interval", "0.05", out=out, err=err
    )
    try:
        wait_until(lambda: b"Session closed" in out.read_bytes(), 15, "the history")
        history = out.read_text().splitlines()
        assert "old two" in history[0] and history[1] == "    k: 1"
        assert "keep" in history[2] and "Session closed" in history[2]
        with open(log, "ab") as fh:
            fh.write(b'{"broken":\n')
        lineno = len(log.read_bytes().splitlines())
        write_sessions(log, [("skip", {}, [("more noise", INFO, None)])])
        write_sessions(log, [("keep", {"round": 2}, [("fresh", INFO, {"n": 2})])])
        wait_until(lambda: b"fresh" in out.read_bytes(), 15, "the new entry")
        log.write_bytes(b"")  # truncated in place (copytruncate)
        write_sessions(log, [("keep", {"round": 3}, [("after truncation", INFO, None)])])
        wait_until(
            lambda: b"after truncation" in out.read_bytes(), 15, "the entry after truncation"
        )
        tail.send_signal(signal.SIGTERM)
        assert tail.wait(timeout=10) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    text = out.read_text()
    assert "noise" not in text and "skip" not in text
    assert "    metadata.round: 2" in text and "    n: 2" in text
    warnings = err.read_text().splitlines()
    assert warnings[0].startswith(f"async-session-logger: warning: {log}:{lineno}: not valid JSON")
    assert (
        warnings[1]
        == f"async-session-logger: warning: {log}: truncated; reading it again from the start"
    )
    assert len(warnings) == 2


def test_bad_paths_fail_in_one_line(tmp_path: Path) -> None:
    """Missing file, a JSON file that is no log, a compressed file: exit 1, one line."""
    missing = tmp_path / "missing.jsonl"
    done = run_cli("tail", missing)
    assert (done.returncode, done.stderr) == (
        1,
        f"async-session-logger: error: {missing}: no such file\n",
    )
    other = tmp_path / "data.json"
    other.write_text('{"a": 1}\n{"b": 2}\n')
    done = run_cli("tail", other)
    assert done.returncode == 1
    assert done.stderr.startswith(f"async-session-logger: error: {other}: not a session log")
    assert len(done.stderr.splitlines()) == 1
    packed = tmp_path / "old.jsonl.gz"
    with gzip.open(packed, "wb") as fh:
        fh.write(b"")
    done = run_cli("tail", packed)
    assert done.returncode == 1 and "compressed" in done.stderr


def test_history_of_a_file_larger_than_a_read_chunk(tmp_path: Path) -> None:
    """-n 3 on a ~3 MiB file read in 1 MiB chunks: exactly its last three lines, unchanged."""
    log = tmp_path / "big.jsonl"
    write_sessions(
        log, [("big", {}, [(f"m{i} " + "x" * 200, INFO, {"i": i}) for i in range(12_000)])]
    )
    assert log.stat().st_size > 3 * (1 << 20)
    out, err = tmp_path / "tail.out", tmp_path / "tail.err"
    tail = start_cli("tail", log, "--json", "-n", "3", out=out, err=err)
    try:
        wait_until(lambda: out.read_bytes().count(b"\n") >= 3, 15, "the history")
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=10) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert out.read_bytes().splitlines() == log.read_bytes().splitlines()[-3:]
    assert err.read_bytes() == b""
