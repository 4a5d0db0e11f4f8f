"""`sessions`: a table of the sessions in real log files, filters, JSON, and bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from .helpers import ERROR, INFO, WARNING, run_cli, write_sessions


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
