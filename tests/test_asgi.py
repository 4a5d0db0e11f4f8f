"""SessionMiddleware under a real uvicorn server (in-process, port 0) and real HTTP clients."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from async_session_logger import (
    AsyncSessionHandle,
    AsyncSessionLogger,
    Session,
    current_session,
    read_sessions,
)
from async_session_logger.asgi import SessionMiddleware, lifespan
from async_session_logger.stdlib import SessionLogHandler, install, process_session_id, uninstall

HOST = "127.0.0.1"
UUID_HEX = re.compile(r"[0-9a-f]{32}")
USER_AGENT = "test-asgi/1.0"
HANG_GUARD_S = 30

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


class Server(uvicorn.Server):
    """uvicorn's server, with an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start, then say so."""
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    @property
    def url(self) -> str:
        """Return the base URL the server listens on."""
        port = self.servers[0].sockets[0].getsockname()[1]
        return f"http://{HOST}:{port}"


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[Server]:
    """Serve ``app`` with uvicorn on 127.0.0.1, port 0, until the block ends."""
    # log_config=None: the test process's logging is left alone (uvicorn's loggers propagate).
    config = uvicorn.Config(app, host=HOST, port=0, log_config=None, ws="wsproto")
    server = Server(config)
    serving = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({serving, ready}, timeout=HANG_GUARD_S, return_when="FIRST_COMPLETED")
    ready.cancel()
    assert server.ready.is_set(), "uvicorn did not start"
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, HANG_GUARD_S)


def client(server: Server) -> httpx.AsyncClient:
    """Return an httpx client for ``server``."""
    return httpx.AsyncClient(
        base_url=server.url, headers={"User-Agent": USER_AGENT}, timeout=HANG_GUARD_S
    )


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Return the JSON Lines file the test's logger writes."""
    return tmp_path / "sessions.jsonl"


@pytest.fixture
def alog(log_path: Path, tmp_path: Path) -> AsyncSessionLogger:
    """Return a file logger, not started (the middleware's lifespan starts and closes it)."""
    return AsyncSessionLogger(
        method="file", path=log_path, dead_letter_path=tmp_path / "dead.jsonl"
    )


@pytest.fixture
def bridge(alog: AsyncSessionLogger) -> Iterator[SessionLogHandler]:
    """Route stdlib records into ``alog``'s sessions for the test, then detach."""
    handler = install(alog)
    try:
        yield handler
    finally:
        uninstall(handler)


def by_id(log_path: Path) -> dict[str, Session]:
    """Return the sessions of ``log_path`` by id (asserting the ids are unique)."""
    sessions = read_sessions(log_path)
    found = {s.session_id: s for s in sessions}
    assert len(found) == len(sessions)
    return found


def text_of(path: Path) -> str:
    """Return the text of ``path``."""
    return path.read_text(encoding="utf-8")


def messages(session: Session) -> list[str]:
    """Return the messages of a session's log entries."""
    return [e["message"] for e in session.entries]


def response_entry(session: Session) -> dict[str, Any]:
    """Return the session's last log entry, checking it is the middleware's Response."""
    last = session.entries[-1]
    assert last["message"] == "Response"
    return last


# -- a pure ASGI app: no Starlette, no lifespan support ----------------------------------------
class TinyApp:
    """A hand-written ASGI app: routes by path, raises on the lifespan scope (unsupported)."""

    def __init__(self) -> None:
        self.lifespan_calls = 0
        self.arrived = 0
        self.both_here = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Serve one request."""
        if scope["type"] != "http":
            self.lifespan_calls += 1
            raise RuntimeError("this app speaks HTTP only")
        path = scope["path"]
        if path == "/boom":
            logging.getLogger("tiny").warning("about to raise")
            raise RuntimeError("boom before the response")
        if path == "/hold":
            # Both requests are inside their sessions at once before either answers.
            self.arrived += 1
            if self.arrived == 2:
                self.both_here.set()
            await asyncio.wait_for(self.both_here.wait(), HANG_GUARD_S)
        session = current_session()
        assert isinstance(session, AsyncSessionHandle)
        await session.info("handled", {"path": path})
        status = 503 if path == "/unavailable" else 200
        body = session.session_id.encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def test_asgi_module_imports_no_framework() -> None:
    """Importing async_session_logger.asgi imports neither Starlette nor FastAPI."""
    code = (
        "import sys, async_session_logger.asgi\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi'))\n"
        "print(bad)\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(child.communicate(), HANG_GUARD_S)
    assert (child.returncode, stdout) == (0, b"[]\n")


async def test_pure_asgi_app_gets_one_session_per_request(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """A hand-written ASGI app: session per request, metadata, X-Session-ID, Response entry."""
    app = TinyApp()
    middleware = SessionMiddleware(app, alog, metadata=lambda scope: {"tenant": "t1"})
    async with served(middleware) as server, client(server) as http:
        assert not alog.closed  # the middleware started it although the app has no lifespan
        chosen = await http.get("/ok?token=secret-value", headers={"X-Request-ID": "req-1:a.b_c"})
        fresh = await http.get("/ok")
    assert alog.closed  # and closed it after the server's shutdown
    assert app.lifespan_calls == 1

    assert chosen.headers["X-Session-ID"] == "req-1:a.b_c" == chosen.text
    assert UUID_HEX.fullmatch(fresh.headers["X-Session-ID"])
    assert fresh.text == fresh.headers["X-Session-ID"]
    sessions = by_id(log_path)
    assert sorted(sessions) == sorted([chosen.text, fresh.text])
    session = sessions[chosen.text]
    port = session.metadata["client"].rpartition(":")[2]
    assert session.metadata == {
        "method": "GET",
        "path": "/ok",
        "client": f"127.0.0.1:{port}",
        "user_agent": USER_AGENT,
        "scheme": "http",
        "http_version": "1.1",
        "tenant": "t1",
    }
    assert "secret-value" not in text_of(log_path)  # no query string by default
    assert messages(session) == ["handled", "Response"]
    assert response_entry(session)["custom_fields"] == {
        "status_code": 200,
        "response_bytes": len(chosen.text),
    }
    assert session.status == "closed"


async def test_hostile_request_ids_get_fresh_uuids(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """An X-Request-ID that is no safe id (path parts, too long, control chars) is replaced."""
    hostile = [
        "../x",
        "a/b",
        "a\\b",
        "a+b",
        "#x",
        ".",
        "..",
        "x" * 200,
        "a\tb",
        "a b",
        "é".encode("latin-1"),
        "",
    ]
    async with served(SessionMiddleware(TinyApp(), alog)) as server, client(server) as http:
        replies = [await http.get("/ok", headers={"X-Request-ID": value}) for value in hostile]
    ids = [reply.headers["X-Session-ID"] for reply in replies]
    assert all(UUID_HEX.fullmatch(sid) for sid in ids), ids
    assert all(uuid.UUID(hex=sid).version == 4 for sid in ids), ids
    assert sorted(by_id(log_path)) == sorted(ids)


def test_fresh_ids_are_uuid4_hex() -> None:
    """A fresh session id is what ``uuid.uuid4().hex`` gives: version 4, the RFC 4122
    variant, 32 lowercase hex digits; and no two alike."""
    from async_session_logger._web import fresh_id

    ids = [fresh_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for sid in ids:
        parsed = uuid.UUID(hex=sid)
        assert (parsed.hex, parsed.version, parsed.variant) == (sid, 4, uuid.RFC_4122)
    # Every other bit is random: over 10,000 ids each of them is set at least once.
    merged = 0
    for sid in ids:
        merged |= int(sid, 16)
    assert merged | (0xF000 << 64) | (0xC000 << 48) == (1 << 128) - 1


async def test_same_request_id_on_concurrent_requests_makes_two_sessions(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """Two requests open at once with one X-Request-ID: the second gets a fresh id."""
    async with served(SessionMiddleware(TinyApp(), alog)) as server, client(server) as http:
        first, second = await asyncio.gather(
            http.get("/hold", headers={"X-Request-ID": "same-id"}),
            http.get("/hold", headers={"X-Request-ID": "same-id"}),
        )
    ids = sorted([first.headers["X-Session-ID"], second.headers["X-Session-ID"]])
    assert ids[1] == "same-id"
    assert UUID_HEX.fullmatch(ids[0])
    sessions = by_id(log_path)
    assert sorted(sessions) == ids
    assert all(
        s.status == "closed" and messages(s) == ["handled", "Response"] for s in sessions.values()
    )


async def test_exception_before_response_is_reraised_and_closes_error(
    alog: AsyncSessionLogger, log_path: Path, bridge: SessionLogHandler
) -> None:
    """The app raising before it answered: the server sends 500, the session closes error."""
    async with served(SessionMiddleware(TinyApp(), alog)) as server, client(server) as http:
        reply = await http.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert reply.status_code == 500  # uvicorn's own answer: the middleware re-raised
    assert "X-Session-ID" not in reply.headers  # no response went through the middleware
    sessions = by_id(log_path)
    session = sessions["boom-1"]
    assert messages(session) == [
        "about to raise",
        "Session failed: RuntimeError: boom before the response",
    ]
    failure = session.entries[-1]
    assert failure["level"] == "ERROR"
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert failure["exception"].endswith("RuntimeError: boom before the response\n")
    assert session.status == "error"
    # The server logs the exception after the session closed: it lands in the process session.
    process = sessions[process_session_id()]
    assert "Exception in ASGI application\n" in messages(process)


async def test_5xx_without_exception_closes_error(alog: AsyncSessionLogger, log_path: Path) -> None:
    """A 5xx answered without an exception closes the session with status error."""
    async with served(SessionMiddleware(TinyApp(), alog)) as server, client(server) as http:
        reply = await http.get("/unavailable")
    assert reply.status_code == 503
    session = by_id(log_path)[reply.headers["X-Session-ID"]]
    response = response_entry(session)
    assert (response["level"], response["custom_fields"]["status_code"]) == ("ERROR", 503)
    assert session.status == "error"


async def test_logger_that_refuses_does_not_fail_requests(alog: AsyncSessionLogger) -> None:
    """A closed logger: requests are served all the same, the refusals are counted."""
    await alog.start()
    await alog.aclose()
    app_without_session = SessionMiddleware(_answer_plain, alog, lifespan=False)
    async with served(app_without_session) as server, client(server) as http:
        reply = await http.get("/ok")
    assert reply.status_code == 200
    assert reply.text == "no session"
    assert "X-Session-ID" not in reply.headers
    assert app_without_session.logging_errors == 1
    assert type(app_without_session.last_logging_error).__name__ == "LoggerClosedError"


async def _answer_plain(scope: Scope, receive: Any, send: Any) -> None:
    """Answer 200 saying whether a session is current (a pure ASGI app)."""
    if scope["type"] != "http":
        return
    text = "no session" if current_session() is None else "session"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text.encode()})


# -- Starlette: streaming, disconnects, websockets, route templates ----------------------------
def starlette_app(alog: AsyncSessionLogger) -> Starlette:
    """Return a Starlette app with SessionMiddleware installed the Starlette way."""

    async def item(request: Request) -> Response:
        return PlainTextResponse(str(request.path_params["item_id"]))

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk {i}\n".encode()
                # After the headers and this chunk went out: the session is still open.
                session = current_session()
                assert session is not None
                await session.info(f"sent chunk {i}")

        return StreamingResponse(chunks(), media_type="text/plain")

    async def endless(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(HANG_GUARD_S * 100):  # bounded: 30 s at most
                yield b"x" * 1024
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def background(request: Request) -> Response:
        async def work() -> None:
            session = current_session()
            assert session is not None
            await session.info("background work")

        return PlainTextResponse("accepted", background=BackgroundTask(work))

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:  # WebSocketDisconnect ends it, raised out of the app
            text = await websocket.receive_text()
            session = current_session()
            assert session is not None
            await session.info("echo", {"text": text})
            await websocket.send_text(text)

    return Starlette(
        routes=[
            Route("/items/{item_id:int}", item),
            Route("/stream", stream),
            Route("/endless", endless),
            Route("/background", background),
            WebSocketRoute("/ws", echo),
        ],
        middleware=[Middleware(SessionMiddleware, logger=alog)],
    )


async def test_starlette_route_template_in_response_entry(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """The Response entry holds the matched route's template; unmatched paths have none."""
    async with served(starlette_app(alog)) as server, client(server) as http:
        found = await http.get("/items/42")
        missing = await http.get("/nowhere")
    sessions = by_id(log_path)
    assert found.text == "42"
    fields = response_entry(sessions[found.headers["X-Session-ID"]])["custom_fields"]
    assert fields == {"status_code": 200, "route": "/items/{item_id}", "response_bytes": 2}
    response = response_entry(sessions[missing.headers["X-Session-ID"]])
    assert response["level"] == "WARNING"
    assert response["custom_fields"]["status_code"] == 404
    assert "route" not in response["custom_fields"]


async def test_streaming_response_closes_after_last_chunk(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """A streaming response's session is open between chunks and closes after the last."""
    async with served(starlette_app(alog)) as server, client(server) as http:
        reply = await http.get("/stream")
    assert reply.text == "chunk 0\nchunk 1\nchunk 2\n"
    session = by_id(log_path)[reply.headers["X-Session-ID"]]
    assert messages(session) == ["sent chunk 0", "sent chunk 1", "sent chunk 2", "Response"]
    assert session.close is not None
    last_chunk = session.entries[2]
    assert last_chunk["seq"] < session.close["seq"]
    assert response_entry(session)["custom_fields"]["response_bytes"] == len(reply.content)
    assert session.status == "closed"


async def test_background_task_logs_into_the_request_session(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """A Starlette background task runs before the app returns: its entries are the request's."""
    async with served(starlette_app(alog)) as server, client(server) as http:
        reply = await http.get("/background")
    assert reply.text == "accepted"
    session = by_id(log_path)[reply.headers["X-Session-ID"]]
    assert messages(session) == ["background work", "Response"]
    assert session.status == "closed"


async def test_client_leaving_mid_stream_closes_interrupted(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """A client that goes away before the body ended: the session closes interrupted."""
    async with (
        served(starlette_app(alog)) as server,
        client(server) as http,
        http.stream("GET", "/endless") as reply,
    ):
        session_id = reply.headers["X-Session-ID"]
        async for _ in reply.aiter_bytes():
            break  # one chunk, then hang up
    session = by_id(log_path)[session_id]
    assert response_entry(session)["custom_fields"]["status_code"] == 200
    assert session.status == "interrupted"


async def test_websocket_connection_is_one_session(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """A websocket connection: one session, its id in the handshake's X-Session-ID."""
    handshake: list[str] = []

    async def on_request_end(
        _session: aiohttp.ClientSession, _ctx: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        handshake.append(params.response.headers.get("X-Session-ID", ""))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    async with (
        served(starlette_app(alog)) as server,
        aiohttp.ClientSession(trace_configs=[trace]) as http,
        http.ws_connect(f"{server.url}/ws", headers={"X-Request-ID": "ws-1"}) as ws,
    ):
        replies = []
        for text in ("one", "two"):
            await ws.send_str(text)
            replies.append(await ws.receive_str())
    assert replies == ["one", "two"]
    assert handshake == ["ws-1"]
    session = by_id(log_path)["ws-1"]
    assert "method" not in session.metadata
    assert (session.metadata["path"], session.metadata["scheme"]) == ("/ws", "ws")
    assert messages(session) == ["echo", "echo", "Websocket closed"]
    assert [e["custom_fields"] for e in session.entries[:2]] == [{"text": "one"}, {"text": "two"}]
    closing = session.entries[-1]
    assert closing["custom_fields"] == {"close_code": 1000, "closed_by": "client", "route": "/ws"}
    # The client closing the socket ends a websocket session normally, though Starlette
    # raised WebSocketDisconnect out of the app.
    assert session.status == "closed"


# -- FastAPI: def routes, access log, lifespan helper ------------------------------------------
async def test_fastapi_def_route_sees_current_session(
    alog: AsyncSessionLogger, log_path: Path, bridge: SessionLogHandler
) -> None:
    """A FastAPI ``def`` route (run in a worker thread) sees the request's session."""
    api = FastAPI()

    @api.get("/users/{user_id}")
    def user(user_id: int) -> dict[str, Any]:
        handle = current_session()
        logging.getLogger("routes").info("user %d looked up", user_id)
        return {"session_id": handle.session_id if handle else None}

    api.add_middleware(SessionMiddleware, logger=alog)
    async with served(api) as server, client(server) as http:
        reply = await http.get("/users/7")
    session_id = reply.headers["X-Session-ID"]
    assert reply.json() == {"session_id": session_id}
    session = by_id(log_path)[session_id]
    stdlib = session.entries[0]
    assert (stdlib["message"], stdlib["logger"]) == ("user 7 looked up", "routes")
    assert response_entry(session)["custom_fields"]["route"] == "/users/{user_id}"


async def test_access_log_lands_in_the_request_session(
    alog: AsyncSessionLogger, log_path: Path, bridge: SessionLogHandler
) -> None:
    """uvicorn logs a request's access line inside the app's send: it is in that session."""
    async with served(SessionMiddleware(TinyApp(), alog)) as server, client(server) as http:
        await http.get("/ok?n=access-token-1", headers={"X-Request-ID": "acc-1"})
    sessions = by_id(log_path)
    access = [e for e in sessions["acc-1"].entries if e.get("logger") == "uvicorn.access"]
    assert [e["message"] for e in access] == [
        f'127.0.0.1:{reply_port(sessions["acc-1"])} - "GET /ok?n=access-token-1 HTTP/1.1" 200'
    ]
    # Outside any request (start-up, shutdown) uvicorn logs into the process session.
    process = sessions[process_session_id()]
    assert "Application startup complete." in messages(process)
    assert not [e for e in process.entries if e.get("logger") == "uvicorn.access"]


def reply_port(session: Session) -> str:
    """Return the client port of a session's start metadata."""
    return str(session.metadata["client"].rpartition(":")[2])


async def test_lifespan_opens_logger_before_app_startup_and_closes_after_shutdown(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """The app's own start-up and shutdown run with the logger open."""

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        async with alog.session("app-startup") as session:
            await session.info("starting")
        yield
        async with alog.session("app-shutdown") as session:
            await session.info("stopping")

    app = Starlette(lifespan=app_lifespan)
    async with served(SessionMiddleware(app, alog)) as server, client(server) as http:
        await http.get("/")
    assert alog.closed
    sessions = by_id(log_path)
    assert messages(sessions["app-startup"]) == ["starting"]
    assert messages(sessions["app-shutdown"]) == ["stopping"]


CANNOT_START = """
import asyncio, uvicorn
from async_session_logger import AsyncSessionLogger
from async_session_logger.asgi import SessionMiddleware

async def app(scope, receive, send):
    raise RuntimeError("no lifespan here")

async def main():
    alog = AsyncSessionLogger(method="file", path="never.jsonl")
    await alog.start()
    await alog.aclose()  # a closed logger never starts again
    config = uvicorn.Config(SessionMiddleware(app, alog), host="127.0.0.1", port=0)
    await uvicorn.Server(config).serve()

asyncio.run(main())
"""


async def test_logger_that_cannot_start_fails_server_startup(tmp_path: Path) -> None:
    """A logger that cannot start fails uvicorn's start-up (exit 3), saying why."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CANNOT_START, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(child.communicate(), HANG_GUARD_S)
    assert child.returncode == 3  # uvicorn's STARTUP_FAILURE
    lines = stderr.decode().splitlines()
    assert "ERROR:    session logger: LoggerClosedError('the logger is closed')" in lines
    assert "ERROR:    Application startup failed. Exiting." in lines


async def test_lifespan_helper_opens_and_closes_logger(
    alog: AsyncSessionLogger, log_path: Path
) -> None:
    """``FastAPI(lifespan=lifespan(alog, app_lifespan))`` wraps the app's own lifespan."""
    seen: list[bool] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        seen.append(alog.closed)
        yield {"greeting": "hi"}
        seen.append(alog.closed)

    api = FastAPI(lifespan=lifespan(alog, app_lifespan))

    @api.get("/state")
    async def state(request: Request) -> JSONResponse:
        return JSONResponse({"greeting": request.state.greeting})

    app = SessionMiddleware(api, alog, lifespan=False)
    async with served(app) as server, client(server) as http:
        reply = await http.get("/state")
        assert not alog.closed
    assert reply.json() == {"greeting": "hi"}
    assert seen == [False, False]
    assert alog.closed
    assert by_id(log_path)[reply.headers["X-Session-ID"]].status == "closed"
