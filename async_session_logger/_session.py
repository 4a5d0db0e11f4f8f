"""One open session's state: seq, level counts, summary, and the entries held for a failure."""

from __future__ import annotations

import base64
import binascii
import time
from collections import deque
from typing import Any, Final

import orjson

from ._errors import InvalidSessionIdError
from ._validate import check_session_id, level_name

__all__ = [
    "CLOSE_LEVELS",
    "FAILED",
    "STATUSES",
    "TOKEN_PREFIX",
    "HeldEntry",
    "SessionState",
    "make_token",
    "parent_from",
]

# Every close status; "timeout" and "evicted" are the logger's own (idle_timeout,
# max_open_sessions), the others the caller's or the handle's.
STATUSES: Final = ("closed", "interrupted", "error", "timeout", "evicted")
# Closing with these writes the entries held by buffer_level (the session failed).
FAILED: Final = frozenset({"error", "interrupted"})
CLOSE_LEVELS: Final = {"error": 40, "interrupted": 30, "timeout": 30, "evicted": 30}
TOKEN_PREFIX: Final = "asl1."
_TOKEN_MAX: Final = 1024

# What a held entry keeps until it is written or discarded: (time_ns, levelno, message, fields).
HeldEntry = tuple[int, int, str, Any]


class SessionState:
    """The recorder's record of one open session (guarded by the recorder's lock)."""

    # seq counts the written log entries too: the start entry is seq 0, so written == seq.
    __slots__ = (
        "errors",
        "evicted",
        "held",
        "hold_at",
        "last_ns",
        "levels",
        "parent",
        "root",
        "run",
        "seq",
        "start_mono",
        "start_ns",
        "summary",
    )

    def __init__(
        self, start_ns: int, run: int, hold_at: int, parent: str | None, root: str
    ) -> None:
        # Tells apart the runs of a reused id, whose records may be queued at the same time.
        self.run = run
        self.seq = 0
        self.errors = 0
        self.start_ns = start_ns
        self.last_ns = start_ns
        self.start_mono = time.monotonic_ns()
        # Log entries per level number, but INFO (20): seq less these (close_fields()).
        self.levels: dict[int, int] = {}
        self.summary: dict[str, Any] | None = None
        # Entries at or below hold_at are held (buffer_level); -1: none. Once the session
        # fails, nothing more is held.
        self.hold_at = hold_at
        self.held: deque[HeldEntry] | None = None
        self.evicted = 0  # held entries pushed out by buffer_max
        self.parent = parent
        self.root = root

    def hold(self, entry: HeldEntry, limit: int) -> bool:
        """Keep ``entry`` for a failure; return whether an older one was evicted for it."""
        held = self.held
        if held is None:
            held = self.held = deque()
        held.append(entry)
        if len(held) > limit:
            held.popleft()
            self.evicted += 1
            return True
        return False

    def take_held(self) -> list[HeldEntry]:
        """Return the held entries (oldest first) and hold nothing more: the session failed."""
        self.hold_at = -1
        held, self.held = self.held, None
        return list(held) if held else []

    def close_fields(self, status: str, discarded: int) -> dict[str, Any]:
        """Return the close entry's fields (the record's ``fields`` slot)."""
        # Whole microseconds, rounded, as seconds: what round(ns / 1e9, 6) gives, for a third
        # of its cost (round() to decimals is ~3,000 instructions).
        micros = (time.monotonic_ns() - self.start_mono + 500) // 1000
        levels = self.levels
        info = self.seq - sum(levels.values())  # INFO is not counted per entry: the rest is
        if info:
            levels = {**levels, 20: info}
        fields: dict[str, Any] = {
            "duration_s": micros / 1e6,
            "entries": self.seq,
            "status": status,
            "levels": {level_name(n): levels[n] for n in sorted(levels)} if levels else {},
        }
        if self.summary:
            fields["summary"] = self.summary
        if discarded:
            fields["discarded"] = discarded
        return fields


def make_token(session_id: str, root: str) -> str:
    """Return the continuation token of a session: ``asl1.`` + base64url(JSON)."""
    body = orjson.dumps({"session_id": session_id, "root": root})
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def parent_from(value: object) -> tuple[str, str | None]:
    """Return ``(parent id, root id or None)`` from a plain session id or a token.

    Raises:
        InvalidSessionIdError: not a safe session id, nor a well-formed token.
    """
    if isinstance(value, str) and value.startswith(TOKEN_PREFIX):
        text = value[len(TOKEN_PREFIX) :]
        try:
            if len(text) > _TOKEN_MAX:
                raise ValueError("too long")
            data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if not isinstance(data, dict):
                raise ValueError("not an object")
            parent = check_session_id(data.get("session_id"))
            root = data.get("root")
            return parent, check_session_id(root) if root is not None else None
        except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
            raise InvalidSessionIdError(
                f"parent token is not a session token ({exc})", session_id=value[:80]
            ) from exc
    return check_session_id(value), None
