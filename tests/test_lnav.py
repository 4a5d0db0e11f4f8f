"""The shipped lnav format, with the real lnav (apt-get) over a log the real logger wrote."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from async_session_logger import SessionLogger, read_entries

FORMAT = importlib.resources.files("async_session_logger") / "formats/async_session_logger_v1.json"


def _lnav(home: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run lnav with a throwaway HOME: it never touches the user's configuration."""
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    return subprocess.run(
        ["lnav", *map(str, args)], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def lnav_home(tmp_path: Path) -> Path:
    """A HOME with the format installed by `lnav -i`, which validates it and its samples."""
    home = tmp_path / "home"
    home.mkdir()
    installed = _lnav(home, "-i", str(FORMAT))
    assert installed.returncode == 0, installed.stderr + installed.stdout
    assert (home / ".lnav" / "formats" / "installed" / "async_session_logger_v1.json").exists()
    return home


def _sql(home: Path, log: Path, query: str) -> list[dict[str, str]]:
    """Run one SQL query over the log; return the rows (lnav's JSON output)."""
    done = _lnav(home, "-n", "-c", f";{query}", "-c", ":write-json-to -", log)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, str]] = json.loads(done.stdout)
    return rows


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A log of several sessions: levels, a custom field, a traceback, control characters."""
    path = tmp_path / "app.jsonl"
    with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
        for i in range(4):
            with logger.session(f"job-{i}", metadata={"user_id": f"u{i}"}) as s:
                s.info(f"step {i}", custom_fields={"rows": i * 10})
                s.debug("detail")
                if i == 2:
                    try:
                        raise KeyError("missing")
                    except KeyError:
                        s.exception("failed")
        logger.start_session("odd")
        logger.log_entry("odd", "bell\x07 and \x1b[2J escape", logging.WARNING)
        logger.close_session("odd", "interrupted")
    return path


def test_the_format_is_valid_and_every_entry_is_recognised(lnav_home: Path, log: Path) -> None:
    """lnav installs the format (checking its samples) and reads every line of the log as one
    of its messages: the SQL table has one row per entry, levels mapped."""
    entries = list(read_entries(log))
    (count,) = _sql(lnav_home, log, "SELECT COUNT(*) AS n FROM async_session_logger_v1")
    assert int(count["n"]) == len(entries)
    levels = _sql(
        lnav_home,
        log,
        "SELECT log_level, COUNT(*) AS n FROM async_session_logger_v1 GROUP BY log_level",
    )
    found = {row["log_level"]: int(row["n"]) for row in levels}
    expected: dict[str, int] = {}
    names = {"WARNING": "warning", "ERROR": "error", "DEBUG": "debug"}
    for entry in entries:
        name = names.get(entry["level"], "info")
        expected[name] = expected.get(name, 0) + 1
    assert found == expected


def test_sessions_and_messages_come_out_right(lnav_home: Path, log: Path) -> None:
    """Filtering by session_id gives that session's entries in seq order, with their message,
    event, status and custom fields; timestamps parse (log_time in time order)."""
    rows = _sql(
        lnav_home,
        log,
        "SELECT session_id, seq, event, status, log_body, log_time, "
        "json_extract(custom_fields, '$.rows') AS rows_field "
        "FROM async_session_logger_v1 WHERE session_id = 'job-2' ORDER BY seq",
    )
    written = [e for e in read_entries(log) if e["session_id"] == "job-2"]
    assert [int(r["seq"]) for r in rows] == [e["seq"] for e in written]
    assert [r["log_body"] for r in rows] == [e["message"] for e in written]
    assert [r["event"] for r in rows] == [e["event"] for e in written]
    assert rows[-1]["status"] == "closed"
    assert int(rows[1]["rows_field"]) == 20
    times = [r["log_time"] for r in rows]
    assert times == sorted(times) and times[0].startswith(written[0]["timestamp"][:10])
    (error,) = _sql(
        lnav_home,
        log,
        "SELECT exception FROM async_session_logger_v1 WHERE log_level = 'error' AND event = 'log'",
    )
    assert "KeyError: 'missing'" in error["exception"]
    statuses = _sql(
        lnav_home,
        log,
        "SELECT session_id, status FROM async_session_logger_v1 "
        "WHERE event = 'session_close' ORDER BY session_id",
    )
    assert [(r["session_id"], r["status"]) for r in statuses] == [
        ("job-0", "closed"),
        ("job-1", "closed"),
        ("job-2", "closed"),
        ("job-3", "closed"),
        ("odd", "interrupted"),
    ]
    (hostile,) = _sql(
        lnav_home,
        log,
        "SELECT log_body FROM async_session_logger_v1 WHERE session_id = 'odd' AND event = 'log'",
    )
    assert hostile["log_body"] == "bell\x07 and \x1b[2J escape"


def test_a_broken_format_is_refused_by_lnav(tmp_path: Path) -> None:
    """The install above proves something: lnav refuses a format with a wrong value kind."""
    home = tmp_path / "home"
    home.mkdir()
    broken = tmp_path / "broken.json"
    broken.write_text(FORMAT.read_text().replace('"kind": "integer"', '"kind": "integr"'))
    refused = _lnav(home, "-i", broken)
    assert refused.returncode != 0


def test_lnav_check_reports_no_format_errors(lnav_home: Path) -> None:
    """`lnav -C` with the installed format exits 0 and prints no error."""
    checked = _lnav(lnav_home, "-C")
    assert checked.returncode == 0, checked.stderr
    assert "error" not in (checked.stderr + checked.stdout).lower()
