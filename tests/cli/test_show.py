"""`show`: one session, readable, coloured only on a terminal, and its JSON form."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from pathlib import Path

from async_session_logger import SessionLogger

from .helpers import CLI, ERROR, INFO, WARNING, cli_env, run_cli, write_sessions

ESC = "\x1b["


def _log(tmp_path: Path) -> Path:
    log = tmp_path / "app.jsonl"
    write_sessions(
        log,
        [
            (
                "req-42",
                {"path": "/hello", "user": {"id": 7}},
                [
                    ("fetching", INFO, None),
                    ("slow mirror", WARNING, {"mirror": "eu-2", "ms": 950}),
                    ("bad\nthing \x1b[2J happened", ERROR, {"trace": "line1\nline2"}),
                    ("chatter", 10, None),
                ],
            ),
            ("req-43", {}, [("other", INFO, None)]),
        ],
    )
    return log


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout on a pseudo-terminal and return what it printed there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdout=slave, stderr=subprocess.PIPE, env=cli_env(env))
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None and proc.stderr.read() == b""
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_plain_output_has_metadata_on_top_and_indented_fields(tmp_path: Path) -> None:
    """Piped: no escape codes; header, metadata, entries in seq order, fields indented."""
    log = _log(tmp_path)
    done = run_cli("show", "req-42", log)
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("session req-42 · closed · started ")
    assert lines[0].endswith("4 entries · 1 error · E1 W1 I1 D1")
    assert lines[1:4] == ["metadata:", "  path: /hello", '  user: {"id":7}']
    body = lines[4:]
    assert [line.split()[1] for line in body if not line.startswith(" ")] == [
        "#0",
        "#1",
        "#2",
        "#3",
        "#4",
        "#5",
    ]
    assert body[0].endswith("INFO     Session started")
    warning = body.index(next(line for line in body if "slow mirror" in line))
    assert body[warning + 1 : warning + 3] == ["    mirror: eu-2", "    ms: 950"]
    error = body.index(next(line for line in body if "ERROR    bad" in line))
    # The terminal control sequence is shown escaped; continuation lines are indented.
    assert body[error + 1] == "    thing \\x1b[2J happened"
    assert body[error + 2 : error + 4] == ["    trace: line1", "      line2"]
    assert body[-1].endswith("Session closed (closed, " + body[-1].split("(closed, ")[1])
    assert "4 entries, E1 W1 I1 D1)" in body[-1]


def test_colour_by_level_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    """On a tty warnings are yellow and errors red; NO_COLOR turns colour off."""
    log = _log(tmp_path)
    coloured = _on_a_terminal(["show", "req-42", str(log)], {})
    warning = next(line for line in coloured.splitlines() if "slow mirror" in line)
    error = next(line for line in coloured.splitlines() if "ERROR" in line)
    assert warning.startswith("\x1b[33m") and warning.endswith("\x1b[0m")
    assert error.startswith("\x1b[31m")
    assert "\x1b[2J" not in coloured  # the logged escape sequence never reaches the terminal
    plain = _on_a_terminal(["show", "req-42", str(log)], {"NO_COLOR": "1"})
    assert ESC not in plain
    assert (
        plain.splitlines()[1:]
        == coloured.replace("\x1b[0m", "")
        .replace("\x1b[33m", "")
        .replace("\x1b[31m", "")
        .replace("\x1b[2m", "")
        .replace("\x1b[1m", "")
        .splitlines()[1:]
    )
    forced = run_cli("show", "req-42", log, "--color", "always", env={"NO_COLOR": "1"})
    assert "\x1b[33m" in forced.stdout


def test_level_filter_keeps_lifecycle_entries(tmp_path: Path) -> None:
    """--level warning hides debug and info log entries, never start and close."""
    log = _log(tmp_path)
    done = run_cli("show", "req-42", log, "--level", "warning")
    assert done.returncode == 0
    heads = [line for line in done.stdout.splitlines() if line[:4].isdigit()]
    assert [h.split()[1] for h in heads] == ["#0", "#2", "#3", "#5"]
    done = run_cli("show", "req-42", log, "--level", "loud")
    assert done.returncode == 2 and "unknown level name" in done.stderr


def test_json_prints_the_sessions_entries_as_in_the_log(tmp_path: Path) -> None:
    """--json: the session's entries as JSON Lines, equal to the file's, in seq order."""
    log = _log(tmp_path)
    done = run_cli("show", "req-42", log, "--json")
    assert done.returncode == 0
    shown = [json.loads(line) for line in done.stdout.splitlines()]
    written = [json.loads(line) for line in log.read_bytes().splitlines()]
    assert shown == [e for e in written if e["session_id"] == "req-42"]
    assert done.stdout.encode() == b"".join(
        line + b"\n" for line in log.read_bytes().splitlines() if b'"req-42"' in line
    )


def test_unknown_session_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    """An id that is not in the files: exit 1, one line, close matches suggested."""
    log = _log(tmp_path)
    done = run_cli("show", "req-44", log)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"async-session-logger: error: no session 'req-44' in {log}; "
        "did you mean 'req-43', 'req-42'?\n"
    )
    done = run_cli("show", "req-42", tmp_path / "missing.jsonl")
    assert done.returncode == 1
    assert (
        done.stderr == f"async-session-logger: error: {tmp_path / 'missing.jsonl'}: no such file\n"
    )


# -- issue 12: summary, level counts, discarded entries ---------------------------------------
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
EVIL = "\x1b[2J\x07\r\x9b31m\u202eevil\u2028"
SHOWN = "\\x1b[2J\\x07\\r\\x9b31m\\u202eevil\\u2028"
JSON_SHOWN = "\\u001b[2J\\u0007\\r\\x9b31m\\u202eevil\\u2028"  # inside a JSON value


def test_header_has_summary_level_counts_and_discarded(tmp_path: Path) -> None:
    """A real buffer_level/annotate log: summary block, E1 D1, discarded, flushed entries in seq."""
    log = tmp_path / "log.jsonl"
    with SessionLogger(method="file", path=log, dead_letter_path=None) as logger:
        logger.start_session("pay", metadata={"user": "ada"}, buffer_level="DEBUG")
        logger.log_entry("pay", "card checked", "DEBUG")  # held until the failure below
        logger.annotate("pay", amount=12.5, note="two\nlines")
        logger.log_entry("pay", "declined", "ERROR")
        logger.close_session("pay", status="error")
        logger.start_session("quiet", buffer_level="DEBUG")
        logger.log_entry("quiet", "noise", "DEBUG")
        logger.log_entry("quiet", "noise", "DEBUG")
        logger.close_session("quiet")  # clean: both discarded
    done = run_cli("show", "pay", log)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("· 2 entries · 1 error · E1 D1")
    assert lines[1:7] == [
        "metadata:",
        "  user: ada",
        "summary:",
        "  amount: 12.5",
        "  note: two",
        "    lines",
    ]
    assert [line.split(maxsplit=3)[1:] for line in lines[7:10]] == [
        ["#0", "INFO", "Session started"],
        ["#1", "DEBUG", "card checked"],
        ["#2", "ERROR", "declined"],
    ]
    assert lines[10].endswith(", 2 entries, E1 D1)") and len(lines) == 11  # no summary again
    quiet = run_cli("show", "quiet", log).stdout.splitlines()
    assert quiet[0].endswith("· 0 entries · 0 errors · 2 discarded")
    assert quiet[-1].endswith(" 0 entries, 2 discarded)")


def test_hostile_summary_levels_parent_and_discarded_are_escaped(tmp_path: Path) -> None:
    """Control characters escaped; values of the wrong type shown as they are, never lost."""
    entries = [
        {"session_id": "s", "seq": 0, "event": "session_start", "parent_session_id": 17},
        {
            "session_id": "s",
            "seq": 1,
            "event": "session_close",
            "status": "closed",
            "summary": {f"k{EVIL}": f"v{EVIL}", "n": {"deep": EVIL}},
            "levels": [f"x{EVIL}"],
            "discarded": "7",
        },
        {"session_id": "t", "seq": 0, "event": "session_start", "parent_session_id": f"p{EVIL}"},
        {
            "session_id": "t",
            "seq": 1,
            "event": "session_close",
            "levels": {f"L{EVIL}": 1, "INFO": 2},
            "summary": "not a dict",
            "discarded": True,
        },
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    done = run_cli("show", "s", log)
    assert done.returncode == 0, done.stderr
    assert not UNSAFE.search(done.stdout)
    lines = done.stdout.splitlines()
    assert lines[1:3] == ["summary:", f"  k{SHOWN}: v{SHOWN}"]
    assert lines[3] == f'  n: {{"deep":"{JSON_SHOWN}"}}'  # a nested value is shown as JSON
    assert lines[4].endswith("#0    INFO     ") and lines[5] == "    parent_session_id: 17"
    assert lines[6].endswith("(closed)")
    assert lines[7:] == [f'    levels: ["x{JSON_SHOWN}"]', "    discarded: 7"]
    other = run_cli("show", "t", log, "--color", "always")
    assert not UNSAFE.search(re.sub(r"\x1b\[[0-9;]*m", "", other.stdout))
    plain = re.sub(r"\x1b\[[0-9;]*m", "", other.stdout).splitlines()
    cut = "L\\x1b[2J\\x07\\r\\x9b31m\\u202eevi…"  # a level name is cut at 16, then escaped
    assert plain[0].endswith(f"· 0 errors · I2 {cut}:1")
    assert plain[1] == f"parent: p{SHOWN}"
    assert plain[2].endswith(f"INFO      (child of p{SHOWN})")
    assert plain[3].endswith(f"INFO      (closed, I2 {cut}:1)")
    assert plain[4:] == ["    summary: not a dict", "    discarded: true"]


def test_tail_renders_a_close_summary_as_indented_fields() -> None:
    """entry_lines as tail calls it: a close entry's summary as summary.KEY lines, escaped."""
    from async_session_logger.cli._render import Style, entry_lines

    close = {
        "timestamp": "2026-11-24T06:23:13.000000Z",
        "session_id": "s",
        "seq": 3,
        "event": "session_close",
        "level": "INFO",
        "levelno": 20,
        "message": "Session closed",
        "duration_s": 1.0,
        "entries": 2,
        "status": "closed",
        "levels": {"INFO": 2, "DEBUG": 0},
        "summary": {"rows": 42, f"k{EVIL}": "v"},
        "discarded": 4,
    }
    lines = entry_lines(close, Style(False), with_session=True, with_metadata=True)
    assert lines == [
        "2026-11-24T06:23:13.000000Z  s  #3    INFO     "
        "Session closed (closed, 1.000s, 2 entries, I2, 4 discarded)",
        "    summary.rows: 42",
        f"    summary.k{SHOWN}: v",
    ]
    quiet = {**close, "levels": {"INFO": 0}, "summary": {}}
    assert entry_lines(quiet, Style(False))[0].endswith("(closed, 1.000s, 2 entries, 4 discarded)")
