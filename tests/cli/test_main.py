"""The entry points: `python -m async_session_logger` and the `async-session-logger` script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from async_session_logger import __version__

from .helpers import run_cli


def test_module_and_console_script_run_the_same_command() -> None:
    """Both entry points print the version; the script is installed next to the interpreter."""
    done = run_cli("--version")
    assert (done.returncode, done.stdout) == (0, f"async-session-logger {__version__}\n")
    script = Path(sys.executable).parent / "async-session-logger"
    assert script.exists(), "run: pip install -e . (the [project.scripts] entry point)"
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"async-session-logger {__version__}\n")


def test_usage_errors_exit_2_and_help_lists_every_command() -> None:
    """No command or an unknown one: usage on stderr, exit 2; --help names the commands."""
    done = run_cli()
    assert done.returncode == 2 and "usage: async-session-logger" in done.stderr
    done = run_cli("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = run_cli("--help")
    for command in ("sessions", "show", "tail", "collect", "replay-dead-letters"):
        assert command in done.stdout


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`... | head -1` closes the pipe early: no traceback, SIGPIPE's status."""
    from .helpers import write_sessions

    log = tmp_path / "big.jsonl"
    write_sessions(log, [("s", {}, [(f"m{i} " + "x" * 200, 20, None) for i in range(5_000)])])
    shell = f"{sys.executable} -m async_session_logger show s {log} | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.startswith("session s")
    assert "Traceback" not in done.stderr and done.stderr == ""
    assert done.returncode == 141
