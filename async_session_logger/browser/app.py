"""The session browser's web application (aiohttp): the page, the JSON API, the live events.

Read-only: GET and HEAD only. Every response carries a strict Content-Security-Policy (no inline
script, no external asset) and ``nosniff``; requests naming another host than the server's own
(a DNS-rebinding page in the user's browser) are refused. All source calls run on one worker
thread of their own (a SQLite connection stays in the thread that made it), one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web

from ..cli._common import PROG, CliError, parse_when
from .index import SORTS, Query
from .sources import Source

__all__ = ["SECURITY_HEADERS", "Browser", "create_app"]

T = TypeVar("T")
STATIC: Final = Path(__file__).parent / "static"
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_STATUSES: Final = {"open", "closed", "error", "interrupted", "timeout", "evicted"}
_MAX_LIMIT: Final = 500
_POLL_S: Final = 0.25
_PING_S: Final = 15.0
# More changed sessions than this in one poll: the clients get one "reload" event instead.
_MAX_EVENTS: Final = 200


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class Browser:
    """The state behind the app: the source, its worker thread, the live event clients."""

    def __init__(self, open_source: Callable[[], Source]) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="asl-serve")
        # Opened on the worker thread: every later call runs there too.
        self.source: Source = self.executor.submit(open_source).result()
        # Each client's queue holds (session id or None for every client, event bytes).
        self.clients: set[asyncio.Queue[tuple[str | None, bytes] | None]] = set()
        self.allowed_hosts: set[str] = set()
        self.seen = self.source.version
        self.poller: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a source call on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def allow(self, host: str, port: int) -> None:
        """Accept requests for the bound address and the loopback names, on ``port``."""
        for name in {host, "localhost", "127.0.0.1", "[::1]"}:
            shown = f"[{name}]" if ":" in name and not name.startswith("[") else name
            self.allowed_hosts.update({shown, f"{shown}:{port}"})

    async def poll(self) -> None:
        """Read what the source gained, and tell the live clients, every ``_POLL_S``."""
        while True:
            await asyncio.sleep(_POLL_S)
            fresh: list[tuple[str, int, dict[str, Any]]] | None = []
            try:
                await self.call(self.source.refresh)
                fresh = await self.call(self.source.take_entries)
                if self.source.version == self.seen or not self.clients:
                    self.seen = self.source.version
                    continue
                changed = await self.call(lambda: self.source.changed(self.seen))
                self.seen = self.source.version
            except Exception as exc:  # a source that fails must not end the live events
                changed = [{"error": f"{type(exc).__name__}: {exc}"}]
            self.broadcast(changed, fresh)

    def broadcast(
        self,
        changed: list[dict[str, Any]],
        fresh: list[tuple[str, int, dict[str, Any]]] | None = None,
    ) -> None:
        """Queue the events of the changed sessions and their new entries for every client."""
        events: list[tuple[str | None, bytes]]
        if len(changed) > _MAX_EVENTS or fresh is None:
            events = [(None, b"event: reload\ndata: {}\n\n")]
        else:
            # A store names no session (None): every client, even one watching one id, hears it.
            events = [
                (row.get("session_id"), b"event: session\ndata: " + orjson.dumps(row) + b"\n\n")
                for row in changed
            ]
            events += [
                (
                    session_id,
                    b"event: entry\ndata: "
                    + orjson.dumps({"session_id": session_id, "run": run, "entry": entry})
                    + b"\n\n",
                )
                for session_id, run, entry in fresh
            ]
        for queue in list(self.clients):
            for event in events:
                if queue.qsize() < 5_000:  # a client that reads nothing is not buffered forever
                    queue.put_nowait(event)

    async def close(self) -> None:
        """End the live streams and the poller; close the source."""
        for queue in list(self.clients):
            queue.put_nowait(None)
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        await self.call(self.source.close)
        self.executor.shutdown(wait=True)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BROWSER: Final = web.AppKey("browser", Browser)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse other methods and foreign Host headers; add the security headers."""
    browser = request.app[_BROWSER]
    if request.method not in ("GET", "HEAD"):
        response: web.StreamResponse = _error(405, "read-only: GET and HEAD only")
        response.headers["Allow"] = "GET, HEAD"
    elif browser.allowed_hosts and request.host.lower() not in browser.allowed_hosts:
        response = _error(421, "this server answers for its own address only")
    else:
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = _error(404, "not found")
        except web.HTTPMethodNotAllowed:
            response = _error(405, "read-only: GET and HEAD only")
        except web.HTTPException:
            raise
        except Exception as exc:  # a file gone, a store that fails: said in JSON, not a crash
            print(f"{PROG} serve: {request.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            response = _error(500, f"{type(exc).__name__}: {exc}")
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response


async def _page(request: web.Request) -> web.StreamResponse:
    return _static_file("index.html", cache=False)


def _static_file(name: str, *, cache: bool = True) -> web.StreamResponse:
    path = STATIC / name
    suffix = path.suffix
    # Only plain files of the static directory itself, of the known types: no traversal.
    if (
        "/" in name
        or "\\" in name
        or name.startswith(".")
        or suffix not in _TYPES
        or not path.is_file()
        or path.is_symlink()
    ):
        return _error(404, "not found")
    response = web.Response(body=path.read_bytes(), content_type=_TYPES[suffix], charset="utf-8")
    response.headers["Cache-Control"] = "no-cache" if not cache else "max-age=60"
    return response


async def _static(request: web.Request) -> web.StreamResponse:
    return _static_file(request.match_info["name"])


def _query(request: web.Request) -> Query:
    """Read the list's query parameters; ValueError says what is wrong."""
    params = request.query
    statuses: list[str] = []
    for value in params.getall("status", []):
        statuses += [s for s in value.split(",") if s]
    unknown = [s for s in statuses if s not in _STATUSES]
    if unknown:
        raise ValueError(f"status: unknown {unknown[0]!r} (one of {', '.join(sorted(_STATUSES))})")
    sort = params.get("sort", "-start")
    if sort not in SORTS:
        raise ValueError(f"sort: one of {', '.join(SORTS)}")
    try:
        limit = int(params.get("limit", "50"))
        offset = int(params.get("offset", "0"))
    except ValueError:
        raise ValueError("limit and offset are whole numbers") from None
    if not 1 <= limit <= _MAX_LIMIT or offset < 0:
        raise ValueError(f"limit: 1 to {_MAX_LIMIT}; offset: 0 or more")
    return Query(
        status=statuses,
        text=params.get("q", "")[:1_000],
        since=_when(params.get("since"), "since"),
        until=_when(params.get("until"), "until"),
        sort=sort,
        limit=limit,
        offset=offset,
    )


def _when(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_when(text, name)
    except CliError as exc:
        raise ValueError(str(exc)) from None


async def _sessions(request: web.Request) -> web.StreamResponse:
    browser = request.app[_BROWSER]
    try:
        query = _query(request)
    except ValueError as exc:
        return _error(400, str(exc))
    total, rows = await browser.call(lambda: browser.source.page(query))
    return _json({"total": total, "offset": query.offset, "limit": query.limit, "sessions": rows})


async def _session(request: web.Request) -> web.StreamResponse:
    browser = request.app[_BROWSER]
    session_id = request.match_info["session_id"]
    run_text = request.query.get("run")
    try:
        run = int(run_text) if run_text else None
    except ValueError:
        return _error(400, "run: a whole number")
    found = await browser.call(lambda: browser.source.session(session_id, run))
    if found is None:
        return _error(404, f"no session {session_id!r}" + (f" run {run}" if run else ""))
    return _json(found)


async def _status(request: web.Request) -> web.StreamResponse:
    browser = request.app[_BROWSER]
    source = browser.source

    def status() -> dict[str, Any]:
        total, _ = source.page(Query(limit=1))
        return {
            "sources": source.describe(),
            "sessions": total,
            "corrupt_lines": source.corrupt_lines,
        }

    return _json(await browser.call(status))


async def _events(request: web.Request) -> web.StreamResponse:
    browser = request.app[_BROWSER]
    only = request.query.get("session")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **SECURITY_HEADERS,
        }
    )
    await response.prepare(request)
    queue: asyncio.Queue[tuple[str | None, bytes] | None] = asyncio.Queue()
    browser.clients.add(queue)
    try:
        await response.write(b": live\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), _PING_S)
            except TimeoutError:
                await response.write(b": ping\n\n")
                continue
            if event is None:
                break
            session_id, data = event
            if only is not None and session_id not in (only, None):
                continue
            await response.write(data)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        browser.clients.discard(queue)
    return response


async def _not_found(request: web.Request) -> web.StreamResponse:
    return _error(404, "not found")


def create_app(source: Browser | Source | Callable[[], Source]) -> web.Application:
    """Return the application serving a source.

    ``source`` is a :class:`Browser`, a source, or a function that opens one (called on the
    worker thread: a SQLite connection must be made on the thread that uses it, so give a
    :class:`StoreSource` this way). The Host check needs :meth:`Browser.allow` once the port is
    known; until then any Host is answered.
    """
    if isinstance(source, Browser):
        browser = source
    elif isinstance(source, Source):
        ready = source
        browser = Browser(lambda: ready)
    else:
        browser = Browser(source)
    app = web.Application(middlewares=[_guard])
    app[_BROWSER] = browser
    app.router.add_get("/", _page)
    app.router.add_get("/sessions/{session_id:.+}", _page)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/sessions", _sessions)
    app.router.add_get("/api/sessions/{session_id:.+}", _session)
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/events", _events)
    app.router.add_get("/api/{rest:.*}", _not_found)

    async def start(app: web.Application) -> None:
        browser.poller = asyncio.get_running_loop().create_task(browser.poll())

    async def stop(app: web.Application) -> None:
        await browser.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
