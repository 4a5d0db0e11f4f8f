"""Run examples/web_app.py as a real server process, query it over HTTP, check its sessions."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).parents[1]
WEB_APP = ROOT / "examples" / "web_app.py"
USER_AGENT = "test-web-app/1.0"
UUID_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass
class Server:
    """A running web_app.py process and the port it listens on."""

    process: asyncio.subprocess.Process
    port: int

    def url(self, path: str) -> str:
        """Return the URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Reply:
    """What the test keeps of one HTTP exchange."""

    path: str
    status: int
    session_id: str
    body: str


@asynccontextmanager
async def web_app(cwd: Path, log: Path | None) -> AsyncIterator[Server]:
    """Start web_app.py on port 0 in ``cwd``, logging to ``log`` or its default; kill it at exit."""
    env = {k: v for k, v in os.environ.items() if k != "WEB_APP_LOG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if log is not None:
        env["WEB_APP_LOG"] = str(log)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WEB_APP),
        "--port",
        "0",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
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
    """Send ``sig``, wait for a clean exit, and return the rest of stdout and all of stderr."""
    server.process.send_signal(sig)
    return await exited(server)


async def exited(server: Server) -> tuple[str, str]:
    """Wait for a clean exit and return the rest of stdout and all of stderr."""
    stdout, stderr = await asyncio.wait_for(server.process.communicate(), 30)
    assert server.process.returncode == 0, stderr.decode()
    return stdout.decode(), stderr.decode()


async def get(
    http: aiohttp.ClientSession, server: Server, path: str, request_id: str | None = None
) -> Reply:
    """GET ``path`` (with ``X-Request-ID`` when given) and keep status, session id and body."""
    headers = {"User-Agent": USER_AGENT}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    async with http.get(server.url(path), headers=headers) as response:
        return Reply(path, response.status, response.headers["X-Session-ID"], await response.text())


def sessions_in(log: Path) -> dict[str, list[dict[str, Any]]]:
    """Group the entries of ``log`` by session id, asserting each id's session is whole."""
    sessions: dict[str, list[dict[str, Any]]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        sessions.setdefault(entry["session_id"], []).append(entry)
    for entries in sessions.values():
        entries.sort(key=lambda e: e["seq"])
        assert [e["seq"] for e in entries] == list(range(len(entries)))
        events = [e["event"] for e in entries]
        assert events == ["session_start", *["log"] * (len(entries) - 2), "session_close"]
        assert entries[-1]["entries"] == len(entries) - 2
    return sessions


def log_mentions(log: Path, text: str) -> bool:
    """Return whether ``log`` exists and holds ``text``."""
    return log.exists() and text in log.read_text(encoding="utf-8")


def files_in(directory: Path) -> list[str]:
    """Return the names in ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir())


def logged(entries: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """Return (level, message, custom_fields) of a session's log entries."""
    return [(e["level"], e["message"], e.get("custom_fields")) for e in entries[1:-1]]


async def test_web_app_logs_one_session_per_request(tmp_path: Path) -> None:
    """Concurrent requests each get a whole session, tied to the response by X-Session-ID."""
    log = tmp_path / "sessions.jsonl"
    names = [f"user{i}" for i in range(8)]
    async with web_app(tmp_path, log) as server:
        async with aiohttp.ClientSession() as http:
            replies = await asyncio.gather(
                *(get(http, server, f"/hello?name={name}") for name in names),
                get(http, server, "/hello?name=custom", request_id="req-custom-1"),
                get(http, server, "/hello?name=hostile", request_id="../x"),
                get(http, server, "/fail"),
                get(http, server, "/missing"),
                get(http, server, "/"),
            )
        rest, stderr = await stop(server, signal.SIGTERM)

    assert stderr == ""
    sessions = sessions_in(log)
    accepted = sum(len(entries) for entries in sessions.values())
    assert rest == f"session log {log}: ok: {accepted} accepted; file: {accepted} delivered\n"
    # One session per request, and every response names its own.
    assert sorted(sessions) == sorted(reply.session_id for reply in replies)
    for reply in replies:
        entries = sessions[reply.session_id]
        assert entries[0]["metadata"] == {
            "method": "GET",
            "path": reply.path.partition("?")[0],
            "remote": "127.0.0.1",
            "user_agent": USER_AGENT,
        }

    *hellos, custom, hostile, failed, missing, index = replies
    assert custom.session_id == "req-custom-1"
    # "../x" is no safe id: the server chose its own instead.
    assert UUID_HEX.fullmatch(hostile.session_id)
    assert "../x" not in sessions
    for reply in [*hellos, failed, missing, index]:
        assert UUID_HEX.fullmatch(reply.session_id)

    for name, reply in zip([*names, "custom", "hostile"], [*hellos, custom, hostile], strict=True):
        assert (reply.status, json.loads(reply.body)) == (200, {"message": f"Hello, {name}!"})
        entries = sessions[reply.session_id]
        assert logged(entries) == [
            ("INFO", "Greeting sent", {"name": name, "greeting": f"Hello, {name}!"}),
            ("INFO", "Response 200", {"status": 200}),
        ]
        assert entries[-1]["status"] == "closed"

    assert failed.status == 500
    assert json.loads(failed.body) == {
        "error": "internal server error",
        "session_id": failed.session_id,
    }
    entries = sessions[failed.session_id]
    assert logged(entries) == [
        ("WARNING", "About to fail on purpose", None),
        ("ERROR", "Session failed: RuntimeError: simulated failure", None),
    ]
    assert entries[2]["exception"].endswith("RuntimeError: simulated failure\n")
    assert (entries[-1]["status"], entries[-1]["level"]) == ("error", "ERROR")

    assert missing.status == 404
    entries = sessions[missing.session_id]
    assert logged(entries) == [("WARNING", "Response 404", {"status": 404})]
    assert entries[-1]["status"] == "closed"

    assert index.status == 200
    assert logged(sessions[index.session_id]) == [
        ("DEBUG", "Index served", None),
        ("INFO", "Response 200", {"status": 200}),
    ]


async def test_web_app_stops_on_sigint_and_logs_to_its_default_file(tmp_path: Path) -> None:
    """Without WEB_APP_LOG the sessions go to ./web_app_sessions.jsonl; SIGINT exits cleanly."""
    async with web_app(tmp_path, None) as server:
        async with aiohttp.ClientSession() as http:
            reply = await get(http, server, "/hello?name=Ada")
        rest, stderr = await stop(server, signal.SIGINT)

    assert stderr == ""
    assert rest == "session log web_app_sessions.jsonl: ok: 4 accepted; file: 4 delivered\n"
    assert files_in(tmp_path) == ["web_app_sessions.jsonl"]
    sessions = sessions_in(tmp_path / "web_app_sessions.jsonl")
    assert list(sessions) == [reply.session_id]
    assert logged(sessions[reply.session_id]) == [
        ("INFO", "Greeting sent", {"name": "Ada", "greeting": "Hello, Ada!"}),
        ("INFO", "Response 200", {"status": 200}),
    ]


async def test_web_app_finishes_a_request_in_flight_at_sigterm(tmp_path: Path) -> None:
    """SIGTERM during a request lets it answer; its session closes whole, not interrupted."""
    log = tmp_path / "sessions.jsonl"
    async with web_app(tmp_path, log) as server:
        async with aiohttp.ClientSession() as http:
            request = asyncio.create_task(get(http, server, "/slow?ms=1000"))
            # The handler's first entry on disk: the request is being handled now.
            for _ in range(500):
                if log_mentions(log, '"message":"Working"'):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the /slow request never reached its handler")
            server.process.send_signal(signal.SIGTERM)
            reply = await asyncio.wait_for(request, 30)
        rest, stderr = await exited(server)

    assert (reply.status, json.loads(reply.body)) == (200, {"slept_ms": 1000})
    assert stderr == ""
    assert rest == f"session log {log}: ok: 5 accepted; file: 5 delivered\n"
    sessions = sessions_in(log)
    assert list(sessions) == [reply.session_id]
    entries = sessions[reply.session_id]
    assert logged(entries) == [
        ("INFO", "Working", {"ms": 1000}),
        ("INFO", "Done", None),
        ("INFO", "Response 200", {"status": 200}),
    ]
    assert entries[-1]["status"] == "closed"
    assert entries[-1]["duration_s"] >= 1.0
