"""Run examples/web_app.py as a real server process, query it over HTTP, check its sessions."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .example_server import Server, example_server, exited, stop

ROOT = Path(__file__).parents[1]
WEB_APP = ROOT / "examples" / "web_app.py"
USER_AGENT = "test-web-app/1.0"
UUID_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass
class Reply:
    """What the test keeps of one HTTP exchange."""

    path: str
    status: int
    session_id: str
    body: str


def web_app(cwd: Path, log: Path | None) -> AbstractAsyncContextManager[Server]:
    """Start web_app.py on port 0 in ``cwd``, logging to ``log`` or its default; kill it at exit."""
    return example_server(WEB_APP, "WEB_APP_LOG", cwd, log)


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


def split_process_session(
    sessions: dict[str, list[dict[str, Any]]], server: Server
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Return the server process's own session and the request sessions."""
    [process_id] = [
        sid for sid, entries in sessions.items() if entries[0]["metadata"].get("kind") == "process"
    ]
    assert process_id.startswith("process-") and process_id.endswith(f"-{server.process.pid}")
    assert sessions[process_id][0]["metadata"]["pid"] == server.process.pid
    requests = {sid: entries for sid, entries in sessions.items() if sid != process_id}
    return sessions[process_id], requests


def access_records(process: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the process session's aiohttp.access entries by the session id each names."""
    records = {}
    for entry in process[1:-1]:
        assert entry["logger"] == "aiohttp.access", entry
        session_id = entry["custom_fields"]["response_header"]["X-Session-ID"]
        assert entry["message"].endswith(f" session={session_id}")
        assert session_id not in records
        records[session_id] = entry
    return records


def log_mentions(log: Path, text: str) -> bool:
    """Return whether ``log`` exists and holds ``text``."""
    return log.exists() and text in log.read_text(encoding="utf-8")


def files_in(directory: Path) -> list[str]:
    """Return the names in ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir())


def logged(entries: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """Return (level, message, custom_fields) of a session's log entries."""
    return [(e["level"], e["message"], e.get("custom_fields")) for e in entries[1:-1]]


def greeted(name: str) -> list[tuple[str, str, Any]]:
    """Return what a /hello?name=``name`` session logs."""
    return [
        ("INFO", "Greeting", {"name": name}),
        ("INFO", f"Greeted {name}", {"greeting": f"Hello, {name}!"}),
        ("INFO", "Response", {"status_code": 200, "route": "/hello"}),
    ]


FAILED = [
    ("INFO", "Failing on purpose", None),
    ("WARNING", "About to fail on purpose", None),
    ("ERROR", "Response", {"status_code": 500, "route": "/fail"}),
    ("ERROR", "Session failed: RuntimeError: simulated failure", None),
]


def assert_failed(entries: list[dict[str, Any]]) -> None:
    """Assert a /fail session: its entries, the traceback, the close status error."""
    assert logged(entries) == FAILED
    assert entries[2]["logger"] == "web_app"
    traceback = entries[4]["exception"]
    assert 'web_app.py", line' in traceback and ", in fail\n" in traceback
    assert traceback.endswith("RuntimeError: simulated failure\n")
    assert (entries[-1]["status"], entries[-1]["level"]) == ("error", "ERROR")


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
    process, requests = split_process_session(sessions, server)
    # One session per request, and every response names its own.
    assert sorted(requests) == sorted(reply.session_id for reply in replies)
    routes = {"/hello": "/hello", "/fail": "/fail", "/": "/", "/missing": None}
    for reply in replies:
        entries = requests[reply.session_id]
        path = reply.path.partition("?")[0]
        metadata = dict(entries[0]["metadata"])
        assert re.fullmatch(r"127\.0\.0\.1:\d+", metadata.pop("client"))
        assert metadata == {
            "method": "GET",
            "path": path,
            "route": routes[path],
            "user_agent": USER_AGENT,
            "scheme": "http",
            "http_version": "1.1",
        }
    # aiohttp's access log is written once the request's session has closed: its records go
    # to the process session, one per request, each naming the request's session.
    records = access_records(process)
    assert sorted(records) == sorted(requests)
    for reply in replies:
        fields = records[reply.session_id]["custom_fields"]
        assert fields["first_request_line"] == f"GET {reply.path} HTTP/1.1"
        assert fields["response_status"] == reply.status
    assert process[-1]["status"] == "closed"

    *hellos, custom, hostile, failed, missing, index = replies
    assert custom.session_id == "req-custom-1"
    # "../x" is no safe id: the server chose its own instead.
    assert UUID_HEX.fullmatch(hostile.session_id)
    assert "../x" not in sessions
    for reply in [*hellos, failed, missing, index]:
        assert UUID_HEX.fullmatch(reply.session_id)

    for name, reply in zip([*names, "custom", "hostile"], [*hellos, custom, hostile], strict=True):
        assert (reply.status, json.loads(reply.body)) == (200, {"message": f"Hello, {name}!"})
        entries = requests[reply.session_id]
        assert logged(entries) == greeted(name)
        assert entries[2]["logger"] == "web_app"
        assert entries[2]["source"]["function"] == "hello"
        assert entries[-1]["status"] == "closed"

    assert failed.status == 500
    assert json.loads(failed.body) == {
        "error": "internal server error",
        "session_id": failed.session_id,
    }
    assert_failed(requests[failed.session_id])

    assert missing.status == 404
    entries = requests[missing.session_id]
    assert logged(entries) == [("WARNING", "Response", {"status_code": 404})]
    assert entries[-1]["status"] == "closed"

    assert index.status == 200
    assert logged(requests[index.session_id]) == [
        ("DEBUG", "Index served", None),
        ("INFO", "Response", {"status_code": 200, "route": "/"}),
    ]


async def test_web_app_keeps_200_concurrent_sessions_apart(tmp_path: Path) -> None:
    """200 concurrent requests, logging through current_session() and a stdlib logger with
    awaits between: every session holds exactly its own entries; /fail closes error with the
    traceback; the access log lands in the process session."""
    log = tmp_path / "sessions.jsonl"
    tokens = [f"tok{i:03d}" for i in range(180)]
    fails = [f"fail-{i:02d}" for i in range(20)]
    async with web_app(tmp_path, log) as server:
        # limit=0: all 200 requests in flight at once, each on its own connection.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            replies = await asyncio.wait_for(
                asyncio.gather(
                    *(get(http, server, f"/hello?name={token}") for token in tokens),
                    *(get(http, server, "/fail", request_id=fail) for fail in fails),
                ),
                60,
            )
        _, stderr = await stop(server, signal.SIGTERM)

    assert stderr == ""
    process, requests = split_process_session(sessions_in(log), server)
    assert len(requests) == 200
    for token, reply in zip(tokens, replies[: len(tokens)], strict=True):
        assert (reply.status, json.loads(reply.body)) == (200, {"message": f"Hello, {token}!"})
        entries = requests[reply.session_id]
        # Exactly its own entries: a record of another request would add or change a line.
        assert logged(entries) == greeted(token)
        assert entries[-1]["status"] == "closed"
    for fail, reply in zip(fails, replies[len(tokens) :], strict=True):
        assert (reply.status, reply.session_id) == (500, fail)
        assert_failed(requests[fail])
    assert sorted(access_records(process)) == sorted(requests)
    # The requests did interleave: sessions were open at the same time.
    spans = sorted((e[0]["timestamp"], e[-1]["timestamp"]) for e in requests.values())
    assert any(later_start < end for (_, end), (later_start, _) in itertools.pairwise(spans))


async def test_web_app_stops_on_sigint_and_logs_to_its_default_file(tmp_path: Path) -> None:
    """Without WEB_APP_LOG the sessions go to ./web_app_sessions.jsonl; SIGINT exits cleanly."""
    async with web_app(tmp_path, None) as server:
        async with aiohttp.ClientSession() as http:
            reply = await get(http, server, "/hello?name=Ada")
        rest, stderr = await stop(server, signal.SIGINT)

    assert stderr == ""
    # The request's 5 entries, and the process session's start, access record and close.
    assert rest == "session log web_app_sessions.jsonl: ok: 8 accepted; file: 8 delivered\n"
    assert files_in(tmp_path) == ["web_app_sessions.jsonl"]
    process, requests = split_process_session(
        sessions_in(tmp_path / "web_app_sessions.jsonl"), server
    )
    assert list(requests) == [reply.session_id]
    assert logged(requests[reply.session_id]) == greeted("Ada")
    assert list(access_records(process)) == [reply.session_id]


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
    assert rest == f"session log {log}: ok: 8 accepted; file: 8 delivered\n"
    process, requests = split_process_session(sessions_in(log), server)
    assert list(requests) == [reply.session_id]
    entries = requests[reply.session_id]
    assert logged(entries) == [
        ("INFO", "Working", {"ms": 1000}),
        ("INFO", "Done after 1000 ms", None),
        ("INFO", "Response", {"status_code": 200, "route": "/slow"}),
    ]
    assert entries[-1]["status"] == "closed"
    assert entries[-1]["duration_s"] >= 1.0
    # The access record of the request in flight was written before the logger closed.
    assert list(access_records(process)) == [reply.session_id]
