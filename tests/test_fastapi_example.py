"""Run examples/fastapi_app.py under uvicorn as a real process; query it with httpx and aiohttp."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from async_session_logger import Session, read_sessions

from .example_server import Server, example_server, stop

ROOT = Path(__file__).parents[1]
FASTAPI_APP = ROOT / "examples" / "fastapi_app.py"
UUID_HEX = re.compile(r"[0-9a-f]{32}")
PROCESS_ID = re.compile(r"process-.+-\d+")
HANG_GUARD_S = 30


def fastapi_app(cwd: Path, log: Path | None) -> AbstractAsyncContextManager[Server]:
    """Start fastapi_app.py on port 0 in ``cwd``, logging to ``log`` or its default file."""
    return example_server(FASTAPI_APP, "FASTAPI_APP_LOG", cwd, log)


def sessions_by_id(log: Path) -> dict[str, Session]:
    """Return the sessions of ``log`` by id, asserting each is whole and closed."""
    sessions = read_sessions(log)
    found = {s.session_id: s for s in sessions}
    assert len(found) == len(sessions)
    for session in sessions:
        assert session.start is not None and session.close is not None
        seqs = [session.start["seq"], *(e["seq"] for e in session.entries), session.close["seq"]]
        assert seqs == list(range(len(seqs)))
        assert session.close["entries"] == len(session.entries)
    return found


def app_entries(session: Session) -> list[dict[str, Any]]:
    """Return a session's entries except the middleware's last one (Response)."""
    *logged, response = session.entries
    assert response["message"] == "Response"
    return logged


def response_fields(session: Session) -> dict[str, Any]:
    """Return the custom fields of the session's Response entry."""
    fields: dict[str, Any] = session.entries[-1]["custom_fields"]
    return fields


def access_lines(session: Session) -> list[str]:
    """Return the messages of the uvicorn.access entries of a session."""
    return [e["message"] for e in session.entries if e.get("logger") == "uvicorn.access"]


def most_open_at_once(sessions: list[Session]) -> int:
    """Return how many of ``sessions`` were open at the same time at most."""
    events: list[tuple[datetime, int]] = []
    for session in sessions:
        assert session.started_at is not None and session.closed_at is not None
        events += [(session.started_at, 1), (session.closed_at, -1)]
    most = current = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        current += step
        most = max(most, current)
    return most


async def test_fastapi_example_keeps_200_concurrent_requests_apart(tmp_path: Path) -> None:
    """200 concurrent requests: each session holds its own entries only, /fail closes error."""
    log = tmp_path / "sessions.jsonl"
    hello_tokens = [f"tok{i:03d}x" for i in range(160)]
    fail_ids = [f"fail-{i:02d}" for i in range(20)]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with fastapi_app(tmp_path, log) as server:
        async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60) as http:
            requests = [
                *(
                    # Half choose their session id, half let the server pick one.
                    http.get(
                        f"/hello?name={token}", headers={"X-Request-ID": token} if i % 2 else {}
                    )
                    for i, token in enumerate(hello_tokens)
                ),
                *(http.get("/fail", headers={"X-Request-ID": sid}) for sid in fail_ids),
                *(http.get("/sync") for _ in range(10)),
                *(http.get("/stream") for _ in range(10)),
            ]
            assert len(requests) == 200
            replies = await asyncio.gather(*requests)
        _, stderr = await stop(server, signal.SIGTERM)

    # uvicorn printed each /fail traceback; the stdlib bridge never failed to log a record.
    assert stderr.count("RuntimeError: simulated failure") == len(fail_ids)
    assert "could not be logged" not in stderr
    sessions = sessions_by_id(log)
    ids = [reply.headers["X-Session-ID"] for reply in replies]
    assert len(set(ids)) == 200
    (process_id,) = set(sessions) - set(ids)  # one session per request, plus the process's
    assert PROCESS_ID.fullmatch(process_id)
    requests_only = [sessions[sid] for sid in ids]
    # The awaits inside the routes let requests run interleaved.
    assert most_open_at_once(requests_only) > 1

    hellos, fails = replies[:160], replies[160:180]
    syncs, streams = replies[180:190], replies[190:]
    for i, (token, reply) in enumerate(zip(hello_tokens, hellos, strict=True)):
        session_id = reply.headers["X-Session-ID"]
        assert session_id == token if i % 2 else UUID_HEX.fullmatch(session_id)
        assert reply.json() == {"message": f"Hello, {token}!", "session_id": session_id}
        session = sessions[session_id]
        assert session.metadata["path"] == "/hello"
        entries = app_entries(session)
        # Through the handle, through stdlib logging, and uvicorn's access line: each one
        # carries this request's token.
        assert [(e["message"], e.get("logger")) for e in entries] == [
            ("Greeting", None),
            (f"Greeted {token}", "fastapi_app"),
            (entries[2]["message"], "uvicorn.access"),
        ]
        assert entries[0]["custom_fields"] == {"name": token, "greeting": f"Hello, {token}!"}
        assert entries[2]["message"].endswith(f'"GET /hello?name={token} HTTP/1.1" 200')
        assert response_fields(session)["status_code"] == 200
        assert response_fields(session)["route"] == "/hello"
        assert session.status == "closed"
    # No cross-talk: a token appears in its own session and nowhere else.
    text = {sid: json.dumps([s.start, *s.entries, s.close]) for sid, s in sessions.items()}
    for token, reply in zip(hello_tokens, hellos, strict=True):
        assert [sid for sid, body in text.items() if token in body] == [
            reply.headers["X-Session-ID"]
        ]

    for session_id, reply in zip(fail_ids, fails, strict=True):
        assert (reply.status_code, reply.headers["X-Session-ID"]) == (500, session_id)
        session = sessions[session_id]
        *entries, response, failure = session.entries
        assert [(e["level"], e["message"], e.get("logger")) for e in entries] == [
            ("WARNING", "About to fail on purpose", "fastapi_app"),
            ("INFO", entries[1]["message"], "uvicorn.access"),
        ]
        assert entries[1]["message"].endswith('"GET /fail HTTP/1.1" 500')
        assert (response["level"], response["custom_fields"]["status_code"]) == ("ERROR", 500)
        assert failure["message"] == "Session failed: RuntimeError: simulated failure"
        assert failure["exception"].startswith("Traceback (most recent call last):")
        assert 'in fail\n    raise RuntimeError("simulated failure")' in failure["exception"]
        assert session.status == "error"

    for reply in syncs:
        session = sessions[reply.json()["session_id"]]
        assert session.session_id == reply.headers["X-Session-ID"]
        (work, access) = app_entries(session)
        assert work["message"].startswith("Sync work in ")
        assert work["message"] != "Sync work in MainThread"  # a worker thread saw the session
        assert access["message"].endswith('"GET /sync HTTP/1.1" 200')

    for reply in streams:
        assert reply.text == "chunk 0\nchunk 1\nchunk 2\n"
        session = sessions[reply.headers["X-Session-ID"]]
        messages = [e["message"] for e in app_entries(session)]
        assert messages[1:] == ["Sent chunk 0", "Sent chunk 1", "Sent chunk 2"]
        assert response_fields(session)["response_bytes"] == len(reply.content)

    # Records outside any request (start-up, shutdown, the traceback uvicorn logs after the
    # request's session closed) go to the process session; access lines never do.
    process = sessions[process_id]
    logged = [e["message"] for e in process.entries]
    assert "Application startup complete." in logged
    assert logged.count("Exception in ASGI application\n") == len(fail_ids)
    assert not access_lines(process)


async def test_fastapi_example_websocket_and_sigint_with_default_log(tmp_path: Path) -> None:
    """A websocket connection is one session; Ctrl-C exits 0, every entry in the default file."""
    async with fastapi_app(tmp_path, None) as server:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{server.base}/ws", headers={"X-Request-ID": "ws-1"}) as ws,
        ):
            echoes = []
            for text in ("one", "two"):
                await ws.send_str(text)
                echoes.append(await ws.receive_str())
        _, stderr = await stop(server, signal.SIGINT)

    assert echoes == ["one", "two"]
    assert "could not be logged" not in stderr
    sessions = sessions_by_id(tmp_path / "fastapi_sessions.jsonl")
    session = sessions["ws-1"]
    assert session.metadata["path"] == "/ws"
    assert [e["message"] for e in session.entries] == [
        session.entries[0]["message"],  # uvicorn's "WebSocket /ws" [accepted] line
        "Echo one",
        "Echo two",
        "Client left with code 1000",
        "Websocket closed",
    ]
    assert '"WebSocket /ws" [accepted]' in session.entries[0]["message"]
    assert session.entries[-1]["custom_fields"] == {
        "close_code": 1000,
        "closed_by": "client",
        "route": "/ws",
    }
    assert session.status == "closed"
