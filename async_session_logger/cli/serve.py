"""``serve PATH... | --store URL``: the session browser, a local read-only web page.

Binds 127.0.0.1 by default; prints ``serving http://HOST:PORT/`` once it listens. SIGINT or
SIGTERM ends it (exit status 0), closing the live event streams first. See docs/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
import webbrowser

from ._common import PROG, CliError, warn
from ._from_store import open_store, shown_url

__all__ = ["add_parser", "run"]

DEFAULT_PORT = 8470


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    parser = commands.add_parser(
        "serve",
        help="browse sessions in a local web page, live",
        description="Serve a read-only web page (and a JSON API under /api/) to find and read "
        "sessions in log files, directories of them (collect's output) or a session store. "
        "New sessions and entries appear live.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="log files or directories")
    parser.add_argument(
        "--store", metavar="URL", help="a session store: sqlite:///PATH or postgresql://..."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    if bool(args.paths) == bool(args.store):
        raise CliError("give log files or directories, or --store URL (not both)", 2)
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port: {args.port} is not a port", 2)
    try:
        from aiohttp import web  # noqa: F401 - the [web] extra's
    except ImportError:
        raise CliError(
            "serve needs aiohttp: pip install -e '.[web]' (in a checkout of the project)"
        ) from None
    if not _loopback(args.host):
        warn(
            f"serving on {args.host}: anyone who can reach it can read these logs "
            "(there is no login)"
        )
    return asyncio.run(_serve(args))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ..browser import Browser, FileSource, SourceError, StoreSource, create_app

    def open_source() -> FileSource | StoreSource:
        if args.store:
            return StoreSource(open_store(args.store), shown_url(args.store))
        return FileSource(list(args.paths))

    loop = asyncio.get_running_loop()
    try:
        browser = await loop.run_in_executor(None, lambda: Browser(open_source))
    except SourceError as exc:
        raise CliError(str(exc)) from None
    app = create_app(browser)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    addresses = runner.addresses
    port = int(addresses[0][1]) if addresses else args.port
    browser.allow(args.host, port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}/"
    print(f"serving {url}", flush=True)
    print(f"{PROG}: {len(browser.source.describe())} source(s); Ctrl-C stops", file=sys.stderr)
    if args.open:
        webbrowser.open(url)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
