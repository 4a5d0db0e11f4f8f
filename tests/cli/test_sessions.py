"""`sessions`: a table of the sessions in real log files, filters, JSON, and bad input."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from async_session_logger import SessionLogger

from .helpers import ERROR, INFO, WARNING, run_cli, wait_until, write_sessions


def _crash_with_open_session(path: Path, session_id: str) -> None:
    """Log a session in a child that dies before closing it (os._exit skips the drain)."""
    code = (
        "import os, sys\n"
        "from async_session_logger import SessionLogger\n"
        "logger = SessionLogger(method='file', path=sys.argv[1], dead_letter_path=None)\n"
        "logger.start_session(sys.argv[2], metadata={'kind': 'crash'})\n"
        "logger.log_entry(sys.argv[2], 'about to die', 'ERROR')\n"
        "logger.save_logs()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), session_id], check=True, timeout=30)


def _log(tmp_path: Path) -> Path:
    log = tmp_path / "log.jsonl"
    write_sessions(
        log,
        [
            ("job-1", {"user": "ada", "attempt": 3}, [("a", INFO, None), ("b", ERROR, {"x": 1})]),
            ("job-2", {"user": "bob", "device": {"fw": "1.4"}}, [("c", WARNING, None)]),
        ],
    )
    write_sessions(log, [("job-3", {"user": "ada"}, [])], status="error")
    _crash_with_open_session(log, "job-4")
    return log


def test_table_lists_every_session_with_its_counts(tmp_path: Path) -> None:
    """One row per session: id, start, duration, entries, errors, status, levels; exit 0."""
    log = _log(tmp_path)
    done = run_cli("sessions", log)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == [
        *("SESSION", "STARTED", "(UTC)", "DURATION", "ENTRIES", "ERRORS", "STATUS", "LEVELS")
    ]
    by_id = {row[0]: row for row in rows[1:]}
    assert list(by_id) == ["job-1", "job-2", "job-3", "job-4"]
    assert by_id["job-1"][-5:] == ["2", "1", "closed", "E1", "I1"]
    assert by_id["job-2"][-4:] == ["1", "0", "closed", "W1"]
    assert by_id["job-3"][-4:] == ["0", "0", "error", "-"]
    # No close entry: the levels are counted from the entries read.
    assert by_id["job-4"][-5:] == ["-", "1", "1", "open", "E1"]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert by_id["job-1"][1] == today


def test_filters_by_status_metadata_and_time(tmp_path: Path) -> None:
    """--status, --meta (strings, numbers, dotted keys) and --since/--until select rows."""
    log = _log(tmp_path)

    def ids(*options: str) -> list[str]:
        done = run_cli("sessions", log, *options)
        assert done.returncode == 0, done.stderr
        return [line.split()[0] for line in done.stdout.splitlines()[1:]]

    assert ids("--status", "error", "--status", "open") == ["job-3", "job-4"]
    assert ids("--meta", "user=ada") == ["job-1", "job-3"]
    assert ids("--meta", "user=ada", "--meta", "attempt=3") == ["job-1"]
    assert ids("--meta", "device.fw=1.4") == ["job-2"]
    assert ids("--meta", "kind=crash", "--status", "open") == ["job-4"]
    assert ids("--since", "1h") == ["job-1", "job-2", "job-3", "job-4"]
    assert ids("--until", "1h") == []
    time.sleep(0.01)
    boundary = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    write_sessions(log, [("job-5", {}, [])])
    assert ids("--since", boundary) == ["job-5"]
    assert ids("--until", boundary.replace("+00:00", "Z"), "--status", "closed") == [
        "job-1",
        "job-2",
    ]


def test_json_output_and_sessions_spanning_rotated_gzip_files(tmp_path: Path) -> None:
    """--json is a JSON array; a session split over a .gz rotation and a live file is one."""
    rotated = tmp_path / "log.jsonl.1"
    write_sessions(rotated, [("long", {"k": "v"}, [("old", INFO, None)])], leave_open=["long"])
    with open(rotated, "rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
        # The close entry is moved to the live file: the session spans both.
        lines = src.read().splitlines(keepends=True)
        dst.write(b"".join(lines[:-1]))
    live = tmp_path / "log.jsonl"
    live.write_bytes(lines[-1])
    rotated.unlink()
    done = run_cli("sessions", "--json", live, f"{rotated}.gz")
    assert done.returncode == 0, done.stderr
    (only,) = json.loads(done.stdout)
    assert only["session_id"] == "long"
    assert only["status"] == "interrupted"
    assert only["entries"] == 1 and only["errors"] == 0 and only["missing"] == 0
    assert only["metadata"] == {"k": "v"}
    assert only["started_at"].endswith("Z") and only["duration_s"] >= 0


def test_missing_directory_and_unreadable_files_fail_in_one_line(tmp_path: Path) -> None:
    """Missing file, directory: one error line, exit 1, nothing on stdout."""
    log = _log(tmp_path)
    for bad, reason in ((tmp_path / "nope.jsonl", "no such file"), (tmp_path, "is a directory")):
        done = run_cli("sessions", log, bad)
        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr == f"async-session-logger: error: {bad}: {reason}" + (
            ", not a log file\n" if reason == "is a directory" else "\n"
        )


def test_permission_denied_is_one_line(tmp_path: Path) -> None:
    """A file the user may not read (checked as uid 65534): one line, exit 1."""
    shared = Path(tempfile.mkdtemp(prefix="asl-cli-"))
    try:
        shared.chmod(0o755)
        log = shared / "secret.jsonl"
        write_sessions(log, [("s", {}, [])])
        log.chmod(0o600)
        # The interpreter lives under /root: start as root, then drop to nobody before main().
        code = (
            "import os, sys\n"
            "from async_session_logger.cli import main\n"
            "os.setegid(65534)\n"
            "os.seteuid(65534)\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, "sessions", str(log)],
            capture_output=True,
            text=True,
            cwd=shared,
            timeout=30,
            check=False,
        )
        assert done.returncode == 1
        assert done.stderr == f"async-session-logger: error: {log}: permission denied\n"
    finally:
        shutil.rmtree(shared)


def test_corrupt_lines_warn_with_file_and_line_and_the_rest_is_read(tmp_path: Path) -> None:
    """A corrupt line mid-file: a warning naming file:line, the sessions still listed, exit 0."""
    log = _log(tmp_path)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([*lines[:2], b"{not json\n", b'{"seq": 1}\n', *lines[2:]]))
    done = run_cli("sessions", log)
    assert done.returncode == 0
    first, second = done.stderr.splitlines()
    assert first.startswith(f"async-session-logger: warning: {log}:3: not valid JSON (")
    assert second == f"async-session-logger: warning: {log}:4: entry lacks session_id, event"
    assert len(done.stdout.splitlines()) == 5


def test_a_json_file_that_is_no_log_is_one_error_and_the_others_still_listed(
    tmp_path: Path,
) -> None:
    """package.json among logs: one error line for it (not one per line), exit 1."""
    log = _log(tmp_path)
    other = tmp_path / "package.json"
    other.write_text(json.dumps({"name": "x", "deps": list(range(50))}, indent=2))
    done = run_cli("sessions", other, log)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"async-session-logger: error: {other}: not a session log")
    assert "line 1:" in line
    assert len(done.stdout.splitlines()) == 5
    single = tmp_path / "one.json"
    single.write_text('{"name": "x"}\n')
    done = run_cli("sessions", single)
    assert done.returncode == 1 and done.stdout == ""
    assert "entry lacks session_id, seq, event" in done.stderr


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    """Unreadable --since and malformed --meta: exit 2 with one line."""
    log = _log(tmp_path)
    done = run_cli("sessions", log, "--since", "yesterday-ish")
    assert done.returncode == 2
    assert done.stderr.startswith("async-session-logger: error: --since: cannot read")
    assert len(done.stderr.splitlines()) == 1
    done = run_cli("sessions", log, "--meta", "novalue")
    assert done.returncode == 2 and "KEY=VALUE" in done.stderr
    done = run_cli("sessions")
    assert done.returncode == 2 and "PATH" in done.stderr
    assert os.path.exists(log)


# -- issue 12: level counts, discarded entries, summaries, timeout and evicted ----------------
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
EVIL = "\x1b[2J\x07\r\x9b31m\u202eevil\u2028"


def _line(sid: str, seq: int, event: str, **fields: Any) -> bytes:
    entry = {
        "timestamp": f"2026-11-24T06:23:{seq:02d}.000000Z",
        "session_id": sid,
        "seq": seq,
        "event": event,
        "level": "INFO",
        "levelno": 20,
        "message": "m",
        **fields,
    }
    return json.dumps(entry, ensure_ascii=False).encode() + b"\n"


def test_level_counts_discarded_summary_keys_and_the_new_statuses(tmp_path: Path) -> None:
    """A real buffer_level/annotate/max_open_sessions log: new columns, --status, --json keys."""
    log = tmp_path / "log.jsonl"
    with SessionLogger(
        method="file", path=log, dead_letter_path=None, buffer_level="DEBUG", max_open_sessions=2
    ) as logger:
        logger.start_session("batch")
        logger.log_entry("batch", "detail 1", "DEBUG")
        logger.log_entry("batch", "detail 2", "DEBUG")
        logger.log_entry("batch", "done", "INFO")
        logger.annotate("batch", rows=120, outcome="ok", password="hunter2")
        logger.close_session("batch")  # clean: the two held entries are discarded
        logger.start_session("stale")
        logger.start_session("a")
        logger.start_session("b")  # three open: "stale" is evicted
        logger.close_session("a")
        logger.close_session("b")
    with SessionLogger(method="file", path=log, dead_letter_path=None, idle_timeout=0.1) as idle:
        idle.start_session("idle")
        wait_until(lambda: b'"timeout"' in log.read_bytes(), 20, "the idle session's close")

    done = run_cli("sessions", log)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[-4:] == ["STATUS", "LEVELS", "DISCARDED", "SUMMARY"]
    by_id = {row.split()[0]: row.split() for row in rows}
    assert by_id["batch"][-8:-5] == ["1", "0", "closed"]
    (batch_row,) = [row for row in rows if row.startswith("batch ")]
    assert batch_row.endswith("closed   I1              2  rows, outcome, password")
    assert by_id["stale"][-4:] == ["evicted", "-", "0", "-"]
    assert by_id["idle"][-4:] == ["timeout", "-", "0", "-"]

    def ids(*options: str) -> list[str]:
        listed = run_cli("sessions", log, *options)
        assert listed.returncode == 0, listed.stderr
        return [line.split()[0] for line in listed.stdout.splitlines()[1:]]

    assert ids("--status", "evicted") == ["stale"]
    assert ids("--status", "timeout", "--status", "evicted") == ["stale", "idle"]

    listed = json.loads(run_cli("sessions", log, "--json").stdout)
    batch = next(s for s in listed if s["session_id"] == "batch")
    assert batch["levels"] == {"INFO": 1} and batch["discarded"] == 2
    assert batch["summary"]["rows"] == 120 and batch["summary"]["password"] != "hunter2"
    assert list(batch["summary"]) == ["rows", "outcome", "password"]
    stale = next(s for s in listed if s["session_id"] == "stale")
    assert stale["status"] == "evicted"
    assert not {"levels", "summary", "discarded", "parent_session_id"} & stale.keys()


def test_logs_without_the_new_fields_list_exactly_as_before(tmp_path: Path) -> None:
    """Close entries without levels (older logs): the old columns and the old JSON keys only."""
    log = tmp_path / "old.jsonl"
    log.write_bytes(
        _line("s", 0, "session_start", metadata={})
        + _line("s", 1, "log")
        + _line("s", 2, "session_close", status="closed", duration_s=1.0, entries=1)
    )
    done = run_cli("sessions", log)
    assert done.stdout.splitlines()[0].split() == [
        *("SESSION", "STARTED", "(UTC)", "DURATION", "ENTRIES", "ERRORS", "STATUS")
    ]
    (only,) = json.loads(run_cli("sessions", log, "--json").stdout)
    assert list(only) == [
        *("session_id", "status", "started_at", "closed_at", "duration_s", "entries"),
        *("errors", "metadata", "missing", "duplicates"),
    ]


def test_hostile_issue_12_fields_never_crash_nor_reach_the_terminal_raw(tmp_path: Path) -> None:
    """Control characters, 100,000 summary keys, wrong types: one escaped row each, exit 0."""
    huge = {f"key{n}": n for n in range(100_000)}
    log = tmp_path / "log.jsonl"
    log.write_bytes(
        _line("evil", 0, "session_start", parent_session_id=f"p{EVIL}")
        + _line(
            "evil",
            1,
            "session_close",
            status="closed",
            levels={f"LVL{EVIL}": 2, "ERROR": "x", "INFO": True, "WARNING": 1},
            summary={f"k{EVIL}": f"v{EVIL}"},
            discarded=3,
        )
        + _line("huge", 0, "session_start", parent_session_id=17)
        + _line("huge", 1, "session_close", summary=huge, levels=[1, 2], discarded="7")
        + _line("typed", 0, "session_start", parent_session_id={"id": "x"})
        + _line("typed", 1, "session_close", summary="text", levels={"INFO": 1.5}, discarded=True)
    )
    done = run_cli("sessions", log)
    assert done.returncode == 0, done.stderr
    assert not UNSAFE.search(done.stdout + done.stderr)
    header, evil, huge_row, typed = done.stdout.splitlines()
    assert header.split()[-4:] == ["LEVELS", "DISCARDED", "PARENT", "SUMMARY"]
    shown = "\\x1b[2J\\x07\\r\\x9b31m\\u202eevil\\u2028"
    # A level name of its own is cut at 16 characters, then escaped.
    assert "  W1 LVL\\x1b[2J\\x07\\r\\x9b31m\\u202ee…:2  " in evil
    assert evil.endswith(f"3  p{shown}  k{shown}")
    assert huge_row.endswith("key0, key1, key2, key3, key4, key5, key6 +99993")
    assert typed.split()[-4:] == ["-", "0", "-", "-"]
    listed = run_cli("sessions", log, "--json")
    assert not UNSAFE.search(listed.stdout)
    first, second, third = json.loads(listed.stdout)
    assert first["summary"] == {f"k{EVIL}": f"v{EVIL}"} and first["parent_session_id"] == f"p{EVIL}"
    assert first["levels"] == {f"LVL{EVIL}": 2, "WARNING": 1}
    assert len(second["summary"]) == 100_000 and "levels" not in second
    assert not {"levels", "summary", "discarded", "parent_session_id"} & third.keys()
