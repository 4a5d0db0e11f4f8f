"""async_session_logger.aiohttp on a real aiohttp server (127.0.0.1, port 0) with a real client."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from async_session_logger import (
    AsyncSessionHandle,
    AsyncSessionLogger,
    Session,
    current_session,
    read_sessions,
)
from async_session_logger.aiohttp import logger_context, session_middleware, setup
from async_session_logger.stdlib import SessionLogHandler, install, uninstall

UUID_HEX = re.compile(r"[0-9a-f]{32}")
USER_AGENT = "test-aiohttp-middleware/1.0"


def handle() -> AsyncSessionHandle:
    """Return the current session, which the middleware made current for the request."""
    session = current_session()
    assert isinstance(session, AsyncSessionHandle)
    return session


class Served:
    """A running app: its base URL, its logger and the log file the sessions go to."""

    def __init__(self, url: str, alog: AsyncSessionLogger, log: Path) -> None:
        self.url = url
        self.alog = alog
        self.log = log

    def sessions(self) -> dict[str, Session]:
        """Read the sessions back from the log file, by id."""
        return {s.session_id: s for s in read_sessions(self.log)}


@asynccontextmanager
async def served(
    tmp_path: Path,
    routes: Callable[[web.Application], None],
    install: Callable[[web.Application, AsyncSessionLogger], None] = setup,
    **runner_options: Any,
) -> AsyncIterator[Served]:
    """Serve an app built by ``routes`` with a file logger; at exit stop it (draining the log)."""
    log = tmp_path / "sessions.jsonl"
    alog = AsyncSessionLogger(method="file", path=str(log), dead_letter_path=None)
    app = web.Application()
    install(app, alog)
    routes(app)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield Served(f"http://127.0.0.1:{port}", alog, log)
    finally:
        await runner.cleanup()
        await alog.aclose()  # already closed by the cleanup context, unless the test chose so


def logged(session: Session) -> list[tuple[str, str, Any]]:
    """Return (level, message, custom_fields) of a session's log entries."""
    return [(e["level"], e["message"], e.get("custom_fields")) for e in session.entries]


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str | None, str]:
    """GET ``url``; return the status, the X-Session-ID header and the body."""
    async with http.get(url, headers={"User-Agent": USER_AGENT, **(headers or {})}) as response:
        return response.status, response.headers.get("X-Session-ID"), await response.text()


async def test_session_per_request_with_metadata_route_and_header(tmp_path: Path) -> None:
    """A request's session has its metadata (route template included), the handler's and its
    tasks' entries, the Response entry, a close entry; X-Session-ID names it."""

    async def audit() -> None:
        await handle().debug("From a task")

    async def user(request: web.Request) -> web.Response:
        await handle().info("Looking up", {"id": request.match_info["id"]})
        # A task created in the handler logs into the request's session too.
        await asyncio.create_task(audit())
        return web.json_response({"id": request.match_info["id"]})

    def routes(app: web.Application) -> None:
        app.router.add_get("/users/{id}", user)

    async with served(tmp_path, routes) as server, aiohttp.ClientSession() as http:
        status, session_id, body = await fetch(http, f"{server.url}/users/42?x=1")

    assert (status, body) == (200, '{"id": "42"}')
    assert session_id is not None and UUID_HEX.fullmatch(session_id)
    session = server.sessions()[session_id]
    client = session.metadata.pop("client")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", client)  # host:port, as the ASGI middleware's
    assert session.metadata == {
        "method": "GET",
        "path": "/users/42",
        "route": "/users/{id}",
        "user_agent": USER_AGENT,
        "scheme": "http",
        "http_version": "1.1",
    }
    assert logged(session) == [
        ("INFO", "Looking up", {"id": "42"}),
        ("DEBUG", "From a task", None),
        ("INFO", "Response", {"status_code": 200, "route": "/users/{id}"}),
    ]
    assert session.status == "closed"


async def test_request_id_header_is_used_only_when_safe(tmp_path: Path) -> None:
    """A safe X-Request-ID becomes the session id; hostile or oversized ones get a uuid."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def routes(app: web.Application) -> None:
        app.router.add_get("/", ok)

    hostile = ["../x", "a/b", "a+b", "#", ".", "..", "x y", "x\ty", "é", "x" * 129, ""]
    async with served(tmp_path, routes) as server, aiohttp.ClientSession() as http:
        safe = await fetch(http, f"{server.url}/", {"X-Request-ID": "req-1.a_b:c"})
        refused = [await fetch(http, f"{server.url}/", {"X-Request-ID": h}) for h in hostile]

    assert safe[1] == "req-1.a_b:c"
    ids = [session_id or "(none)" for _, session_id, _ in refused]
    assert all(UUID_HEX.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(hostile)
    assert sorted(server.sessions()) == sorted(["req-1.a_b:c", *ids])


async def test_duplicate_concurrent_request_ids_get_two_sessions(tmp_path: Path) -> None:
    """Two requests in flight with one X-Request-ID: the second gets a fresh id, both whole."""
    inside = 0
    both_inside = asyncio.Event()

    async def wait(request: web.Request) -> web.Response:
        nonlocal inside
        inside += 1
        if inside == 2:
            both_inside.set()
        await both_inside.wait()
        await handle().info("Both in flight", {"me": request.query["me"]})
        return web.Response(text=handle().session_id)

    def routes(app: web.Application) -> None:
        app.router.add_get("/wait", wait)

    async with served(tmp_path, routes) as server, aiohttp.ClientSession() as http:
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(fetch(http, f"{server.url}/wait?me={me}", {"X-Request-ID": "dup"}) for me in "ab")
            ),
            30,
        )

    ids = [session_id for _, session_id, _ in replies]
    assert [body for _, _, body in replies] == ids
    assert "dup" in ids and len(set(ids)) == 2
    sessions = server.sessions()
    for me, (_, session_id, _) in zip("ab", replies, strict=True):
        assert session_id is not None
        assert logged(sessions[session_id])[0] == ("INFO", "Both in flight", {"me": me})
        assert sessions[session_id].status == "closed"


async def test_answers_close_by_status_and_failures_with_their_traceback(tmp_path: Path) -> None:
    """5xx without exception closes error; a raised 404 closes closed; aiohttp's own 404 has
    no route; an exception answers a JSON 500 with the session id and closes error."""

    async def unavailable(request: web.Request) -> web.Response:
        await handle().info("Backend down")
        return web.Response(status=503, text="later")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no such thing")

    async def boom(request: web.Request) -> web.Response:
        await handle().warning("About to fail")
        raise RuntimeError("simulated failure")

    def routes(app: web.Application) -> None:
        app.router.add_get("/unavailable", unavailable)
        app.router.add_get("/missing", missing)
        app.router.add_get("/boom", boom)

    async with served(tmp_path, routes) as server, aiohttp.ClientSession() as http:
        unavailable_reply = await fetch(http, f"{server.url}/unavailable")
        missing_reply = await fetch(http, f"{server.url}/missing")
        nowhere_reply = await fetch(http, f"{server.url}/nowhere")
        boom_reply = await fetch(http, f"{server.url}/boom")
    sessions = server.sessions()

    status, session_id, _ = unavailable_reply
    assert status == 503 and session_id is not None
    session = sessions[session_id]
    assert logged(session) == [
        ("INFO", "Backend down", None),
        ("ERROR", "Response", {"status_code": 503, "route": "/unavailable"}),
    ]
    assert session.status == "error"

    status, session_id, body = missing_reply
    assert (status, body) == (404, "no such thing") and session_id is not None
    session = sessions[session_id]
    assert logged(session) == [("WARNING", "Response", {"status_code": 404, "route": "/missing"})]
    assert session.status == "closed"

    status, session_id, _ = nowhere_reply
    assert status == 404 and session_id is not None
    session = sessions[session_id]
    assert session.metadata["route"] is None
    assert logged(session) == [("WARNING", "Response", {"status_code": 404})]
    assert session.status == "closed"

    status, session_id, body = boom_reply
    assert status == 500 and session_id is not None
    assert body == f'{{"error": "internal server error", "session_id": "{session_id}"}}'
    session = sessions[session_id]
    assert logged(session) == [
        ("WARNING", "About to fail", None),
        ("ERROR", "Response", {"status_code": 500, "route": "/boom"}),
        ("ERROR", "Session failed: RuntimeError: simulated failure", None),
    ]
    assert "in boom" in session.entries[-1]["exception"]
    assert session.entries[-1]["exception"].endswith("RuntimeError: simulated failure\n")
    assert (session.status, session.close is not None and session.close["level"]) == (
        "error",
        "ERROR",
    )


async def test_streaming_response_closes_when_the_body_ends(tmp_path: Path) -> None:
    """A streamed response carries X-Session-ID; its session is open while the body streams,
    and an entry logged between chunks precedes the Response and close entries."""
    first_chunk_read = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        await handle().info("First chunk sent")
        await first_chunk_read.wait()
        await handle().info("Between chunks")
        await response.write(b"second\n")
        await response.write_eof()
        return response

    def routes(app: web.Application) -> None:
        app.router.add_get("/stream", stream)

    async with (
        served(tmp_path, routes) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/stream") as response,
    ):
        session_id = response.headers["X-Session-ID"]
        assert await asyncio.wait_for(response.content.readline(), 30) == b"first\n"
        # Headers and a chunk are out, the body is not over: the session is still open.
        assert server.alog.is_open(session_id)
        first_chunk_read.set()
        assert await asyncio.wait_for(response.content.read(), 30) == b"second\n"

    session = server.sessions()[session_id]
    assert logged(session) == [
        ("INFO", "First chunk sent", None),
        ("INFO", "Between chunks", None),
        ("INFO", "Response", {"status_code": 200, "route": "/stream"}),
    ]
    assert session.status == "closed"


async def test_failure_after_the_response_began_closes_error(tmp_path: Path) -> None:
    """A handler that raises mid-stream closes its session error with the traceback; no 500
    can follow the streamed headers, so the client sees the body cut off; aiohttp's record of
    it lands in the process session."""

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial\n")
        raise RuntimeError("lost the backend mid-stream")

    def routes(app: web.Application) -> None:
        app.router.add_get("/broken", broken)

    bridges: list[SessionLogHandler] = []
    root_level = logging.getLogger().level  # install() lowers it to INFO: put it back after

    def with_bridge(app: web.Application, alog: AsyncSessionLogger) -> None:
        setup(app, alog)
        bridges.append(install(alog))

    try:
        async with (
            served(tmp_path, routes, with_bridge) as server,
            aiohttp.ClientSession() as http,
            http.get(f"{server.url}/broken") as response,
        ):
            session_id = response.headers["X-Session-ID"]
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), 30)
    finally:
        for bridge in bridges:
            uninstall(bridge)
        logging.getLogger().setLevel(root_level)

    sessions = server.sessions()
    session = sessions.pop(session_id)
    assert logged(session) == [
        ("ERROR", "Session failed: RuntimeError: lost the backend mid-stream", None),
    ]
    assert "in broken" in session.entries[0]["exception"]
    assert session.status == "error"
    # aiohttp's own record of the failure is written after the middleware returned: it goes
    # to the process session, as docs/aiohttp.md says.
    [process] = sessions.values()
    assert process.metadata["kind"] == "process"
    assert [(e["logger"], e["message"]) for e in process.entries] == [
        ("aiohttp.server", "Error handling request from 127.0.0.1")
    ]


async def test_websocket_connection_is_one_session(tmp_path: Path) -> None:
    """Each websocket connection is one session holding its messages, closed when it ends;
    the handshake response carries X-Session-ID."""
    handshake_ids: list[str] = []

    async def on_request_end(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
    ) -> None:
        handshake_ids.append(params.response.headers["X-Session-ID"])

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await handle().info("Received", {"text": message.data})
            await ws.send_str(handle().session_id)
        return ws

    def routes(app: web.Application) -> None:
        app.router.add_get("/ws", echo)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    async with (
        served(tmp_path, routes) as server,
        aiohttp.ClientSession(trace_configs=[trace]) as http,
    ):
        replies: dict[str, list[str]] = {}
        async with (
            http.ws_connect(f"{server.url}/ws") as one,
            http.ws_connect(f"{server.url}/ws") as two,
        ):
            for ws, texts in ((one, ["a", "b"]), (two, ["c"])):
                for text in texts:
                    await ws.send_str(text)
                    replies.setdefault(text, []).append(
                        await asyncio.wait_for(ws.receive_str(), 30)
                    )

    assert replies["a"] == replies["b"] == [handshake_ids[0]]
    assert replies["c"] == [handshake_ids[1]]
    sessions = server.sessions()
    assert sorted(sessions) == sorted(handshake_ids)
    for session_id, texts in zip(handshake_ids, (["a", "b"], ["c"]), strict=True):
        session = sessions[session_id]
        assert logged(session) == [
            *(("INFO", "Received", {"text": text}) for text in texts),
            ("INFO", "Websocket closed", {"close_code": 1000, "route": "/ws"}),
        ]
        assert session.status == "closed"


async def test_closed_logger_still_serves_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the logger closed mid-request and before others, requests are still answered;
    the one in flight ends interrupted; the problem is reported once per kind, not per request."""
    entered = asyncio.Event()
    go_on = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await handle().info("Working")
        entered.set()
        await go_on.wait()
        return web.Response(text="done")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text=f"session: {current_session()}")

    def routes(app: web.Application) -> None:
        app.router.add_get("/slow", slow)
        app.router.add_get("/plain", plain)

    def bare(app: web.Application, alog: AsyncSessionLogger) -> None:
        # The middleware and the context on their own, without setup()'s header hook.
        app.middlewares.append(session_middleware(alog))
        app.cleanup_ctx.append(logger_context(alog))

    caplog.set_level(logging.WARNING, logger="async_session_logger.aiohttp")
    async with served(tmp_path, routes, bare) as server, aiohttp.ClientSession() as http:
        in_flight = asyncio.create_task(fetch(http, f"{server.url}/slow"))
        await asyncio.wait_for(entered.wait(), 30)
        await server.alog.aclose()
        go_on.set()
        slow_reply = await asyncio.wait_for(in_flight, 30)
        after = [await fetch(http, f"{server.url}/plain") for _ in range(3)]

    status, session_id, body = slow_reply
    assert (status, body) == (200, "done") and session_id is not None
    assert after == [(200, None, "session: None")] * 3
    session = server.sessions()[session_id]
    assert logged(session) == [("INFO", "Working", None)]
    assert session.status == "interrupted"
    # Four requests met the closed logger (the Response entry of one, the start of three).
    reported = [r.getMessage() for r in caplog.records if r.name == "async_session_logger.aiohttp"]
    assert reported == [
        "aiohttp request logged incompletely: LoggerClosedError: the logger is closed"
    ]


async def test_metadata_callable_and_custom_request_id_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """metadata= adds keys to the start entry (one that raises is reported and left out);
    request_id_header= names the header to trust; setup() puts the session middleware outside
    the app's own middlewares."""

    @web.middleware
    async def inner(request: web.Request, handler: Handler) -> web.StreamResponse:
        await handle().debug("Inner middleware")
        return await handler(request)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def install(app: web.Application, alog: AsyncSessionLogger) -> None:
        app.middlewares.append(inner)
        setup(
            app,
            alog,
            request_id_header="X-Correlation-ID",
            metadata=lambda request: {"tenant": request.headers["X-Tenant"]},
        )

    def routes(app: web.Application) -> None:
        app.router.add_get("/", ok)

    caplog.set_level(logging.WARNING, logger="async_session_logger.aiohttp")
    async with served(tmp_path, routes, install) as server, aiohttp.ClientSession() as http:
        reply = await fetch(http, f"{server.url}/", {"X-Correlation-ID": "c-1", "X-Tenant": "t"})
        untenanted = await fetch(http, f"{server.url}/", {"X-Correlation-ID": "c-2"})

    assert (reply, untenanted) == ((200, "c-1", "ok"), (200, "c-2", "ok"))
    sessions = server.sessions()
    assert sessions["c-1"].metadata["tenant"] == "t"
    assert logged(sessions["c-1"])[0] == ("DEBUG", "Inner middleware", None)
    # The callable raised KeyError for c-2: its session has the default metadata only.
    assert "tenant" not in sessions["c-2"].metadata
    assert sessions["c-2"].metadata["path"] == "/"
    assert sessions["c-2"].status == "closed"
    reported = [r.getMessage() for r in caplog.records if r.name == "async_session_logger.aiohttp"]
    assert reported == ["aiohttp request logged incompletely: KeyError: 'X-Tenant'"]


async def test_cancelled_handler_closes_interrupted(tmp_path: Path) -> None:
    """A handler cancelled by the server's shutdown closes its session interrupted."""
    entered = asyncio.Event()

    async def forever(request: web.Request) -> web.Response:
        await handle().info("Waiting forever")
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    def routes(app: web.Application) -> None:
        app.router.add_get("/forever", forever)

    async with aiohttp.ClientSession() as http:
        async with served(tmp_path, routes, shutdown_timeout=0.1) as server:
            request = asyncio.create_task(fetch(http, f"{server.url}/forever"))
            await asyncio.wait_for(entered.wait(), 30)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(request, 30)

    [session] = server.sessions().values()
    assert logged(session) == [("INFO", "Waiting forever", None)]
    assert session.status == "interrupted"
