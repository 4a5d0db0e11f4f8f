"""A FastAPI app that logs one session per request and per websocket connection.

``SessionMiddleware`` (pure ASGI) wraps the whole app: each request gets a session whose id is
the client's ``X-Request-ID`` when that is a safe id, a fresh uuid4 hex otherwise, answered in
``X-Session-ID``; the session is current for the route, so ``current_session()`` and the stdlib
``logging`` bridge (``install()``) log into it, also from the thread a ``def`` route runs in.
A route that raises closes its session with status ``error`` and the traceback. The middleware
opens the logger when the server starts and closes it, draining every entry, after the app's
shutdown, so every entry is on disk once the process has exited.

Run: ``python examples/fastapi_app.py --port 8000``, then
``curl -i 'localhost:8000/hello?name=Ada'``, ``/sync``, ``/fail``, ``/stream`` or a websocket
client on ``/ws``. Sessions go to
``$FASTAPI_APP_LOG`` (default ``fastapi_sessions.jsonl``). Ctrl+C or SIGTERM stops the server
cleanly: uvicorn stops accepting connections, lets the requests in flight finish, then the
lifespan closes the logger. ``uvicorn fastapi_app:app`` (from this folder) serves it as well.

Needs FastAPI and uvicorn, the ``[examples]`` extra: ``pip install -e '.[examples]'`` in a
checkout (websockets need ``wsproto`` or ``websockets`` next to uvicorn).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator

try:
    import uvicorn
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from fastapi.responses import StreamingResponse
except ImportError as exc:
    raise SystemExit(
        f"examples/fastapi_app.py needs {exc.name or 'fastapi and uvicorn'} ({exc}): "
        "pip install -e '.[examples]' in a checkout"
    ) from exc

from async_session_logger import AsyncSessionHandle, AsyncSessionLogger, current_session
from async_session_logger.asgi import SessionMiddleware
from async_session_logger.stdlib import install

HOST = "127.0.0.1"
DEFAULT_LOG = "fastapi_sessions.jsonl"

log = logging.getLogger("fastapi_app")

# Construction does no I/O: the middleware starts the logger at the server's start-up.
alog = AsyncSessionLogger(method="file", path=os.environ.get("FASTAPI_APP_LOG", DEFAULT_LOG))
# Every stdlib record (this app's, uvicorn's access log) goes into the current session;
# records outside any request go to a per-process session.
# (Detached again when the logger closes: uvicorn's last lines go to its own handlers.)
install(alog)

api = FastAPI(title="async_session_logger FastAPI example")


def session() -> AsyncSessionHandle:
    """Return the request's session (the middleware made it current)."""
    handle = current_session()
    assert isinstance(handle, AsyncSessionHandle)
    return handle


@api.get("/hello")
async def hello(name: str = "world") -> dict[str, str]:
    """Greet ``name``: one entry through the session handle, one through stdlib logging."""
    greeting = f"Hello, {name}!"
    await session().info("Greeting", {"name": name, "greeting": greeting})
    await asyncio.sleep(0)  # other requests run here: their entries interleave with these
    log.info("Greeted %s", name)
    return {"message": greeting, "session_id": session().session_id}


@api.get("/sync")
def sync_work() -> dict[str, str | None]:
    """A ``def`` route: FastAPI runs it in a thread pool, which sees the request's session."""
    handle = current_session()
    log.info("Sync work in %s", threading.current_thread().name)
    return {"session_id": handle.session_id if handle is not None else None}


@api.get("/fail")
async def fail() -> None:
    """Fail on purpose: the session closes with status "error" and the traceback."""
    log.warning("About to fail on purpose")
    raise RuntimeError("simulated failure")


@api.get("/stream")
async def stream(chunks: int = 3) -> StreamingResponse:
    """Stream ``chunks`` lines; the session closes after the last one, not at the headers."""

    async def lines() -> AsyncIterator[bytes]:
        for i in range(min(max(chunks, 0), 100)):
            yield f"chunk {i}\n".encode()
            log.info("Sent chunk %d", i)
            await asyncio.sleep(0)

    return StreamingResponse(lines(), media_type="text/plain")


@api.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    """Echo text messages; one session for the whole connection."""
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            log.info("Echo %s", text)
            await websocket.send_text(text)
    except WebSocketDisconnect as exc:
        log.info("Client left with code %s", exc.code)


# Outermost, around FastAPI's own error middleware: the 500 of a route that raised still
# carries X-Session-ID, and its access-log line lands in the request's session.
app = SessionMiddleware(api, logger=alog)


class Server(uvicorn.Server):
    """uvicorn's server, printing the address it listens on once it does."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start (the lifespan opens the logger), then print the real port."""
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]  # the OS's pick for --port 0
            print(f"listening on http://{HOST}:{port}", flush=True)


def main() -> None:
    """Parse ``--port`` and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    args = parser.parse_args()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the
    # handler it found. Everything is on disk by then: make that handler a no-op, exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    config = uvicorn.Config(app, host=HOST, port=args.port, log_level="info")
    asyncio.run(Server(config).serve())


if __name__ == "__main__":
    main()
