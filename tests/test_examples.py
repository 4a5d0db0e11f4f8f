"""Run every example and every seed README snippet as a real subprocess; check the output."""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
# The user's original document, kept in the repository so that a clean clone tests itself.
SEED_README = Path(__file__).parent / "data" / "seed_README.md"
SEED_IMPORT = "from session_logger import SessionLogger"
OUR_IMPORT = "from async_session_logger import SessionLogger"
LOG_NAME = re.compile(r"log_(\d{4}-\d{2}-\d{2})\.jsonl")


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in ``cwd`` with the library under test importable; return the result."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` and assert it exited cleanly without a word on stderr."""
    result = run_python([str(EXAMPLES / name)], cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


def seed_snippets() -> dict[str, str]:
    """Return the ```python blocks of the seed README by the heading they follow."""
    snippets: dict[str, str] = {}
    heading = ""
    block: list[str] | None = None
    for line in SEED_README.read_text(encoding="utf-8").splitlines():
        if block is not None:
            if line.strip() == "```":
                snippets[heading] = "\n".join(block) + "\n"
                block = None
            else:
                block.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip() == "```python":
            block = []
    return snippets


def as_our_script(snippet: str) -> str:
    """Return a seed snippet with only its import replaced and ``import logging`` prepended."""
    assert snippet.count(SEED_IMPORT) == 1
    return "import logging\n" + snippet.replace(SEED_IMPORT, OUR_IMPORT)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON Lines file; every line must be a JSON object."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def the_log_file(directory: Path) -> Path:
    """Return the one file of ``directory``, asserting it is a ``log_YYYY-MM-DD.jsonl``."""
    files = sorted(p.name for p in directory.iterdir())
    assert len(files) == 1, files
    assert LOG_NAME.fullmatch(files[0]), files
    return directory / files[0]


def check_basic_usage_file(path: Path) -> None:
    """Assert ``path`` holds exactly the seed's "Basic Usage" session, as schema-v1 lines."""
    entries = read_jsonl(path)
    assert [(e["seq"], e["event"], e["level"], e["levelno"], e["message"]) for e in entries] == [
        (0, "session_start", "INFO", 20, "Session started"),
        (1, "log", "INFO", 20, "This is the first log entry."),
        (2, "log", "WARNING", 30, "This is the second log entry."),
        (3, "session_close", "INFO", 20, "Session closed"),
    ]
    assert {e["session_id"] for e in entries} == {"001"}
    assert entries[0]["metadata"] == {}
    assert "custom_fields" not in entries[1]
    assert entries[2]["custom_fields"] == {"custom_field": "custom_value"}
    assert (entries[3]["status"], entries[3]["entries"]) == ("closed", 2)
    assert isinstance(entries[3]["duration_s"], float) and entries[3]["duration_s"] >= 0
    # The file is named after the entries' UTC date.
    match = LOG_NAME.fullmatch(path.name)
    assert match is not None and entries[0]["timestamp"].startswith(match.group(1) + "T")


def check_standard_output(stdout: str) -> None:
    """Assert ``stdout`` is exactly the seed's "Standard Output" session as three JSON lines."""
    entries = [json.loads(line) for line in stdout.splitlines()]
    assert [(e["seq"], e["event"], e["level"], e["message"]) for e in entries] == [
        (0, "session_start", "INFO", "Session started"),
        (1, "log", "INFO", "This is a standard output log entry."),
        (2, "session_close", "INFO", "Session closed"),
    ]
    assert {e["session_id"] for e in entries} == {"001"}
    assert (entries[2]["status"], entries[2]["entries"]) == ("closed", 1)


def test_quickstart_writes_the_basic_usage_session(tmp_path: Path) -> None:
    """The quickstart writes the 4-entry session to log_<UTC date>.jsonl and names that file."""
    result = run_example("quickstart.py", tmp_path)
    log_file = the_log_file(tmp_path)
    check_basic_usage_file(log_file)
    assert result.stdout == f"Session 001 written to {log_file.name}\n"


def test_quickstart_is_the_seed_snippet_verbatim() -> None:
    """examples/quickstart.py holds the seed's "Basic Usage" snippet line for line."""
    seed = seed_snippets()["Basic Usage"].splitlines()
    body = seed[seed.index(SEED_IMPORT) + 1 :]
    while body and not body[0].strip():
        body.pop(0)
    source = (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")
    # The one pragma the linter needs on the seed's long line is the only difference allowed.
    lines = [line.removesuffix("  # noqa: E501") for line in source.splitlines()]
    start = lines.index(body[0])
    assert lines[start : start + len(body)] == body
    assert "import logging" in lines and OUR_IMPORT in lines


def test_stdout_example_prints_three_json_lines(tmp_path: Path) -> None:
    """The stdout example prints the session's three entries and writes no file."""
    result = run_example("stdout.py", tmp_path)
    check_standard_output(result.stdout)
    assert list(tmp_path.iterdir()) == []


def test_custom_handler_example_receives_every_entry(tmp_path: Path) -> None:
    """Both handlers, plain and async, are called once per entry, in seq order."""
    result = run_example("custom_handler.py", tmp_path)
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    plain = [json.loads(line.removeprefix("HANDLER: ")) for line in lines[:4]]
    assert all(line.startswith("HANDLER: {") for line in lines[:4])
    assert [(e["session_id"], e["seq"], e["event"], e["message"]) for e in plain] == [
        ("001", 0, "session_start", "Session started"),
        ("001", 1, "log", "This goes to the handler."),
        ("001", 2, "log", "So does this warning."),
        ("001", 3, "session_close", "Session closed"),
    ]
    assert plain[2]["custom_fields"] == {"custom_field": "custom_value"}
    assert lines[4] == "handler received 4 entries"
    assert lines[5:] == [
        "ASYNC HANDLER: 002 #0 session_start: Session started",
        "ASYNC HANDLER: 002 #1 log: Sent by an async handler.",
        "ASYNC HANDLER: 002 #2 session_close: Session closed",
    ]
    assert list(tmp_path.iterdir()) == []


def test_custom_formatter_example_adds_fields_to_every_entry(tmp_path: Path) -> None:
    """Every printed line, lifecycle entries included, carries the formatter's app and host."""
    result = run_example("custom_formatter.py", tmp_path)
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["seq"], e["event"], e["message"]) for e in entries] == [
        (0, "session_start", "Session started"),
        (1, "log", "Formatted entry."),
        (2, "session_close", "Session closed"),
    ]
    assert [(e["app"], e["host"]) for e in entries] == [("demo", socket.gethostname())] * 3
    assert entries[1]["custom_fields"] == {"custom_field": "custom_value"}
    assert list(tmp_path.iterdir()) == []


def test_metadata_example_reads_its_sessions_back(tmp_path: Path) -> None:
    """The sessions read back show their metadata (secret masked), entries and statuses."""
    result = run_example("metadata.py", tmp_path)
    durations = re.findall(r"duration=(\d+\.\d\d) ms", result.stdout)
    assert len(durations) == 3
    text = re.sub(r"duration=\d+\.\d\d ms", "duration=<d>", result.stdout)
    assert text.splitlines() == [
        "session 001: status=error entries=2 duration=<d>",
        '  metadata: {"user_id": "u-17", "client": "ios/5.2", "api_token": "***"}',
        '  INFO     Checkout started {"cart_items": 3}',
        '  ERROR    Payment declined {"code": "card_declined"}',
        "session 002: status=closed entries=2 duration=<d>",
        '  metadata: {"user_id": "u-42", "client": "web"}',
        '  INFO     Report requested {"report": "monthly"}',
        '  WARNING  Report is large {"rows": 120000}',
        "session 003: status=error entries=2 duration=<d>",
        '  metadata: {"user_id": "u-7", "client": "cli"}',
        "  INFO     Import started",
        "  ERROR    Session failed: ValueError: bad CSV header"
        " (traceback in the entry's 'exception' key)",
    ]
    assert list(tmp_path.iterdir()) == []


def test_every_seed_readme_snippet_runs(tmp_path: Path) -> None:
    """Each ```python block of the seed README runs with only its import changed."""
    snippets = seed_snippets()
    # A new snippet in the seed needs its own expectation here.
    assert sorted(snippets) == ["Basic Usage", "Standard Output"]

    basic = tmp_path / "basic"
    basic.mkdir()
    result = run_python(["-c", as_our_script(snippets["Basic Usage"])], basic)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    check_basic_usage_file(the_log_file(basic))

    stdout_dir = tmp_path / "stdout"
    stdout_dir.mkdir()
    result = run_python(["-c", as_our_script(snippets["Standard Output"])], stdout_dir)
    assert (result.returncode, result.stderr) == (0, "")
    check_standard_output(result.stdout)
    assert list(stdout_dir.iterdir()) == []


def test_the_suite_reads_nothing_beside_the_repository() -> None:
    """No test reaches outside the clone (a sibling ``shared`` checkout a user does not have)."""
    outside = re.compile(r"\.\./shared|parents?(\[\d\])?\s*/\s*[\"']shared[\"']")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if outside.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert SEED_README.is_relative_to(ROOT) and SEED_README.is_file()


# What an example may need beyond the runtime dependencies: the module it imports, or the
# client library of a sink it uses through method="...".
SINK_CLIENTS = {"mqtt": "aiomqtt", "smtp": "aiosmtplib"}
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))


def extras() -> dict[str, set[str]]:
    """Return pyproject's optional dependencies as {extra: {distribution name, ...}}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name = re.compile(r"[A-Za-z0-9_.-]+")

    def names(requirements: list[str]) -> set[str]:
        found = (name.match(r) for r in requirements)
        return {m.group(0).lower() for m in found if m}

    table = {extra: names(reqs) for extra, reqs in project["optional-dependencies"].items()}
    table[""] = names(project["dependencies"])
    return table


def third_party_needs(source: str) -> set[str]:
    """Return the third-party modules a script imports (anywhere) or needs through a sink."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.partition(".")[0])
    for method, client in SINK_CLIENTS.items():
        if re.search(rf"""method=[^\n]*["']{method}["']""", source):
            modules.add(client)
    return {m for m in modules if m not in sys.stdlib_module_names} - {"async_session_logger"}


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_names_the_extras_it_needs(example: Path) -> None:
    """The extras an example's docstring names install every third-party module it needs,
    and the [examples] extra installs what all of them need."""
    source = example.read_text(encoding="utf-8")
    table = extras()
    needs = third_party_needs(source) - table[""]
    assert needs <= table["examples"], f"[examples] lacks {needs - table['examples']}"
    docstring = ast.get_docstring(ast.parse(source)) or ""
    named = {e for group in re.findall(r"\[([a-z,]+)\]", docstring) for e in group.split(",")}
    provided = set().union(*(table.get(extra, set()) for extra in named))
    assert needs <= provided, f"{example.name} needs {needs}, its docstring names {named}"


@pytest.mark.parametrize(
    ("name", "args", "module"),
    [
        ("web_app.py", [], "aiohttp"),
        ("email_alerts.py", ["--demo"], "aiosmtpd"),
        ("mqtt_subscriber.py", [], "aiomqtt"),
    ],
)
def test_example_without_its_extra_says_how_to_install_it(
    tmp_path: Path, name: str, args: list[str], module: str
) -> None:
    """With the module made unimportable, the example exits 1 with the pip command to run
    (from a checkout), not a traceback."""
    script = str(EXAMPLES / name)
    hide = (
        f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = {[script, *args]!r}; "
        f"runpy.run_path({script!r}, run_name='__main__')"
    )
    result = run_python(["-c", hide], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"needs {module}" in result.stderr and "pip install -e '.[" in result.stderr
