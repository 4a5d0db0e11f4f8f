"""What both web integrations (``.asgi``, ``.aiohttp``) share: ids, headers, close status.

Framework-free on purpose: each integration imports its framework in its own module only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "REQUEST_ID_HEADER",
    "RESPONSE_MESSAGE",
    "SESSION_ID_HEADER",
    "close_status",
    "fresh_id",
    "response_fields",
    "response_level",
    "safe_request_id",
]

REQUEST_ID_HEADER: Final = "X-Request-ID"
SESSION_ID_HEADER: Final = "X-Session-ID"
# The message of the entry that records the response, just before the close entry.
RESPONSE_MESSAGE: Final = "Response"

# What a client may choose as its session id. Stricter than the logger's own id rule: it has
# no control characters, none of / \ + # and cannot be "." or ".." (it starts with a letter or
# digit), so a hostile header can neither fail start_session nor reach a path or a topic.
_SAFE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def safe_request_id(value: str | None, is_open: Callable[[str], bool]) -> str:
    """Return ``value`` if it is a safe id no open session uses, else a fresh uuid4 hex.

    ``is_open`` is the logger's ``is_open``. Call it and start the session with no ``await``
    in between, so no concurrent request can take the same id meanwhile.
    """
    if value and _SAFE_ID.fullmatch(value) and not is_open(value):
        return value
    return fresh_id()


def fresh_id() -> str:
    """Return a random version-4 UUID as 32 hex digits: ``uuid.uuid4().hex``, without the
    ``UUID`` object (a tenth of the instructions; one per request)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


def close_status(status_code: int | None, failed: bool, *, cancelled: bool = False) -> str:
    """Return a request session's close status.

    ``"error"`` when the app raised (``failed``) or answered 5xx; ``"interrupted"`` when the
    request was cancelled (the client went away, the server shut down); else ``"closed"``.
    """
    if failed or (status_code is not None and status_code >= 500):
        return "error"
    if cancelled:
        return "interrupted"
    return "closed"


def response_level(status_code: int | None) -> int:
    """Return the level of the response entry: ERROR for 5xx, WARNING for 4xx, else INFO."""
    if status_code is None or status_code >= 500:
        return logging.ERROR
    if status_code >= 400:
        return logging.WARNING
    return logging.INFO


def response_fields(
    status_code: int | None,
    *,
    route: str | None = None,
    response_bytes: int | None = None,
) -> dict[str, Any]:
    """Return the custom fields of the response entry.

    ``status_code`` is ``None`` when no response was started (the app raised first);
    ``route`` is the matched route template, when the framework exposes one.
    """
    fields: dict[str, Any] = {"status_code": status_code}
    if route is not None:
        fields["route"] = route
    if response_bytes is not None:
        fields["response_bytes"] = response_bytes
    return fields


def client_address(peer: object) -> str | None:
    """Return a peer address as ``host:port`` (``[v6]:port``), a unix socket's path as it is,
    or ``None`` (the same form in every integration)."""
    if not peer:
        return None
    if isinstance(peer, tuple | list) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
