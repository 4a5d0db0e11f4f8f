"""Turn a batch into MQTT messages that fit the broker: per-entry or packed, plus statuses."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Final, NamedTuple

import orjson

from .._errors import InvalidSessionIdError
from .._validate import check_session_id
from ._base import Batch

__all__ = ["Message", "ParentBook", "Plan", "ReplayBuffer", "build_messages", "publish_size"]

# MQTT's own ceiling: a remaining length is at most four varint bytes (MQTT 3.1.1 §2.2.3).
MQTT_MAX_PACKET: Final = 1 + 4 + 268_435_455
_MAX_TOPIC_BYTES: Final = 65_535
# Open child sessions whose parent the close status must still name; past it, the oldest go.
_MAX_PARENTS: Final = 65_536
_PLACE: Final = itemgetter(0)


class Message(NamedTuple):
    """One MQTT publish: ``qos`` None means the sink's QoS.

    ``indices`` are the batch positions of the entries it carries (for a status message: of the
    entry it reports, with ``entries`` 0), so a message the broker refuses can be dead-lettered.
    """

    topic: str
    payload: bytes
    retain: bool = False
    qos: int | None = None
    entries: int = 1
    indices: tuple[int, ...] = ()


@dataclass
class Plan:
    """The messages for a batch, and the entries that cannot be published, by reason."""

    messages: list[Message] = field(default_factory=list)
    rejected: dict[str, list[int]] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)  # sessions whose last entry here closes

    def reject(self, index: int, reason: str) -> None:
        """Set entry ``index`` aside for the dead-letter file."""
        self.rejected.setdefault(reason, []).append(index)


class ParentBook:
    """The parent of each open child session, from its start entry, for its close status.

    The close entry does not repeat ``parent_session_id``; the retained close status replaces
    the start's, so the sink remembers it. Bounded: past 65,536 open children the oldest are
    forgotten (their close status then says ``null``).
    """

    def __init__(self, limit: int = _MAX_PARENTS) -> None:
        self.limit = limit
        self._parents: dict[str, str] = {}

    def started(self, session_id: str, parent: str | None) -> None:
        """Note a session's start: a child's parent, or that the id is no child any more."""
        self._parents.pop(session_id, None)
        if parent is None:
            return
        self._parents[session_id] = parent
        if len(self._parents) > self.limit:
            del self._parents[next(iter(self._parents))]

    def get(self, session_id: str) -> str | None:
        """Return the parent of ``session_id``, or None."""
        return self._parents.get(session_id)

    def forget(self, session_ids: Sequence[str]) -> None:
        """Drop closed sessions (once their close status is published)."""
        for sid in session_ids:
            self._parents.pop(sid, None)

    def __len__(self) -> int:
        return len(self._parents)


def _varint_len(value: int) -> int:
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


def publish_size(topic_bytes: int, payload_bytes: int, *, qos: int, v5: bool) -> int:
    """Return the bytes of a PUBLISH packet (what a broker's Maximum Packet Size counts)."""
    # Topic with its length prefix, a packet id for QoS > 0, an empty v5 property list.
    remaining = 2 + topic_bytes + (2 if qos else 0) + (1 if v5 else 0) + payload_bytes
    return 1 + _varint_len(remaining) + remaining


class _Sizer:
    """Tell whether a payload fits one packet on a topic (topic lengths cached)."""

    def __init__(self, limit: int | None, qos: int, v5: bool) -> None:
        self.limit = min(limit or MQTT_MAX_PACKET, MQTT_MAX_PACKET)
        self.qos = qos
        self.v5 = v5
        self._topic_bytes: dict[str, int] = {}

    def fits(self, topic: str, payload_bytes: int, qos: int | None = None) -> bool:
        size = self._topic_bytes.get(topic)
        if size is None:
            size = self._topic_bytes[topic] = len(topic.encode())
        qos = self.qos if qos is None else qos
        return publish_size(size, payload_bytes, qos=qos, v5=self.v5) <= self.limit

    def cap(self, topic: str) -> int:
        """Return the largest payload (bytes) that fits one packet on ``topic`` at the sink's
        QoS, -1 if none does: ``fits(topic, n)`` is ``n <= cap(topic)`` (a packet's size
        grows with its payload), one comparison per entry instead of two calls."""
        fixed = 2 + len(topic.encode()) + (2 if self.qos else 0) + (1 if self.v5 else 0)
        # A packet is 1 + varint(remaining) + remaining bytes, remaining = fixed + payload.
        # The largest payload for a varint of k bytes is limit - 1 - k - fixed; the first k
        # whose varint really takes at most k bytes gives the largest payload of all.
        for varint in (1, 2, 3, 4):
            payload = self.limit - 1 - varint - fixed
            if payload < 0:
                return -1
            if _varint_len(fixed + payload) <= varint:
                return payload
        return -1


def _topic_for(template: str, sid: object) -> tuple[str | None, str]:
    """Return ``(topic, "")`` or ``(None, why)`` for a session id taken from a formatted entry."""
    # A custom_formatter may rewrite session_id: check it again where it becomes a topic level.
    try:
        check_session_id(sid)
    except InvalidSessionIdError as exc:
        return None, f"session_id cannot be an MQTT topic level: {exc}"
    topic = template.format(session_id=sid)
    if len(topic.encode()) > _MAX_TOPIC_BYTES:
        return None, f"session_id makes the topic longer than {_MAX_TOPIC_BYTES} bytes"
    return topic, ""


def _status_message(
    topic: str, entry: dict[str, Any], index: int, sizer: _Sizer, parent: str | None
) -> Message:
    if entry.get("event") == "session_start":
        body: dict[str, Any] = {"status": "open", "metadata": entry.get("metadata", {})}
        bulky = "metadata"
    else:
        body = {k: entry.get(k) for k in ("status", "duration_s", "entries")}
        # Fixed keys with their defaults, so a dashboard reads every close status alike: the
        # entry writes `discarded` and `summary` only when there are some.
        levels, summary = entry.get("levels"), entry.get("summary")
        body["levels"] = levels if isinstance(levels, dict) else {}
        body["discarded"] = entry.get("discarded", 0)
        body["summary"] = summary if isinstance(summary, dict) else {}
        bulky = "summary"
    body["parent_session_id"] = parent
    body["session_id"] = entry.get("session_id")
    body["timestamp"] = entry.get("timestamp")
    payload = orjson.dumps(body, default=repr)
    if not sizer.fits(f"{topic}/status", len(payload), 1):
        # The entry itself carries the metadata or summary; the status must still reach the
        # broker.
        body[bulky] = {"omitted": f"{len(payload)} bytes: larger than a packet may be"}
        payload = orjson.dumps(body, default=repr)
    # Retained and QoS 1 whatever the sink's QoS: a late subscriber must find the last status.
    return Message(f"{topic}/status", payload, retain=True, qos=1, entries=0, indices=(index,))


def _parent_of(entry: dict[str, Any]) -> str | None:
    parent = entry.get("parent_session_id")
    return parent if isinstance(parent, str) else None


def build_messages(
    batch: Batch,
    topic: str,
    entries_per_message: int,
    *,
    status: bool,
    limit: int | None = None,
    qos: int = 1,
    v5: bool = True,
    skip: Sequence[int] = (),
    no_status: Sequence[int] = (),
    parents: ParentBook | None = None,
) -> Plan:
    """Return the messages for ``batch`` in an order that keeps each session's order.

    Args:
        limit: the broker's largest packet in bytes (None: MQTT's own); packed messages are
            split to fit, and an entry too large to fit alone is rejected.
        skip: batch positions already given up on. no_status: positions whose status
            message must not be built again (the broker refused it).
        parents: the sink's book of open child sessions, updated from start entries (a batch
            built again reads the same); the caller forgets ``Plan.closed`` once published.
    """
    sizer = _Sizer(limit, qos, v5)
    if entries_per_message > 1 and not skip:
        plan = _logs_only(batch, topic, entries_per_message, sizer)
        if plan is not None:
            return plan
    lines = batch.lines()
    skipped = set(skip)
    silent = set(no_status)
    plan = Plan()
    # Per session id: its topic (None: it cannot be one), why not, and the topic's payload cap.
    topics: dict[object, tuple[str | None, str, int]] = {}
    groups: dict[str, list[int]] = {}  # per topic: the batch positions of its open message
    group_bytes: dict[str, int] = {}  # per topic: that message's payload bytes
    pending_status: dict[str, list[Message]] = {}
    out = plan.messages
    book = parents if parents is not None else ParentBook()
    ended: dict[str, bool] = {}
    packed = entries_per_message > 1

    def flush(t: str) -> None:
        group = groups.pop(t, None)
        group_bytes.pop(t, None)
        if group:
            payload = b"\n".join([lines[i] for i in group])
            out.append(Message(t, payload, entries=len(group), indices=tuple(group)))
        out.extend(pending_status.pop(t, ()))

    # (session_id, event, levelno) per entry: the dicts are not built for this; the few entries a
    # status needs are read from their lines.
    for i, (sid, event, _) in enumerate(batch.heads()):
        if i in skipped:
            continue
        key = sid if isinstance(sid, str) else repr(sid)
        found = topics.get(key)
        if found is None:
            topic_of, why = _topic_for(topic, sid)
            cap = -1 if topic_of is None else sizer.cap(topic_of)
            found = topics[key] = (topic_of, why, cap)
        t, why, cap = found
        if t is None:
            plan.reject(i, why)
            continue
        status_message: Message | None = None
        if event == "session_start" or event == "session_close":  # read from its line
            entry = batch.entry(i)
            # Before any size check: a start too large to publish still has a parent to name.
            if event == "session_start":
                book.started(key, _parent_of(entry))
                ended[key] = False
            else:
                ended[key] = True
            if status and i not in silent:
                status_message = _status_message(t, entry, i, sizer, book.get(key))
        line = lines[i]
        size = len(line)
        if size > cap:
            plan.reject(i, f"entry of {size} bytes exceeds the broker's packet limit")
            continue
        if not packed:
            out.append(Message(t, line, indices=(i,)))
            if status_message is not None:
                out.append(status_message)
            continue
        group = groups.get(t)
        if group is None:
            group = groups[t] = [i]
            group_bytes[t] = size
        elif group_bytes[t] + 1 + size > cap:  # one more line: its bytes and a newline
            flush(t)
            group = groups[t] = [i]
            group_bytes[t] = size
        else:
            group.append(i)
            group_bytes[t] += 1 + size
        if status_message is not None:
            pending_status.setdefault(t, []).append(status_message)
        if event == "session_close" or len(group) >= entries_per_message:
            flush(t)
    for t in list(groups):
        flush(t)
    for t in list(pending_status):
        flush(t)
    plan.closed = [sid for sid, closed in ended.items() if closed]
    return plan


def _logs_only(batch: Batch, template: str, entries_per_message: int, sizer: _Sizer) -> Plan | None:
    """The packed messages of a batch of log entries only (the usual batch: no start, no
    close), of one session or several, cut from its lines (one session's with no Python step
    per entry, several sessions' with one dict step per entry);
    ``None`` for any other batch, and for one whose messages must be split to fit, which the
    loop of :func:`build_messages` then plans. Both give the same messages in the same order:
    a full message where the loop sends it (at its last entry), the rest at the end in the
    order their first entries came."""
    size = len(batch)
    if not size:
        return None
    try:
        ids, events = batch.sessions_and_events()
    except TypeError:  # a formatter's unhashable session_id: the loop rejects it
        return None
    if events != {"log"}:
        return None
    topics: dict[Any, str] = {}
    for sid in ids:
        topic, _why = _topic_for(template, sid)
        if topic is None:
            return None  # the loop rejects each of its entries, with the reason
        topics[sid] = topic
    lines = batch.lines()
    plan = Plan()
    if len(topics) == 1:  # one session: its lines in order
        (topic,) = topics.values()
        cap = sizer.cap(topic)
        for start in range(0, size, entries_per_message):
            chunk = lines[start : start + entries_per_message]
            payload = b"\n".join(chunk)
            if len(payload) > cap:
                return None
            end = start + len(chunk)
            plan.messages.append(
                Message(topic, payload, entries=len(chunk), indices=tuple(range(start, end)))
            )
        return plan
    # Several: each session's positions in order (its topic is its own: the template names
    # the session), gathered in one pass; a sort by topic cost a third more, counted.
    buckets: dict[Any, list[int]] = {sid: [] for sid in topics}
    for i, sid in enumerate(batch.session_ids()):
        buckets[sid].append(i)
    placed: list[tuple[tuple[int, int], Message]] = []
    for sid, positions in buckets.items():
        topic = topics[sid]
        cap = sizer.cap(topic)
        for start in range(0, len(positions), entries_per_message):
            picked = positions[start : start + entries_per_message]
            payload = b"\n".join(map(lines.__getitem__, picked))
            if len(payload) > cap:
                return None
            # The loop sends a full message at its last entry, the others once it is through.
            at = (picked[-1], 0) if len(picked) == entries_per_message else (size, picked[0])
            placed.append((at, Message(topic, payload, entries=len(picked), indices=tuple(picked))))
    placed.sort(key=_PLACE)
    plan.messages.extend(message for _, message in placed)
    return plan


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

    def discard(self, message: Message) -> None:
        """Forget ``message`` (the broker will not take it again: stop replaying it)."""
        try:
            self._items.remove(message)
        except ValueError:
            return
        self._bytes -= len(message.payload)

    def __len__(self) -> int:
        return len(self._items)
