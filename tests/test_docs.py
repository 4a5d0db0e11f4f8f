"""Every ```python block of README.md and docs/*.md runs as written, as a script, on its own."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .mqtt_broker import Broker

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
# The info strings a doc may use. A block meant to run says exactly ``python``; one that cannot
# run alone says ``python fragment`` (GitHub still highlights it) and the text says so too.
# ``sql`` blocks (docs/scaling.md's partitioned entries) are run on a real PostgreSQL server by
# tests/store/test_postgres.py.
KNOWN_INFO = {"", "python", "python fragment", "bash", "text", "sql"}
# A snippet that waits for a server that is not there must fail this, not hang the suite.
TIMEOUT_S = 90


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    doc: Path
    line: int  # of the opening fence, 1-based
    info: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> Iterator[Block]:
    """Yield the fenced blocks of ``doc`` in order."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    start: tuple[int, str, str] | None = None  # (line, fence, info)
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if start is None:
            if match:
                start, body = (number, match.group(1), match.group(2).strip()), []
        elif match and match.group(1).startswith(start[1]) and not match.group(2).strip():
            yield Block(doc, start[0], start[2], "\n".join(body) + "\n")
            start = None
        else:
            body.append(line)
    assert start is None, f"{doc}: the block opened at line {start[0]} is never closed"


ALL_BLOCKS = [block for doc in DOCS for block in blocks(doc)]
SCRIPTS = [block for block in ALL_BLOCKS if block.info == "python"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real mosquitto for the MQTT snippets (they read MQTT_HOST / MQTT_PORT)."""
    with Broker(workdir=tmp_path_factory.mktemp("broker")) as running:
        yield running


def run_snippet(code: str, cwd: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as ``python snippet.py`` in ``cwd`` with the library under test importable
    and ``MQTT_HOST``/``MQTT_PORT`` naming ``127.0.0.1:port``."""
    (cwd / "snippet.py").write_text(code, encoding="utf-8")
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name) for b in SCRIPTS])
def test_python_block_runs_as_a_script(block: Block, tmp_path: Path, broker: Broker) -> None:
    """The block, saved as a script and run in an empty directory, exits 0 with a clean stderr."""
    result = run_snippet(block.code, tmp_path, broker.port)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_every_block_has_a_known_info_string() -> None:
    """A ``py``/``python3``/``Python`` block would silently escape the test above."""
    odd = [f"{b.name}: {b.info!r}" for b in ALL_BLOCKS if b.info not in KNOWN_INFO]
    assert odd == []
    assert len(SCRIPTS) >= 10  # the parser still finds the blocks


def test_fragments_say_so_in_the_text() -> None:
    """A ``python fragment`` block is announced as a fragment in the lines just before it."""
    silent = []
    for block in ALL_BLOCKS:
        if block.info != "python fragment":
            continue
        before = block.doc.read_text(encoding="utf-8").splitlines()[: block.line - 1]
        if "fragment" not in " ".join(before[-4:]).lower():
            silent.append(block.name)
    assert silent == []


def test_install_commands_work_from_a_checkout() -> None:
    """The package is on no index: every ``pip install`` of it installs a checkout (``-e``/path)."""
    from_index = re.compile(r"pip install\s+(?!-e\b|\.)['\"]?async[-_]session[-_]logger")
    wrong = [
        f"{doc.relative_to(ROOT)}:{number}: {line.strip()}"
        for doc in DOCS
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        if from_index.search(line)
    ]
    assert wrong == []


def test_mqtt_doc_script_ends_when_no_broker_answers(tmp_path: Path) -> None:
    """docs/mqtt.md's script pointed at a port where nothing listens: it does not hang, it
    reports the entries as pending, and its close dead-letters them (nothing lost)."""
    (block,) = [b for b in SCRIPTS if b.doc.name == "mqtt.md"]
    with socket.socket() as probe:  # a free port, closed again: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = run_snippet(block.code, tmp_path, port)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "3 accepted" in result.stdout and "3 pending" in result.stdout, result.stdout
    assert "mqtt" in result.stderr  # the failure was reported, not silent
    letters = (tmp_path / "dead_letters.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(letters) == 3
    assert took < 60  # save_logs(timeout=10) + close_timeout 10 s, with room for a slow machine
