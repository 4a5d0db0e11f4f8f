"""An aiohttp web app that logs one session per request with one ``AsyncSessionLogger``.

``async_session_logger.aiohttp.setup`` does the wiring: the logger opens when the app starts
and closes (drains) when it stops, so every entry is on disk once the process has exited; a
middleware wraps each request in a session whose id is the client's ``X-Request-ID`` when that
is a safe id, a fresh uuid4 hex otherwise, with the method, path, route template, client
address and user agent as metadata; the response carries the id back as ``X-Session-ID``. A
handler that raises gets a JSON 500 naming its session, which closes with status ``error``.

Handlers log through ``current_session()`` and through a plain ``logging`` logger: the stdlib
bridge (``async_session_logger.stdlib.install``) puts those records into the request's session.
aiohttp's access log is written after the request's session closed, so its records go to the
process's own session (``process-<host>-<pid>``); each names the request's session.

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
import signal

try:
    from aiohttp import web

    from async_session_logger.aiohttp import setup
except ImportError as exc:
    raise SystemExit(
        f"examples/web_app.py needs aiohttp ({exc}): pip install -e '.[examples]' in a checkout"
    ) from exc

from async_session_logger import AsyncSessionHandle, AsyncSessionLogger, current_session
from async_session_logger.stdlib import install

HOST = "127.0.0.1"
DEFAULT_LOG = "web_app_sessions.jsonl"
# aiohttp's access log line, with the session of the request it reports on.
ACCESS_LOG_FORMAT = '%a "%r" %s %b "%{User-Agent}i" session=%{X-Session-ID}o'

ALOG = web.AppKey("alog", AsyncSessionLogger)
log = logging.getLogger("web_app")


def session() -> AsyncSessionHandle:
    """Return the request's session: the middleware made it current for the handler."""
    handle = current_session()
    if not isinstance(handle, AsyncSessionHandle):
        raise RuntimeError("no request session: is the app built by make_app()?")
    return handle


async def index(request: web.Request) -> web.Response:
    """List the endpoints."""
    await session().debug("Index served")
    return web.json_response({"endpoints": ["/hello?name=...", "/fail", "/slow?ms=..."]})


async def hello(request: web.Request) -> web.Response:
    """Greet ``name``: one entry through the session, one through a stdlib logger."""
    name = request.query.get("name", "world")
    greeting = f"Hello, {name}!"
    await session().info("Greeting", {"name": name})
    # Stands for real work (a database, another service): other requests run meanwhile.
    await asyncio.sleep(0.01)
    log.info("Greeted %s", name, extra={"greeting": greeting})
    return web.json_response({"message": greeting})


async def fail(request: web.Request) -> web.Response:
    """Fail on purpose: the request's session closes with status "error"."""
    await session().info("Failing on purpose")
    await asyncio.sleep(0.01)
    log.warning("About to fail on purpose")
    raise RuntimeError("simulated failure")


async def slow(request: web.Request) -> web.Response:
    """Answer after ``?ms=`` milliseconds (at most 5,000): a request still running at shutdown."""
    try:
        ms = min(max(int(request.query.get("ms", "500")), 0), 5_000)
    except ValueError:
        raise web.HTTPBadRequest(text="ms must be an integer") from None
    await session().info("Working", {"ms": ms})
    await asyncio.sleep(ms / 1000)
    log.info("Done after %d ms", ms)
    return web.json_response({"slept_ms": ms})


def make_app(log_path: str) -> web.Application:
    """Build the app; its sessions are logged to ``log_path`` (the logger is ``app[ALOG]``)."""
    app = web.Application()
    # Construction does no I/O: setup() starts the logger with the app and closes it after.
    alog = app[ALOG] = AsyncSessionLogger(method="file", path=log_path)
    setup(app, alog)
    app.router.add_get("/", index)
    app.router.add_get("/hello", hello)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    return app


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGINT or SIGTERM, then shut down cleanly."""
    log_path = os.environ.get("WEB_APP_LOG", DEFAULT_LOG)
    app = make_app(log_path)
    alog = app[ALOG]
    install(alog)  # stdlib records (the handlers', aiohttp's) go into sessions from now on
    runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT)
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
    report = await alog.aclose()  # closed already: this returns the report of that close
    print(f"session log {log_path}: {report}", flush=True)


def main() -> None:
    """Parse ``--port`` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
