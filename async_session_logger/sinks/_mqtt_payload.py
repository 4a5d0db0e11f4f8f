"""Turn a batch into MQTT messages: per-entry or packed JSON Lines, plus retained statuses."""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import orjson

from ._base import Batch

__all__ = ["Message", "ReplayBuffer", "build_messages"]


class Message(NamedTuple):
    """One MQTT publish: ``qos`` None means the sink's QoS."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int | None = None
    entries: int = 1


def _status_message(topic: str, entry: dict[str, Any]) -> Message:
    if entry.get("event") == "session_start":
        body: dict[str, Any] = {"status": "open", "metadata": entry.get("metadata", {})}
    else:
        body = {k: entry.get(k) for k in ("status", "duration_s", "entries")}
    body["session_id"] = entry.get("session_id")
    body["timestamp"] = entry.get("timestamp")
    # Retained and QoS 1 whatever the sink's QoS: a late subscriber must find the last status.
    return Message(f"{topic}/status", orjson.dumps(body), retain=True, qos=1, entries=0)


def build_messages(
    batch: Batch, topic: str, entries_per_message: int, *, status: bool
) -> list[Message]:
    """Return the messages for ``batch`` in an order that keeps each session's order."""
    lines = batch.lines()
    topics: dict[str, str] = {}
    out: list[Message] = []
    if entries_per_message == 1:
        for entry, line in zip(batch.entries, lines, strict=True):
            sid = str(entry.get("session_id", "_unknown"))
            t = topics.get(sid) or topics.setdefault(sid, topic.format(session_id=sid))
            event = entry.get("event")
            out.append(Message(t, line))
            if status and event in ("session_start", "session_close"):
                out.append(_status_message(t, entry))
        return out
    groups: dict[str, list[bytes]] = {}
    pending_status: dict[str, list[Message]] = {}

    def flush(sid: str) -> None:
        group = groups.pop(sid, None)
        t = topics[sid]
        if group:
            out.append(Message(t, b"\n".join(group), entries=len(group)))
        out.extend(pending_status.pop(sid, ()))

    for entry, line in zip(batch.entries, lines, strict=True):
        sid = str(entry.get("session_id", "_unknown"))
        if sid not in topics:
            topics[sid] = topic.format(session_id=sid)
        groups.setdefault(sid, []).append(line)
        event = entry.get("event")
        if status and event in ("session_start", "session_close"):
            pending_status.setdefault(sid, []).append(_status_message(topics[sid], entry))
        if event == "session_close" or len(groups[sid]) >= entries_per_message:
            flush(sid)
    for sid in list(groups):
        flush(sid)
    for sid in list(pending_status):
        flush(sid)
    return out


class ReplayBuffer:
    """The most recent acknowledged messages, bounded by count and by bytes."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: deque[Message] = deque()
        self._bytes = 0

    def extend(self, messages: list[Message]) -> None:
        """Remember ``messages``, forgetting the oldest past the bounds."""
        if not self.max_messages:
            return
        for message in messages:
            self._items.append(message)
            self._bytes += len(message.payload)
        while self._items and (
            len(self._items) > self.max_messages or self._bytes > self.max_bytes
        ):
            self._bytes -= len(self._items.popleft().payload)

    def snapshot(self) -> list[Message]:
        """Return the remembered messages, oldest first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
