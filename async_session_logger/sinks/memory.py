"""``MemorySink``: keeps what it receives, for tests and for inspecting a logger."""

from __future__ import annotations

from typing import Any

from ._base import Batch, Sink

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Keep every delivered entry (``entries``) and its JSON line (``lines``) in memory."""

    default_name = "memory"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.entries: list[dict[str, Any]] = []
        self.lines: list[bytes] = []
        self.batches = 0
        self.closed = False

    async def write_batch(self, batch: Batch) -> None:
        """Store the batch."""
        self.entries.extend(batch.entries)
        self.lines.extend(batch.lines())
        self.batches += 1

    async def close(self) -> None:
        """Mark the sink closed (the entries stay readable)."""
        self.closed = True

    def for_session(self, session_id: str) -> list[dict[str, Any]]:
        """Return the entries of one session, in arrival order."""
        return [e for e in self.entries if e.get("session_id") == session_id]
