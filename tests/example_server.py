"""Run an example web app (examples/*.py --port 0) as a real server process for the tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
HANG_GUARD_S = 60  # a hang guard, not a speed target


@dataclass
class Server:
    """A running example process and the port it listens on."""

    process: asyncio.subprocess.Process
    port: int

    @property
    def base(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Return the URL of ``path`` on this server."""
        return f"{self.base}{path}"


@asynccontextmanager
async def example_server(
    script: Path, log_variable: str, cwd: Path, log: Path | None
) -> AsyncIterator[Server]:
    """Start ``script --port 0`` in ``cwd``, its log in ``log`` (through the environment
    variable ``log_variable``) or its default; wait for its "listening on" line; kill it at exit."""
    env = {k: v for k, v in os.environ.items() if k != log_variable}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if log is not None:
        env[log_variable] = str(log)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--port",
        "0",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), HANG_GUARD_S)).decode()
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match is not None, line
        port = int(match.group(1))
        assert port > 0
        yield Server(process, port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(server: Server, sig: signal.Signals) -> tuple[str, str]:
    """Send ``sig``, wait for exit code 0, and return the rest of stdout and all of stderr."""
    server.process.send_signal(sig)
    return await exited(server)


async def exited(server: Server) -> tuple[str, str]:
    """Wait for exit code 0 and return the rest of stdout and all of stderr."""
    stdout, stderr = await asyncio.wait_for(server.process.communicate(), HANG_GUARD_S)
    assert server.process.returncode == 0, stderr.decode()
    return stdout.decode(), stderr.decode()
