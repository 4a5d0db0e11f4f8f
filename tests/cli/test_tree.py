"""Child sessions on the command line: `sessions --tree`, `show`'s children and `show --tree`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import SessionLogger

from .helpers import lines_of, run_cli

DAY = "2026-11-24T06:23"


def _family(path: Path) -> None:
    """Log a job with two children (one by token, one by handle) and a grandchild, for real."""
    with SessionLogger(method="file", path=path, dead_letter_path=None) as logger:
        logger.start_session("job", metadata={"kind": "batch"})
        logger.log_entry("job", "planning", "INFO")
        token = logger.token("job")
        logger.start_session("worker", parent_id=token)  # as a task queue worker would
        logger.log_entry("worker", "failed", "ERROR")
        logger.close_session("worker", status="error")
        with logger.session("step", parent="job") as step:
            step.warning("slow")
            with logger.session("sub", parent=step) as sub:
                sub.info("deep")
        logger.close_session("job")
        logger.start_session("other")
        logger.close_session("other")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a log of the family above and one unrelated session."""
    path = tmp_path_factory.mktemp("tree") / "log.jsonl"
    _family(path)
    return path


def _entry(sid: str, seq: int, event: str, second: int, **fields: Any) -> dict[str, Any]:
    return {
        "timestamp": f"{DAY}:{second:02d}.000000Z",
        "session_id": sid,
        "seq": seq,
        "event": event,
        "level": "INFO",
        "levelno": 20,
        "message": "m",
        **fields,
    }


def _write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_sessions_tree_indents_children_under_their_parent(family: Path) -> None:
    """--tree: children two spaces under their parent, in start order; flat: a PARENT column."""
    done = run_cli("sessions", "--tree", family)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split()[-2:] == ["STATUS", "LEVELS"]  # nested rows need no PARENT column
    assert [row[: len(row) - len(row.lstrip())] + row.split()[0] for row in rows] == [
        "job",
        "  worker",
        "  step",
        "    sub",
        "other",
    ]
    flat = run_cli("sessions", family)
    header, *rows = flat.stdout.splitlines()
    assert header.split()[-1] == "PARENT"
    assert {row.split()[0]: row.split()[-1] for row in rows} == {
        "job": "-",
        "worker": "job",
        "step": "job",
        "sub": "step",
        "other": "-",
    }


def test_a_filtered_tree_hangs_rows_under_their_nearest_shown_ancestor(family: Path) -> None:
    """Filtered out parents: a row moves up to its nearest listed ancestor and names its parent."""
    done = run_cli("sessions", "--tree", "--status", "closed", "--meta", "kind=batch", family)
    assert done.returncode == 0, done.stderr
    assert [row.split()[0] for row in done.stdout.splitlines()[1:]] == ["job"]
    done = run_cli("sessions", "--tree", "--status", "error", "--status", "closed", family)
    rows = done.stdout.splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["job", "worker", "step", "sub", "other"]
    # sub sits under step, its parent: no PARENT column at all.
    assert "PARENT" not in rows[0]
    done = run_cli("sessions", "--tree", "--meta", "kind=batch", "--status", "error", family)
    assert done.stdout.splitlines()[1:] == []  # job is closed, not error: nothing matches both
    done = run_cli("sessions", "--tree", "--status", "error", family)
    header, row = done.stdout.splitlines()
    assert header.split()[-1] == "PARENT" and row.split()[0] == "worker"
    assert row.split()[-1] == "job"  # not under job (filtered out): its parent is named


def test_show_lists_children_and_tree_prints_the_descendants(family: Path) -> None:
    """show: parent line and children with status; --tree: each descendant's block indented."""
    done = run_cli("show", "job", family)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = lines.index("children (2):")
    assert lines[at + 1].startswith("  worker · error · ")
    assert lines[at + 1].endswith("1 entry · 1 error · E1")
    assert lines[at + 2].startswith("  step · closed · ")
    assert not any("deep" in line for line in lines)  # the children's entries: only with --tree
    child = run_cli("show", "sub", family).stdout.splitlines()
    assert child[1] == "parent: step"
    assert child[2].endswith("INFO     Session started (child of step)")

    tree = run_cli("show", "job", family, "--tree").stdout.split("\n\n")
    assert len(tree) == 4
    worker, step, sub = (block.splitlines() for block in tree[1:])
    assert worker[0].startswith("  session worker · error · ")
    assert worker[1] == "  parent: job"
    assert all(line.startswith("  ") for line in worker + step)
    assert any(line.endswith("ERROR    failed") for line in worker)
    assert step[2:4] == ["  children (1):", "    sub · closed · " + step[3].split(" · ", 2)[2]]
    assert sub[0].startswith("    session sub · closed")
    assert any(line.endswith("INFO     deep") for line in sub)


def test_show_json_tree_prints_the_familys_entries_as_in_the_log(family: Path) -> None:
    """show --json --tree: the session's entries, then each descendant's, exactly as written."""
    done = run_cli("show", "job", family, "--json", "--tree")
    assert done.returncode == 0, done.stderr
    shown = [json.loads(line) for line in done.stdout.splitlines()]
    written = lines_of(family)
    assert shown == [
        e for sid in ("job", "worker", "step", "sub") for e in written if e["session_id"] == sid
    ]
    alone = run_cli("show", "job", family, "--json")
    assert [json.loads(line) for line in alone.stdout.splitlines()] == shown[:3]


def test_children_are_complete_when_files_come_newest_first(tmp_path: Path) -> None:
    """A child's close read before its start (newest file first): read again, shown closed."""
    older = _write(
        tmp_path / "log.jsonl.1",
        [
            _entry("p", 0, "session_start", 0),
            _entry("c", 0, "session_start", 1, parent_session_id="p"),
            _entry("c", 1, "log", 2, message="early"),
        ],
    )
    newer = _write(
        tmp_path / "log.jsonl",
        [
            _entry("g", 0, "session_start", 3, parent_session_id="c"),
            _entry("g", 1, "session_close", 4, status="closed", entries=0, levels={}),
            _entry("c", 2, "log", 5, message="late", level="ERROR", levelno=40),
            _entry(
                "c",
                3,
                "session_close",
                6,
                status="error",
                duration_s=5.0,
                entries=2,
                levels={"INFO": 1, "ERROR": 1},
            ),
            _entry("p", 1, "session_close", 7, status="closed", entries=0, levels={}),
        ],
    )
    done = run_cli("show", "p", newer, older)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "  c · error · 5.000s · 2 entries · 1 error · E1 I1" in done.stdout.splitlines()
    tree = run_cli("show", "p", newer, older, "--tree").stdout
    # The grandchild's start came before its parent's: found through the parent ids kept.
    assert "    session g · closed" in tree
    assert "  2026-11-24T06:23:02.000000Z  #1    INFO     early" in tree
    listed = run_cli("sessions", "--tree", newer, older).stdout.splitlines()
    assert [row.split()[0] for row in listed[1:]] == ["p", "c", "g"]


def test_a_parent_cycle_is_one_warning_line_and_no_hang(tmp_path: Path) -> None:
    """a <-> b (hostile): sessions and show print one escaped warning line, read both as roots."""
    log = _write(
        tmp_path / "log.jsonl",
        [
            _entry("a", 0, "session_start", 0, parent_session_id="b\x1b[2J"),
            _entry("b\x1b[2J", 0, "session_start", 1, parent_session_id="a"),
        ],
    )
    warning = (
        "async-session-logger: warning: sessions name each other as parent "
        "('a' -> 'b\\x1b[2J' -> 'a'); read as roots\n"
    )
    done = run_cli("sessions", "--tree", log, timeout=20)
    assert done.returncode == 0 and done.stderr == warning
    assert [row.split()[0] for row in done.stdout.splitlines()[1:]] == ["a", "b\\x1b[2J"]
    shown = run_cli("show", "a", log, "--tree", timeout=20)
    assert shown.returncode == 0 and shown.stderr == warning
    assert shown.stdout.splitlines()[1] == "parent: b\\x1b[2J"
    assert "children" not in shown.stdout and "\x1b" not in shown.stdout


def test_a_deep_chain_is_indented_up_to_a_limit(tmp_path: Path) -> None:
    """3,000 nested sessions: no recursion error; indentation stops growing at 16 levels."""
    depth = 3_000
    chain = [_entry("s0", 0, "session_start", 0)] + [
        _entry(f"s{n}", 0, "session_start", 1, parent_session_id=f"s{n - 1}")
        for n in range(1, depth)
    ]
    log = _write(tmp_path / "log.jsonl", chain)
    done = run_cli("sessions", "--tree", log)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [f"s{n}" for n in range(depth)]
    assert rows[5].startswith(" " * 10 + "s5 ") and rows[-1].startswith(" " * 32 + f"s{depth - 1}")
    shown = run_cli("show", "s0", log, "--tree")
    assert shown.returncode == 0, shown.stderr
    heads = [line for line in shown.stdout.splitlines() if "session s" in line]
    assert len(heads) == depth and heads[-1].startswith(" " * 32 + f"session s{depth - 1} ")
