"""One logging session per HTTP request and per websocket connection, for any ASGI 3 app.

Pure ASGI (no Starlette import), so it serves Starlette, FastAPI, Litestar, Quart and hand-written
apps alike::

    app = SessionMiddleware(app, logger=alog)           # any ASGI app: wrap it whole
    app.add_middleware(SessionMiddleware, logger=alog)  # or inside Starlette/FastAPI's own
                                                        # error middleware (docs/web.md)

Each exchange gets a session whose id is the client's ``X-Request-ID`` when that is a safe id
no open session uses, else a fresh uuid4 hex; the response carries it back as
``X-Session-ID``. The session is current (:func:`async_session_logger.current_session`) for
the whole app call, so routes, tasks they create and thread-pool ``def`` routes log into it,
and so does the stdlib bridge (:mod:`async_session_logger.stdlib`). Its last log entry,
``Response``, holds the status code and the route template; it closes when the app returns
(after the last body chunk of a streaming response) with status ``error`` when the app raised
or answered 5xx, ``interrupted`` when the client went away before the response was complete.

With ``lifespan=True`` (the default) the middleware also starts the logger at the server's
start-up and closes it, draining every entry, after the app's own shutdown; :func:`lifespan`
does the same as a FastAPI/Starlette ``lifespan=`` factory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from ._core import AsyncSessionLogger
from ._handles import AsyncSessionHandle
from ._web import (
    REQUEST_ID_HEADER,
    RESPONSE_MESSAGE,
    SESSION_ID_HEADER,
    client_address,
    close_status,
    response_fields,
    response_level,
    safe_request_id,
)

__all__ = ["SessionMiddleware", "lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LifespanFactory = Callable[[Any], AbstractAsyncContextManager[Any]]

# The message of a websocket session's last log entry (an HTTP session's is RESPONSE_MESSAGE).
WEBSOCKET_MESSAGE = "Websocket closed"
_SESSION_ID_NAME = SESSION_ID_HEADER.lower().encode("latin-1")


def _reinstall_bridge() -> None:
    # Imported here: apps that do not use the stdlib bridge never import it.
    from .stdlib import reinstall

    reinstall()


def lifespan(
    logger: AsyncSessionLogger, app_lifespan: LifespanFactory | None = None
) -> LifespanFactory:
    """Return a ``lifespan=`` factory that opens ``logger`` at start-up and closes it at shutdown.

    ``FastAPI(lifespan=lifespan(alog))``; the app's own factory goes in ``app_lifespan`` and
    runs inside (the logger is open during its start-up and shutdown; its state is yielded).
    Start-up also re-attaches the stdlib bridge's handlers a server's logging config removed.
    """

    @asynccontextmanager
    async def session_logger_lifespan(app: Any) -> AsyncIterator[Any]:
        await logger.start()
        _reinstall_bridge()
        try:
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as state:
                    yield state
        finally:
            await logger.aclose()

    return session_logger_lifespan


def _route(scope: Scope) -> str | None:
    # Starlette and FastAPI put the matched route object in the scope while routing; its
    # ``path_format`` is the template without converters ("/items/{id}"). Under a Starlette
    # Mount it is the inner route's template, relative to the mount.
    route = scope.get("route")
    if route is None:
        return None
    if isinstance(route, str):
        return route
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


class _Exchange:
    """What the middleware sees of one request or connection on its way through."""

    __slots__ = (
        "close_code",
        "closed_by",
        "complete",
        "disconnected",
        "header",
        "response_bytes",
        "started",
        "status",
    )

    def __init__(self, session_id: str) -> None:
        self.header = (_SESSION_ID_NAME, session_id.encode())
        self.status: int | None = None
        self.started = False  # http.response.start (or websocket.accept) went out
        self.complete = False  # the last body chunk went out
        self.disconnected = False  # the client went away (or the response ended: uvicorn
        # answers receive() with http.disconnect then)
        self.response_bytes = 0
        self.close_code: int | None = None
        self.closed_by: str | None = None


# What frameworks raise out of the app once the client is gone (Starlette's WebSocketDisconnect
# and ClientDisconnect, uvicorn's ClientDisconnected): matched by name, no framework imported.
_DISCONNECTS = frozenset({"WebSocketDisconnect", "ClientDisconnect", "ClientDisconnected"})


def _client_gone(exc: BaseException, ex: _Exchange, scope: Scope) -> bool:
    """Whether ``exc`` only says the client left: how a websocket ends, not a failure."""
    if not ex.disconnected or not isinstance(exc, Exception):
        return False
    if scope["type"] == "http" and ex.complete:
        return False  # the response was whole: what failed after it is the app's
    return isinstance(exc, OSError) or type(exc).__name__ in _DISCONNECTS


def _last_entry(ex: _Exchange, scope: Scope) -> tuple[int, str | None, dict[str, Any]]:
    """Return the level, message and fields of the session's last log entry (no message: none)."""
    route = _route(scope)
    if scope["type"] == "http":
        if not ex.started:
            return logging.INFO, None, {}  # nothing was answered: the close says it all
        fields = response_fields(ex.status, route=route, response_bytes=ex.response_bytes)
        return response_level(ex.status), RESPONSE_MESSAGE, fields
    fields = {"close_code": ex.close_code, "closed_by": ex.closed_by}
    if ex.status is not None:  # a denial response instead of an accept
        fields["status_code"] = ex.status
    if route is not None:
        fields["route"] = route
    level = response_level(ex.status) if ex.status is not None else logging.INFO
    return level, WEBSOCKET_MESSAGE, fields


def _status(ex: _Exchange, scope: Scope) -> str:
    """Return the close status of an exchange the app ended without raising."""
    if scope["type"] == "http":
        # No response at all: the server answers 500 itself, unless the client left first.
        failed = not ex.started and not ex.disconnected
        return close_status(ex.status, failed, cancelled=not ex.complete)
    # 1006: the connection dropped without a closing handshake.
    return close_status(
        ex.status, False, cancelled=ex.closed_by == "client" and ex.close_code == 1006
    )


class SessionMiddleware:
    """Wrap an ASGI 3 app: one logging session per HTTP request and websocket connection.

    Args:
        app: the ASGI app to wrap.
        logger: the logger the sessions go to.
        request_id_header: the request header a client names its session with (``None``:
            always a fresh uuid4 hex).
        lifespan: start ``logger`` at the server's start-up and close it after the app's
            shutdown (also for apps without lifespan support), and re-attach the stdlib
            bridge's handlers there.
        metadata: ``metadata(scope) -> dict`` of fields added to (or replacing) the defaults
            of each start entry: method, path, client, user_agent, scheme, http_version. The
            query string is not logged by default: it may hold secrets that masking by key
            name would not catch.

    Logging never fails a request: a session the logger refuses (closed, not running on this
    loop) leaves the request served without one, counted in :attr:`logging_errors`.
    """

    def __init__(
        self,
        app: ASGIApp,
        logger: AsyncSessionLogger,
        *,
        request_id_header: str | None = REQUEST_ID_HEADER,
        lifespan: bool = True,
        metadata: Callable[[Scope], dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.logger = logger
        self.request_id_header = request_id_header
        self.lifespan = lifespan
        self.metadata = metadata
        self._id_header = request_id_header.lower().encode("latin-1") if request_id_header else None
        #: Verbs the logger refused (the exchange was served all the same); the last error.
        self.logging_errors = 0
        self.last_logging_error: Exception | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            await self._exchange(scope, receive, send)
        elif kind == "lifespan" and self.lifespan:
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- requests and websocket connections ---------------------------------------------------
    def _start_metadata(self, scope: Scope, headers: dict[bytes, bytes]) -> dict[str, Any]:
        user_agent = headers.get(b"user-agent")
        fields: dict[str, Any] = {}
        if scope["type"] == "http":
            fields["method"] = scope.get("method")
        fields["path"] = scope.get("path")
        fields["client"] = client_address(scope.get("client"))
        fields["user_agent"] = user_agent.decode("latin-1") if user_agent is not None else None
        fields["scheme"] = scope.get("scheme")
        fields["http_version"] = scope.get("http_version")
        if self.metadata is not None:
            fields.update(self.metadata(scope))
        return fields

    def _failed(self, exc: Exception) -> None:
        self.logging_errors += 1
        self.last_logging_error = exc

    async def _open(self, scope: Scope) -> AsyncSessionHandle | None:
        headers = dict(scope.get("headers") or ())
        wanted = None
        if self._id_header is not None:
            raw = headers.get(self._id_header)
            wanted = raw.decode("latin-1") if raw is not None else None
        try:
            metadata = self._start_metadata(scope, headers)
            # No await between the id check and the start (queued at call time): a concurrent
            # request with the same X-Request-ID sees this session open and gets a fresh id.
            session_id = safe_request_id(wanted, self.logger.is_open)
            handle = self.logger.session(session_id, metadata)
            await handle.__aenter__()  # makes the handle current for the app call below
        except Exception as exc:
            self._failed(exc)
            return None
        return handle

    async def _exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        handle = await self._open(scope)
        if handle is None:
            await self.app(scope, receive, send)
            return
        ex = _Exchange(handle.session_id)

        async def receive_watched() -> Message:
            message = await receive()
            kind = message["type"]
            if kind == "http.disconnect" or kind == "websocket.disconnect":
                ex.disconnected = True
                if ex.closed_by is None:
                    ex.closed_by, ex.close_code = "client", message.get("code")
            return message

        async def send_watched(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                ex.response_bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    ex.complete = True
            elif kind == "http.response.start" or kind == "websocket.http.response.start":
                ex.started = True
                ex.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), ex.header]}
            elif kind == "websocket.accept":
                ex.started = True
                message = {**message, "headers": [*message.get("headers", ()), ex.header]}
            elif kind == "websocket.close":
                if ex.closed_by is None:
                    ex.closed_by, ex.close_code = "server", message.get("code", 1000)
            elif kind == "http.response.pathsend":
                ex.complete = True
            try:
                await send(message)
            except OSError:
                # ASGI 2.4 servers raise OSError from send() once the client is gone.
                ex.disconnected = True
                raise

        try:
            await self.app(scope, receive_watched, send_watched)
        except BaseException as exc:
            await self._finish(handle, ex, scope, None if _client_gone(exc, ex, scope) else exc)
            raise
        await self._finish(handle, ex, scope, None)

    async def _finish(
        self, handle: AsyncSessionHandle, ex: _Exchange, scope: Scope, exc: BaseException | None
    ) -> None:
        logger = self.logger
        session_id = handle.session_id
        try:
            if logger.is_open(session_id):  # the app may have closed it, or aclose() did
                level, message, fields = _last_entry(ex, scope)
                if message is not None:
                    await logger.log_entry(session_id, message, level, fields)
                if exc is None:
                    status = _status(ex, scope)
                    if status != "closed":
                        await logger.close_session(session_id, status)
        except Exception as error:
            self._failed(error)
        try:
            # Leaves the handle's block: no longer current; with an exception, an ERROR entry
            # with its traceback and the close (status error, or interrupted if cancelled).
            if exc is None:
                await handle.__aexit__(None, None, None)
            else:
                await handle.__aexit__(type(exc), exc, exc.__traceback__)
        except Exception as error:
            self._failed(error)

    # -- lifespan -----------------------------------------------------------------------------
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The middleware speaks the lifespan protocol with the server itself and runs the
        # app's as a sub-conversation, so the logger opens first and closes last, and also for
        # apps that do not support lifespan (they raise or return on this scope at once).
        startup = await receive()
        try:
            await self.logger.start()
            _reinstall_bridge()
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": f"session logger: {exc!r}"})
            return
        to_app: asyncio.Queue[Message] = asyncio.Queue()
        from_app: asyncio.Queue[Message] = asyncio.Queue()
        to_app.put_nowait(startup)
        app_task = asyncio.ensure_future(self.app(scope, to_app.get, from_app.put))
        try:
            reply = await _next_reply(app_task, from_app)
            engaged = reply is not None
            if reply is None:
                failure = None if app_task.cancelled() else app_task.exception()
                if to_app.empty() and failure is not None:
                    # The app took the start-up message and failed without a word.
                    reply = {"type": "lifespan.startup.failed", "message": repr(failure)}
                else:  # lifespan unsupported: answer for the app
                    reply = {"type": "lifespan.startup.complete"}
            if reply["type"] != "lifespan.startup.complete":
                await self.logger.aclose()
                await send(reply)
                return
            await send(reply)
            shutdown = await receive()
            reply = None
            if engaged and not app_task.done():
                to_app.put_nowait(shutdown)
                reply = await _next_reply(app_task, from_app)
            await self.logger.aclose()  # after the app's shutdown, which may still log
            await send(reply or {"type": "lifespan.shutdown.complete"})
        finally:
            await _end(app_task)


async def _next_reply(
    app_task: asyncio.Future[None], from_app: asyncio.Queue[Message]
) -> Message | None:
    """Return the app's next lifespan message, or ``None`` when the app ended without one."""
    getter = asyncio.ensure_future(from_app.get())
    either: set[asyncio.Future[Any]] = {getter, app_task}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


async def _end(app_task: asyncio.Future[None]) -> None:
    """Let the app's lifespan task return (it does right after its last message), else cancel."""
    if not app_task.done():
        # A hang guard: an app that waits for another message after shutdown never gets one.
        await asyncio.wait({app_task}, timeout=5.0)
        app_task.cancel()
    # Retrieve the outcome: an app without lifespan support raised here on purpose.
    await asyncio.gather(app_task, return_exceptions=True)
