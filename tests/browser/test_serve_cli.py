"""The `serve` command itself: user errors, a port in use, the warning for a public address."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx

from ..cli.helpers import run_cli
from .conftest import Served, write_story

Serve = Callable[..., Served]


def test_serve_user_errors(tmp_path: Path) -> None:
    """Missing files, no source, a bad store: one line on stderr, a non-zero status."""
    missing = run_cli("serve", tmp_path / "none.jsonl", "--port", "0")
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = run_cli("serve")
    assert nothing.returncode == 2 and "give log files" in nothing.stderr
    bad = run_cli("serve", "--store", "mysql://x", "--port", "0")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    no_db = run_cli("serve", "--store", f"sqlite:///{tmp_path / 'none.db'}", "--port", "0")
    assert no_db.returncode != 0 and "Traceback" not in no_db.stderr
    not_a_port = run_cli("serve", tmp_path, "--port", "70000")
    assert not_a_port.returncode == 2 and "not a port" in not_a_port.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    """Serving on a port another socket holds fails with one line, no traceback."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        found = run_cli("serve", log, "--port", str(port))
    assert found.returncode != 0
    assert "cannot listen" in found.stderr and "Traceback" not in found.stderr
    assert found.stderr.strip().count("\n") == 0


def test_a_public_address_is_warned_about_and_host_checked(serve: Serve, tmp_path: Path) -> None:
    """`--host 0.0.0.0` warns that anyone can read the logs; foreign Host headers still get 421."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log, "--host", "0.0.0.0")
    assert "anyone who can reach it can read these logs" in served.err.read_text()
    assert served.url.startswith("http://0.0.0.0:")
    port = served.url.rsplit(":", 1)[1].strip("/")
    local = f"http://127.0.0.1:{port}/api/sessions"
    assert httpx.get(local, timeout=10).json()["total"] == 3
    foreign = httpx.get(local, headers={"Host": f"evil.example:{port}"}, timeout=10)
    assert foreign.status_code == 421
    assert foreign.headers["Content-Type"].startswith("application/json")
