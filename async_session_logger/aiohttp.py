"""aiohttp integration: one session per request and per websocket connection.

``setup(app, logger)`` is all an app needs: it adds :func:`session_middleware` (outermost), a
``cleanup_ctx`` that starts the logger with the app and closes (drains) it when the app stops,
and an ``on_response_prepare`` hook that puts ``X-Session-ID`` on every response, also on a
streaming response or a websocket handshake the handler prepared itself.

Inside a request, :func:`async_session_logger.current_session` is the request's session (in
the handler, in other middlewares the session middleware wraps, in tasks the handler creates),
so handlers log with ``await current_session().info(...)`` and, with the stdlib bridge
installed, with any ``logging`` logger.

Needs aiohttp: ``pip install -e '.[aiohttp]'`` in a checkout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from . import AsyncSessionHandle, AsyncSessionLogger, DuplicateSessionError, SessionLoggerError
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

__all__ = [
    "add_session_id_header",
    "logger_context",
    "session_middleware",
    "setup",
]

Metadata = Callable[[web.Request], Mapping[str, Any]]

# Where the middleware leaves the session id for add_session_id_header. aiohttp >= 3.13 wants
# typed request keys (a str key warns); older releases only have str keys.
_SESSION_ID: Any
try:
    from aiohttp.web import RequestKey

    _SESSION_ID = RequestKey("async_session_logger.session_id", str)
except ImportError:  # pragma: no cover - aiohttp < 3.13
    _SESSION_ID = "async_session_logger.session_id"

# The last entry of a websocket connection's session (the ASGI middleware's wording).
WEBSOCKET_MESSAGE: Final = "Websocket closed"
_STARTS: Final = 3  # tries at a session start; only a duplicate id (a race) is tried again
_log = logging.getLogger(__name__)


def session_middleware(
    logger: AsyncSessionLogger,
    *,
    request_id_header: str = REQUEST_ID_HEADER,
    metadata: Metadata | None = None,
) -> Middleware:
    """Return a middleware that runs each request inside a session of ``logger``.

    The session id is the ``request_id_header`` value when it is a safe id no open session
    uses, else a fresh uuid4 hex. The start entry's metadata: ``method``, ``path``, ``route``
    (the route template, ``None`` when no route matched), ``client``, ``user_agent``,
    ``scheme``, ``http_version``, then whatever ``metadata(request)`` returns.

    The session's last entry is ``Response`` with the status (``Websocket closed`` with the
    close code for a websocket). It closes ``error`` when the handler answered 5xx or raised:
    an ERROR entry with the traceback comes first and the client gets a JSON 500 naming the
    session (when the response had begun, aiohttp breaks the connection off instead). A
    raised ``HTTPException`` is an answer, not a failure: it goes on to aiohttp with the
    header. Cancelled: ``interrupted``; else ``closed``. Logging problems (a closed logger)
    never fail the request: it is served without a session and reported once on the
    ``async_session_logger.aiohttp`` stdlib logger.
    """
    sessions = _Sessions(logger, request_id_header, metadata)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request)
        handle = await sessions.open(request, route)
        if handle is None:
            return await handler(request)
        session_id = handle.session_id
        request[_SESSION_ID] = session_id
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # A raised 404 or redirect answers the request; it is no failure of the app.
            exc.headers[SESSION_ID_HEADER] = session_id
            await sessions.finish(handle, exc.status, route)
            raise
        except asyncio.CancelledError as exc:
            await sessions.exit(handle, exc)
            raise
        except Exception as exc:
            if request.writer.output_size > 0:
                # The response had begun (a stream, a websocket): no 500 can follow it, so
                # aiohttp gets the exception and breaks the connection off.
                await sessions.exit(handle, exc)
                raise
            await sessions.response_entry(handle, 500, route)
            await sessions.exit(handle, exc)
            # What the old examples/web_app.py answered: the client can quote the session id.
            return web.json_response(
                {"error": "internal server error", "session_id": session_id},
                status=500,
                headers={SESSION_ID_HEADER: session_id},
            )
        if not isinstance(response, web.StreamResponse):
            # aiohttp answers 500 for a handler that returned no response (and logs why).
            await sessions.finish(handle, 500, route)
            return response
        if not response.prepared:
            response.headers[SESSION_ID_HEADER] = session_id
        # A streaming response or a websocket was prepared by the handler, which returns once
        # the body (the connection) ended: closing the session here closes it at the end.
        if isinstance(response, web.WebSocketResponse) and response.prepared:
            await sessions.finish_websocket(handle, response, route)
        else:
            await sessions.finish(handle, response.status, route)
        return response

    return middleware


async def add_session_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """Put the request's session id on ``response`` as ``X-Session-ID`` (an
    ``on_response_prepare`` hook; :func:`setup` adds it)."""
    session_id = request.get(_SESSION_ID)
    if session_id is not None:
        response.headers[SESSION_ID_HEADER] = session_id


def logger_context(logger: AsyncSessionLogger) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a ``cleanup_ctx`` callable: start ``logger`` with the app, close it after.

    At start-up it starts the logger and re-attaches the stdlib bridge's handlers that a
    logging config removed (:func:`async_session_logger.stdlib.reinstall`); at cleanup, after
    the requests in flight ended, it closes the logger, which drains every sink. A second
    ``await logger.aclose()`` returns the same report.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        # Imported here: the bridge is optional for apps that only use the middleware.
        from .stdlib import reinstall

        await logger.start()
        reinstall()
        try:
            yield
        finally:
            await logger.aclose()

    return context


def setup(
    app: web.Application,
    logger: AsyncSessionLogger,
    *,
    request_id_header: str = REQUEST_ID_HEADER,
    metadata: Metadata | None = None,
) -> None:
    """Log one session per request of ``app`` with ``logger``, open while the app runs.

    Adds :func:`session_middleware` as the outermost middleware (the others run inside the
    request's session), :func:`logger_context` to ``cleanup_ctx`` and
    :func:`add_session_id_header` to ``on_response_prepare``.
    """
    app.middlewares.insert(
        0, session_middleware(logger, request_id_header=request_id_header, metadata=metadata)
    )
    app.cleanup_ctx.append(logger_context(logger))
    app.on_response_prepare.append(add_session_id_header)


# -- the middleware's steps -------------------------------------------------------------------
def _route(request: web.Request) -> str | None:
    # The template ("/users/{id}") of the matched route; None for aiohttp's 404/405 answers.
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


class _Sessions:
    # The middleware's logging steps; none raises a logging error into the request.

    def __init__(self, logger: AsyncSessionLogger, header: str, metadata: Metadata | None) -> None:
        self.logger = logger
        self.header = header
        self.extra = metadata
        self.reported: set[type[Exception]] = set()

    def metadata(self, request: web.Request, route: str | None) -> dict[str, Any]:
        version = request.version
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "route": route,
            # host:port of the peer, as the ASGI middleware writes it (request.remote would
            # be the host alone).
            "client": client_address(
                request.transport.get_extra_info("peername") if request.transport else None
            ),
            "user_agent": request.headers.get("User-Agent"),
            "scheme": request.scheme,
            "http_version": f"{version.major}.{version.minor}",
        }
        if self.extra is not None:
            try:
                fields.update(self.extra(request))
            except Exception as exc:  # the app's callable: log the request without its keys
                self.report(exc)
        return fields

    async def open(self, request: web.Request, route: str | None) -> AsyncSessionHandle | None:
        # Start the request's session and make it current; None when logging fails.
        logger = self.logger
        metadata = self.metadata(request, route)
        wanted: str | None = request.headers.get(self.header)
        for _ in range(_STARTS):
            # No await between the id check and the start: no other request takes it between.
            handle = logger.session(safe_request_id(wanted, logger.is_open), metadata)
            try:
                return await handle.__aenter__()
            except DuplicateSessionError:
                # A full queue made the start wait and another request took the id meanwhile.
                wanted = None
            except SessionLoggerError as exc:  # closed logger, metadata it refuses
                self.report(exc)
                return None
        return None

    async def finish(self, handle: AsyncSessionHandle, status: int, route: str | None) -> None:
        # Record the response and close: "error" for a 5xx, else "closed".
        await self.response_entry(handle, status, route)
        try:
            if self.logger.is_open(handle.session_id):
                await self.logger.close_session(handle.session_id, close_status(status, False))
        except SessionLoggerError as exc:
            self.report(exc)
        await self.exit(handle, None)

    async def finish_websocket(
        self, handle: AsyncSessionHandle, ws: web.WebSocketResponse, route: str | None
    ) -> None:
        # The connection's last entry says how it ended; the session closes "closed".
        fields: dict[str, Any] = {"close_code": ws.close_code}
        if route is not None:
            fields["route"] = route
        try:
            await handle.info(WEBSOCKET_MESSAGE, fields)
        except SessionLoggerError as exc:
            self.report(exc)
        await self.exit(handle, None)

    async def response_entry(
        self, handle: AsyncSessionHandle, status: int, route: str | None
    ) -> None:
        fields = response_fields(status, route=route)
        try:
            await handle.log(response_level(status), RESPONSE_MESSAGE, fields)
        except SessionLoggerError as exc:  # closed meanwhile: the logger is closing
            self.report(exc)

    async def exit(self, handle: AsyncSessionHandle, exc: BaseException | None) -> None:
        # The handle's own exit resets the current session; with an exception it writes the
        # ERROR entry with the traceback and closes "error" ("interrupted" for cancellation),
        # unless finish() closed the session already.
        try:
            await handle.__aexit__(type(exc) if exc is not None else None, exc, None)
        except SessionLoggerError as error:
            self.report(error)

    def report(self, exc: Exception) -> None:
        # Once per kind of problem, not once per request (a closed logger refuses them all).
        # With the stdlib bridge on a closed logger, logging.lastResort prints it on stderr.
        if type(exc) not in self.reported:
            self.reported.add(type(exc))
            _log.warning("aiohttp request logged incompletely: %s: %s", type(exc).__name__, exc)
