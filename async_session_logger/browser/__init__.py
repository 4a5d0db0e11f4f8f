"""The session browser behind ``async-session-logger serve``: a local, read-only web page.

Needs aiohttp (the ``[web]`` extra). :func:`create_app` serves a :class:`Browser` over a
:class:`FileSource` (log files and directories, followed live) or a :class:`StoreSource` (a
session store). See docs/serve.md.
"""

from __future__ import annotations

from .app import SECURITY_HEADERS, Browser, create_app
from .index import Query, SessionIndex
from .sources import FileSource, Source, SourceError, StoreSource

__all__ = [
    "SECURITY_HEADERS",
    "Browser",
    "FileSource",
    "Query",
    "SessionIndex",
    "Source",
    "SourceError",
    "StoreSource",
    "create_app",
]
