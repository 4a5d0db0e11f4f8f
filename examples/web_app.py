"""An aiohttp web app that logs one session per request with one ``AsyncSessionLogger``.

The logger is opened when the app starts and closed when it stops, so every entry is on disk
once the process has exited. A middleware wraps each request in a session: its id is the
client's ``X-Request-ID`` when that is a safe id, a fresh uuid4 hex otherwise; its metadata
holds the method, path, remote address and user agent; the response carries it back as
``X-Session-ID``. A handler that raises closes its session with status ``error``.

Run: ``python examples/web_app.py --port 8080``, then ``curl -i 'localhost:8080/hello?name=Ada'``
or ``curl -i localhost:8080/fail``. Sessions go to ``$WEB_APP_LOG``
(default ``web_app_sessions.jsonl``). Ctrl+C or SIGTERM stops the server cleanly: it stops
accepting connections, lets the requests in flight finish (try ``/slow?ms=3000``), then closes
the logger, which writes every entry still queued.

Needs aiohttp, the ``[examples]`` extra: ``pip install -e '.[examples]'`` in a checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

try:
    from aiohttp import web
except ImportError as exc:
    raise SystemExit(
        f"examples/web_app.py needs aiohttp ({exc}): pip install -e '.[examples]' in a checkout"
    ) from exc

from async_session_logger import AsyncSessionHandle, AsyncSessionLogger

HOST = "127.0.0.1"
DEFAULT_LOG = "web_app_sessions.jsonl"

ALOG = web.AppKey("alog", AsyncSessionLogger)
LOG_PATH = web.AppKey("log_path", str)
# Request-scoped state: the handlers log through the session the middleware opened.
SESSION = "session_log"

# What a client may choose as its session id: a session id can end up in a file name or an
# MQTT topic, so anything beyond letters, digits, ".", "_" and "-" (e.g. "../x") is refused.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_id_for(request: web.Request, alog: AsyncSessionLogger) -> str:
    """Return the client's X-Request-ID if it is safe and not in use, else a fresh uuid4 hex."""
    wanted = request.headers.get("X-Request-ID", "")
    # Two concurrent requests with one id would collide; no await separates this check from
    # the session's start, so no other request can take the id in between.
    if _SAFE_ID.fullmatch(wanted) and not alog.is_open(wanted):
        return wanted
    return uuid.uuid4().hex


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the request inside a logging session and answer with its id in X-Session-ID."""
    alog = request.app[ALOG]
    session_id = session_id_for(request, alog)
    metadata = {
        "method": request.method,
        "path": request.path,
        "remote": request.remote,
        "user_agent": request.headers.get("User-Agent", ""),
    }
    response: web.StreamResponse | None = None
    http_error: web.HTTPException | None = None
    try:
        async with alog.session(session_id, metadata=metadata) as session:
            request[SESSION] = session
            try:
                response = await handler(request)
                status = response.status
            except web.HTTPException as exc:
                # A raised 404 or redirect is an answer, not a failure of the request.
                http_error = exc
                status = exc.status
            level = logging.WARNING if status >= 400 else logging.INFO
            await session.log(level, f"Response {status}", {"status": status})
    except Exception:
        # The session is closed with status "error"; the ERROR entry before its close entry
        # holds the traceback. The client gets the session id to quote in a bug report.
        return web.json_response(
            {"error": "internal server error", "session_id": session_id},
            status=500,
            headers={"X-Session-ID": session_id},
        )
    if http_error is not None:
        http_error.headers["X-Session-ID"] = session_id
        raise http_error
    assert response is not None
    response.headers["X-Session-ID"] = session_id
    return response


def session_of(request: web.Request) -> AsyncSessionHandle:
    """Return the logging session the middleware opened for this request."""
    session: AsyncSessionHandle = request[SESSION]
    return session


async def index(request: web.Request) -> web.Response:
    """List the endpoints."""
    await session_of(request).debug("Index served")
    return web.json_response({"endpoints": ["/hello?name=...", "/fail", "/slow?ms=..."]})


async def hello(request: web.Request) -> web.Response:
    """Greet ``name`` and log the greeting with custom fields."""
    name = request.query.get("name", "world")
    greeting = f"Hello, {name}!"
    await session_of(request).info("Greeting sent", {"name": name, "greeting": greeting})
    return web.json_response({"message": greeting})


async def fail(request: web.Request) -> web.Response:
    """Fail on purpose: the request's session closes with status "error"."""
    await session_of(request).warning("About to fail on purpose")
    raise RuntimeError("simulated failure")


async def slow(request: web.Request) -> web.Response:
    """Answer after ``?ms=`` milliseconds (at most 5,000): a request still running at shutdown."""
    try:
        ms = min(max(int(request.query.get("ms", "500")), 0), 5_000)
    except ValueError:
        raise web.HTTPBadRequest(text="ms must be an integer") from None
    session = session_of(request)
    await session.info("Working", {"ms": ms})
    await asyncio.sleep(ms / 1000)
    await session.info("Done")
    return web.json_response({"slept_ms": ms})


async def session_logger(app: web.Application) -> AsyncIterator[None]:
    """Open the app's one logger at start-up; at shutdown close it, draining every entry."""
    alog = AsyncSessionLogger(method="file", path=app[LOG_PATH])
    await alog.start()
    app[ALOG] = alog
    try:
        yield
    finally:
        report = await alog.aclose()
        print(f"session log {app[LOG_PATH]}: {report}", flush=True)


def make_app(log_path: str) -> web.Application:
    """Build the app; its sessions are logged to ``log_path``."""
    app = web.Application(middlewares=[session_middleware])
    app[LOG_PATH] = log_path
    app.cleanup_ctx.append(session_logger)
    app.router.add_get("/", index)
    app.router.add_get("/hello", hello)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    return app


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGINT or SIGTERM, then shut down cleanly."""
    runner = web.AppRunner(make_app(os.environ.get("WEB_APP_LOG", DEFAULT_LOG)))
    await runner.setup()  # runs the start-up half of cleanup_ctx: the logger opens here
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        bound_port = runner.addresses[0][1]  # the real port, also when --port 0 let the OS pick
        print(f"listening on http://{HOST}:{bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        # Stops listening, lets in-flight requests finish, then closes (drains) the logger.
        await runner.cleanup()


def main() -> None:
    """Parse ``--port`` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
