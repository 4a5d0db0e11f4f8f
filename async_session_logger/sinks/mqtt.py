"""``MqttSink``: session logs to an MQTT broker with aiomqtt, through disconnects, without loss.

Delivery is at-least-once: a batch is re-sent whole after a failure, and after every lost
connection the most recently acknowledged messages are re-sent too, because a broker that
crashed may have acknowledged messages it never forwarded (a SIGKILLed mosquitto loses them,
and one restarted from an older save even reports our session as present). Consumers
deduplicate on ``(session_id, seq)``.

An entry the broker will never take is dead-lettered, never re-sent forever: one larger than the
broker's packet limit (``max_packet_size=``, or the Maximum Packet Size a v5 broker announces),
one whose session id cannot be a topic level, and -- the backstop for a limit nobody announced --
a message after which the connection died three times in a row right after it was published.

With ``spool_path=`` the messages of a batch that finds the broker unreachable go to a bounded,
fsync'd spool file instead of waiting in memory (``_mqtt_spool.py``); it survives a crash and a
restart and is sent in order, before anything newer, whenever the sink is connected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import time
import uuid
from typing import Any, Final, Literal, NamedTuple

import aiomqtt
import orjson
from paho.mqtt import client as paho_client

from .._errors import ConfigurationError, SinkError
from ._base import Batch, Sink
from ._mqtt_payload import (
    MQTT_MAX_PACKET,
    Message,
    ParentBook,
    Plan,
    ReplayBuffer,
    build_messages,
)
from ._mqtt_spool import Spool, SpoolRecord

__all__ = ["MqttSink"]

_BACKOFF_INITIAL: Final = 0.2
_PUBLISH_CHUNK: Final = 1_000
# A connection that dies within _POISON_WINDOW seconds of a publish, twice in a row, may be
# refused a message (too large for a limit the broker did not announce): the next attempt sends
# one message at a time, and the one in flight when it dies a third time is dead-lettered
# instead of being re-sent forever. (Pipelined, the acks read before the drop say nothing:
# the broker's reset discards the acks still unread in our socket.)
_POISON_STRIKES: Final = 3
_POISON_WINDOW: Final = 5.0
# Spooled records sent per round trip of the drain (each round ends with an fsync'd ack).
_DRAIN_CHUNK: Final = 1_000

Protocol = Literal["5", "3.1.1"]


_client_logger = logging.getLogger("async_session_logger.mqtt")
_MAX_IN_FLIGHT: Final = 1_000  # publishes awaiting their acknowledgement, per client


class MqttSink(Sink):
    """Publish entries to ``topic`` (``{session_id}`` is replaced) on an MQTT broker.

    Args:
        host, port: the broker.
        topic: topic template; ``{session_id}`` is the entry's session. Session ids can never
            hold ``+``, ``#``, ``/`` or control characters (the logger refuses them).
        qos: 0 or 1 (1: the broker acknowledges every message, and an MQTT 5 broker's refusal
            in that acknowledgement dead-letters the message's entries; 2 is not needed for
            at-least-once with deduplication, costs a round trip more, and paho drops the
            reason code that would say a message was refused).
        client_id: MQTT client id (default ``asl-HOST-PID-RANDOM``), also in the logger topic.
        username, password: broker credentials (never shown in repr, stats or errors).
        tls_context: TLS with this context; ``tls=True`` uses the system's trusted CAs. Hostnames
            and certificates are always verified.
        keepalive: seconds between MQTT pings.
        entries_per_message: above 1, up to that many entries of one session travel in one
            message as JSON Lines (the way to high rates).
        status: publish a retained ``{topic}/status`` message when a session starts (``open``)
            and closes (its status, duration, level counts, discarded entries, summary), for
            subscribers that connect later; both name the parent of a child session.
        logger_topic: retained ``online`` / ``offline`` status of this process, with a last will
            so the broker marks it ``offline`` if the process dies (default
            ``session_loggers/{client_id}``: outside the session topics, so a ``logs/#`` consumer
            sees only entries and session statuses; None: off).
        replay_window, replay_bytes: how many recently acknowledged messages (and bytes) are
            re-sent after a lost connection (0 turns the replay off).
        max_packet_size: the largest MQTT packet to send, in bytes (None: no limit of ours). A
            v5 broker's own Maximum Packet Size (its ``max_packet_size``) is learnt at each
            connect and applies as well: packed messages are split to fit it, and an entry
            that cannot fit alone is dead-lettered and reported instead of being published.
        protocol: ``"5"`` (default; needed to learn the broker's packet limit) or ``"3.1.1"``
            for a broker that speaks only MQTT 3.1.1.
        connect_timeout, publish_timeout: seconds for a connection attempt and for the broker
            to acknowledge a chunk of messages before the connection counts as dead.
        reconnect_max: the longest pause between reconnection attempts (exponential backoff
            with jitter from 0.2 s).
        buffer_size: entries held for the broker while it is unreachable (the lane's
            ``max_pending``); past it the oldest log entries are dead-lettered and counted,
            start and close entries are kept.
        spool_path: a file where the messages of batches that find the broker unreachable are
            appended (fsync'd per batch) instead of waiting in memory; it survives a crash and a
            restart, is replayed first at the next connection, and shrinks only as the broker
            acknowledges. A symlink, a non-file, a file of another format or one written for
            another host/port/topic is refused with ``ConfigurationError`` at ``open()``.
        spool_max_bytes: the spool's bound; the entries of messages past it are dead-lettered
            and counted (reported once per incident).
        **options: the other lane options of :class:`Sink` (``name``, ``min_level`` ...).
    """

    default_name = "mqtt"
    default_overflow = "dead_letter"
    # write_batch waits for the broker to come back; the lane's bound is the buffer instead.
    default_timeout = None
    # A batch interrupted by a lost connection is re-sent whole: keep it to ~2,000 messages.
    default_max_batch = 2_000

    def __init__(
        self,
        host: str = "localhost",
        port: int = 1883,
        *,
        topic: str = "logs/{session_id}",
        qos: int = 1,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        keepalive: int = 60,
        entries_per_message: int = 1,
        status: bool = True,
        logger_topic: str | None = "session_loggers/{client_id}",
        replay_window: int = 10_000,
        replay_bytes: int = 16 * 1024 * 1024,
        max_packet_size: int | None = None,
        protocol: Protocol = "5",
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        reconnect_max: float = 30.0,
        buffer_size: int = 100_000,
        spool_path: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 64 * 1024 * 1024,
        **options: Any,
    ) -> None:
        options.setdefault("max_pending", buffer_size)
        # Bound a batch in messages (what a lost connection makes us re-send): 2,000 of them.
        options.setdefault("max_batch", 2_000 * max(1, entries_per_message))
        super().__init__(**options)
        if qos not in (0, 1, 2):
            raise ConfigurationError(f"qos must be 0, 1 or 2, got {qos}")
        if entries_per_message < 1:
            raise ConfigurationError("entries_per_message must be >= 1")
        if protocol not in ("5", "3.1.1"):
            raise ConfigurationError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
        if max_packet_size is not None and not 64 <= max_packet_size <= MQTT_MAX_PACKET:
            raise ConfigurationError(
                f"max_packet_size must be between 64 and {MQTT_MAX_PACKET}, got {max_packet_size}"
            )
        if "{session_id}" not in topic:
            raise ConfigurationError(f"topic {topic!r} must contain {{session_id}}")
        for char in "+#":
            if char in topic.replace("{session_id}", ""):
                raise ConfigurationError(f"topic {topic!r} must not contain {char!r}")
        self.host = host
        self.port = port
        self.topic = topic
        self.qos = qos
        self.client_id = (
            client_id or f"asl-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.username = username
        self._password = password
        self.tls_context = tls_context or (ssl.create_default_context() if tls else None)
        self.keepalive = keepalive
        self.entries_per_message = entries_per_message
        self.status = status
        self.logger_topic = logger_topic.format(client_id=self.client_id) if logger_topic else None
        self.replay_window = replay_window
        self.max_packet_size = max_packet_size
        self.protocol: Protocol = protocol
        self._broker_limit: int | None = None
        self._receive_maximum: int | None = None
        # The chunks awaiting acknowledgements (one at a time: the spool lock keeps the drain
        # and live batches apart; a set, so that a second could never steal the first's acks).
        self._windows: set[_Window] = set()
        self._reported: set[str] = set()
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.reconnect_max = reconnect_max
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._replay = ReplayBuffer(replay_window, replay_bytes)
        self._replay_pending = False
        self._parents = ParentBook()
        self._incident = False
        self.counters: dict[str, int] = {
            "published_messages": 0,
            "published_entries": 0,
            "resent_messages": 0,
            "replayed_messages": 0,
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
            "oversized_entries": 0,
            "bad_topic_entries": 0,
            "poison_messages": 0,
            "refused_messages": 0,
            "refused_entries": 0,
        }
        self.last_error: str | None = None
        self._known_limit: int | None = None
        self._spool = (
            None
            if spool_path is None
            else Spool(
                spool_path,
                spool_max_bytes,
                # What decides where a spooled message goes: another broker or topic template
                # must not receive it (the messages themselves are already built).
                {"host": host, "port": port, "topic": topic},
            )
        )
        self._spool_lock = asyncio.Lock()
        self._drain_task: asyncio.Task[None] | None = None
        self._draining = False
        self._spool_full_incident = False
        # Quick connection losses in a row while draining (see _POISON_STRIKES).
        self._drain_strikes = 0
        self.spool_counters: dict[str, int] = {
            "spooled_messages": 0,
            "spooled_entries": 0,
            "unspooled_messages": 0,
            "unspooled_entries": 0,
            "spool_full_entries": 0,
            "spool_poison_messages": 0,
        }

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the spool, then connect in the background: a broker that is down is no error."""
        spool = self._spool
        if spool is not None:
            await asyncio.to_thread(spool.open)
            if spool.torn_records or spool.corrupt_records:
                self._report(
                    f"sink {self.name!r} skipped {spool.torn_records} torn and "
                    f"{spool.corrupt_records} damaged records of its spool {str(spool.path)!r} "
                    f"(a crash while writing); {spool.records} records are replayed",
                    None,
                )
        self._task = asyncio.get_running_loop().create_task(
            self._maintain(), name=f"async_session_logger.mqtt[{self.name}]"
        )

    async def close(self) -> None:
        """Mark this process offline, disconnect and stop reconnecting."""
        self._closing = True
        client = self._client
        if client is not None and self._connected.is_set():
            try:
                if self.logger_topic:
                    await client.publish(
                        self.logger_topic,
                        self._presence("offline"),
                        qos=1,
                        retain=True,
                        timeout=2,
                    )
                await client.__aexit__(None, None, None)
            except Exception:  # closing anyway: the last will says offline if this failed
                pass
        for task in (self._task, self._drain_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._spool is not None:
            # Under the lock: a write_batch cancelled at close must not leave a half-done append.
            async with self._spool_lock:
                await asyncio.to_thread(self._spool.close)

    @property
    def healthy(self) -> bool:
        """Whether the sink is connected to its broker."""
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        """Counters of messages and connections (entries are counted by the logger's lane)."""
        stats: dict[str, Any] = {
            **self.counters,
            "connected": self.healthy,
            "packet_limit": self.packet_limit,
            "receive_maximum": self._receive_maximum,
            "last_error": self.last_error,
        }
        spool = self._spool
        if spool is not None:
            stats["spool"] = {
                "path": str(spool.path),
                "records": spool.records,
                "entries": spool.entries,
                "bytes": spool.bytes,
                "max_bytes": spool.max_bytes,
                "draining": self._draining,
                "torn_records": spool.torn_records,
                "corrupt_records": spool.corrupt_records,
                **self.spool_counters,
            }
        return stats

    @property
    def packet_limit(self) -> int | None:
        """The largest packet this sink sends now: ours or the broker's, the smaller."""
        limits = [n for n in (self.max_packet_size, self._broker_limit) if n]
        return min(limits) if limits else None

    def __repr__(self) -> str:
        user = f" user={self.username!r}" if self.username else ""
        tls = " tls" if self.tls_context else ""
        return f"<MqttSink {self.name!r} {self.host}:{self.port}{tls}{user} topic={self.topic!r}>"

    # -- connection -------------------------------------------------------------------------
    def _presence(self, state: str) -> bytes:
        return orjson.dumps(
            {
                "client_id": self.client_id,
                "status": state,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "timestamp": time.time(),
            }
        )

    async def _maintain(self) -> None:
        attempt = 0
        while not self._closing:
            v5 = self.protocol == "5"
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                username=self.username,
                password=self._password,
                protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
                # paho takes clean_session only for 3.1.1 and clean_start=True only for v5.
                clean_session=None if v5 else True,
                clean_start=True if v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
                keepalive=self.keepalive,
                tls_context=self.tls_context,
                timeout=self.connect_timeout,
                will=aiomqtt.Will(self.logger_topic, self._presence("offline"), 1, True)
                if self.logger_topic
                else None,
                # Unbounded in paho: _publish_all bounds what is in flight itself (paho's own
                # bound scans every message in flight at each acknowledgement).
                max_inflight_messages=0,
                logger=_client_logger,
            )
            self._broker_limit = None
            self._receive_maximum = None
            self._listen_for_connack(client)
            self._listen_for_acks(client)
            try:
                await client.__aenter__()
            except Exception as exc:
                self.counters["connect_failures"] += 1
                self._fail(f"cannot connect to {self.host}:{self.port}", exc)
                attempt += 1
                delay = min(self.reconnect_max, _BACKOFF_INITIAL * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            attempt = 0
            self.counters["connects"] += 1
            if self.counters["connects"] > 1 and len(self._replay):
                # What the broker acknowledged just before the connection died may never have
                # reached a subscriber (a crashed broker loses it): send the recent window again.
                self._replay_pending = True
            self._client = client
            self._lost.clear()
            self._connected.set()
            if self._incident:
                self._report(f"sink {self.name!r} reconnected to {self.host}:{self.port}", None)
                self._incident = False
            if self._spool is not None and self._spool.records:
                self._drain_task = asyncio.get_running_loop().create_task(self._drain(client))
            # Announced beside the watch, not before it: a connection that dies before the
            # ack must be noticed at once, not after the publish's timeout.
            online = asyncio.ensure_future(self._announce(client))
            await self._watch(client)
            online.cancel()
            await asyncio.gather(online, return_exceptions=True)
            self._connected.clear()
            self._set_lost()
            if not self._closing:
                self.counters["disconnects"] += 1
                self._fail(f"lost the connection to {self.host}:{self.port}", None)
                await asyncio.gather(client.__aexit__(None, None, None), return_exceptions=True)

    async def _announce(self, client: aiomqtt.Client) -> None:
        if self.logger_topic:
            try:
                await client.publish(
                    self.logger_topic,
                    self._presence("online"),
                    qos=1,
                    retain=True,
                    timeout=self.publish_timeout,
                )
            except (aiomqtt.MqttError, TimeoutError):
                pass

    def _listen_for_connack(self, client: aiomqtt.Client) -> None:
        # aiomqtt drops the CONNACK properties: wrap its paho callback to keep the broker's
        # Maximum Packet Size (MQTT v5 §3.2.2.3.6), so nothing larger is ever sent.
        paho = client._client
        forward = paho.on_connect

        def on_connect(*args: Any) -> None:
            properties = args[4] if len(args) > 4 else None
            limit = getattr(properties, "MaximumPacketSize", None)
            self._broker_limit = int(limit) if limit else None
            # How many QoS 1 publishes the broker takes unacknowledged (§3.2.2.3.3): a client
            # that sends more may be disconnected (mosquitto announces its
            # max_inflight_messages, 20 by default, but tolerates more; others do not).
            receive = getattr(properties, "ReceiveMaximum", None)
            self._receive_maximum = int(receive) if receive else None
            # Kept past this connection: messages spooled while disconnected must fit it too.
            self._known_limit = self._broker_limit
            if forward is not None:
                forward(*args)

        paho.on_connect = on_connect

    def _listen_for_acks(self, client: aiomqtt.Client) -> None:
        # The acknowledgements of _publish_all's messages go to their window; aiomqtt's own
        # publishes (the presence status) to aiomqtt.
        forward = client._client.on_publish

        def on_publish(paho: Any, userdata: Any, mid: int, *rest: Any) -> None:
            code = rest[0] if rest else None
            mine = any(window.ack(paho, mid, code) for window in self._windows)
            if not mine and forward is not None:
                forward(paho, userdata, mid, *rest)

        client._client.on_publish = on_publish

    @property
    def _in_flight_limit(self) -> int:
        # One below the broker's Receive Maximum: the presence status may be in flight too.
        receive = self._receive_maximum
        return _MAX_IN_FLIGHT if receive is None else max(1, min(_MAX_IN_FLIGHT, receive - 1))

    async def _watch(self, client: aiomqtt.Client) -> None:
        # Iterating messages is aiomqtt's way to learn of a disconnect within milliseconds.
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _fail(self, what: str, exc: BaseException | None) -> None:
        if exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._incident:
            self._incident = True
            keeping = "spooling to disk" if self._spool is not None else "buffering"
            self._report(
                f"sink {self.name!r} {what}; {keeping} and retrying with backoff "
                "(further attempts are counted, not printed)",
                exc,
            )

    def _report(self, message: str, exc: BaseException | None) -> None:
        error = SinkError(message, sink_name=self.name)
        error.__cause__ = exc
        self.report(error)

    # -- publishing -------------------------------------------------------------------------
    async def write_batch(self, batch: Batch) -> None:
        """Publish the batch; wait for the broker while it is unreachable, then re-send.

        Entries the broker will never take are dead-lettered once the others are through (so
        a batch abandoned at close is dead-lettered whole, never twice).
        """
        refused: dict[str, list[int]] = {}
        skip: set[int] = set()
        no_status: set[int] = set()
        suspect = _Suspect()
        if self._spool is not None:
            async with self._spool_lock:
                if self._spool.records or not self._connected.is_set():
                    # Behind what is spooled already: nothing of a session overtakes it.
                    await self._to_spool(batch, refused, skip, no_status)
                    if self._connected.is_set() and self._client is not None:
                        await self._drain_locked(self._client)
                    return
        while True:
            if self._spool is not None and not self._connected.is_set():
                async with self._spool_lock:
                    # Lost mid-batch: the whole rest is spooled (what was acknowledged is sent
                    # again: at-least-once).
                    await self._to_spool(batch, refused, skip, no_status)
                return
            await self._connected.wait()
            client = self._client
            assert client is not None
            # Built after connecting: the broker's packet limit comes with its CONNACK.
            plan = self._plan(batch, self.packet_limit, skip, no_status)
            for reason, indices in plan.rejected.items():
                self._refuse(refused, skip, reason, indices)
            if self._replay_pending:
                self._replay_pending = False
                replay = suspect.pending(self._replay.snapshot())
                outcome = await self._publish_all(client, replay, suspect.chunk)
                for at, _why in outcome.refused:
                    # Acknowledged once already (what it carries counts as published): the
                    # broker refuses it now, so stop replaying it.
                    self._replay.discard(replay[at])
                    self.counters["refused_messages"] += 1
                loss = outcome.loss
                if loss is not None:
                    self._replay_pending = True
                    poison = suspect.lost(replay, loss)
                    if poison is not None:
                        # Acknowledged once already: stop replaying it, nothing to dead-letter.
                        self._replay.discard(poison)
                        self._poisoned(0)
                    continue
                self.counters["replayed_messages"] += len(replay)
            messages = suspect.pending(plan.messages)
            outcome = await self._publish_all(client, messages, suspect.chunk)
            for at, why in outcome.refused:
                self._refused_message(messages[at], why, refused, skip, no_status)
            loss = outcome.loss
            if loss is None:
                gone = {id(messages[at]) for at, _why in outcome.refused}
                published = (
                    [m for m in plan.messages if id(m) not in gone] if gone else plan.messages
                )
                self.counters["published_messages"] += len(published)
                self.counters["published_entries"] += len(batch) - len(skip)
                self._replay.extend(published)
                self._parents.forget(plan.closed)
                for reason, indices in refused.items():
                    await self.dead_letter(batch.select(indices), reason)
                return
            self.counters["resent_messages"] += len(messages)
            poison = suspect.lost(messages, loss)
            if poison is not None:
                if poison.entries:
                    reason = (
                        f"the broker dropped the connection {_POISON_STRIKES} times in a row "
                        "right after this message (too large, or refused by its ACL?)"
                    )
                    self._refuse(refused, skip, reason, list(poison.indices), poison=True)
                else:
                    no_status.update(poison.indices)  # a status message: its entry still goes
                self._poisoned(poison.entries)

    # -- spool ------------------------------------------------------------------------------
    @property
    def _spool_limit(self) -> int | None:
        limits = [n for n in (self.max_packet_size, self._known_limit) if n]
        return min(limits) if limits else None

    def _plan(self, batch: Batch, limit: int | None, skip: set[int], no_status: set[int]) -> Plan:
        # The batch as this sink publishes it (to the broker, or to the spool).
        return build_messages(
            batch,
            self.topic,
            self.entries_per_message,
            status=self.status,
            limit=limit,
            qos=self.qos,
            v5=self.protocol == "5",
            skip=sorted(skip),
            no_status=sorted(no_status),
            parents=self._parents if self.status else None,
        )

    async def _to_spool(
        self,
        batch: Batch,
        refused: dict[str, list[int]],
        skip: set[int],
        no_status: set[int],
    ) -> None:
        """Append the batch's messages to the spool (under its lock); dead-letter what cannot."""
        spool = self._spool
        assert spool is not None
        plan = self._plan(batch, self._spool_limit, skip, no_status)
        for reason, indices in plan.rejected.items():
            self._refuse(refused, skip, reason, indices)
        taken = await asyncio.to_thread(spool.append, plan.messages)
        spooled = plan.messages[:taken]
        self.spool_counters["spooled_messages"] += taken
        self.spool_counters["spooled_entries"] += sum(m.entries for m in spooled)
        self._parents.forget(plan.closed)
        full = [i for m in plan.messages[taken:] if m.entries for i in m.indices]
        if full:
            reason = f"spool full ({spool.max_bytes} bytes at {str(spool.path)!r})"
            self.spool_counters["spool_full_entries"] += len(full)
            if not self._spool_full_incident:
                self._spool_full_incident = True
                self._report(
                    f"sink {self.name!r}: its spool is full; entries are dead-lettered until it "
                    "drains (further ones are counted in stats, not printed)",
                    None,
                )
            refused.setdefault(reason, []).extend(full)
        for reason, indices in refused.items():
            await self.dead_letter(batch.select(indices), reason)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send the spool after a (re)connection, before any newer batch."""
        async with self._spool_lock:
            await self._drain_locked(client)

    async def _drain_locked(self, client: aiomqtt.Client) -> None:
        spool = self._spool
        assert spool is not None
        self._draining = True
        try:
            while spool.records and self._connected.is_set() and self._client is client:
                # After two quick losses in a row, one at a time: the third names the poison.
                alone = self._drain_strikes >= _POISON_STRIKES - 1
                records = await asyncio.to_thread(spool.read, 1 if alone else _DRAIN_CHUNK)
                if not records:
                    break
                outcome = await self._publish_all(
                    client, [r.message for r in records], 1 if alone else _PUBLISH_CHUNK
                )
                loss = outcome.loss
                done = records if loss is None else records[: loss.at]
                # Refusals past a loss stay on the spool with the rest of it, to be sent again.
                refusals = [(at, why) for at, why in outcome.refused if at < len(done)]
                for at, why in refusals:
                    # Dead-lettered before they leave the spool: a crash or a close in between
                    # makes them go again (and be refused again), never vanish.
                    self.counters["refused_messages"] += 1
                    message = records[at].message
                    self.counters["refused_entries"] += message.entries
                    await self._dead_letter_message(message, why)
                    self._report_once("refused_entries", why)
                # Recorded before anything else is sent: a crash now re-sends only the rest.
                await asyncio.to_thread(spool.ack, done)
                self.spool_counters["unspooled_messages"] += len(done)
                self.spool_counters["unspooled_entries"] += sum(r.message.entries for r in done)
                gone = {at for at, _why in refusals}
                published = [r.message for at, r in enumerate(done) if at not in gone]
                self.counters["published_messages"] += len(published)
                self.counters["published_entries"] += sum(m.entries for m in published)
                self._replay.extend(published)
                if loss is not None:
                    if not loss.quick:
                        self._drain_strikes = 0
                        return
                    self._drain_strikes += 1
                    if alone and self._drain_strikes >= _POISON_STRIKES:
                        await self._unspool_poison(records[loss.at])
                    return
            self._drain_strikes = 0
            if not spool.records and self._spool_full_incident:
                self._spool_full_incident = False
                self._report(f"sink {self.name!r}: its spool drained", None)
        finally:
            self._draining = False

    async def _unspool_poison(self, record: SpoolRecord) -> None:
        """Take a spooled message the broker keeps refusing out: its entries are dead-lettered."""
        spool = self._spool
        assert spool is not None
        # Dead-lettered first, then taken off (only the record itself: everything before it
        # is acknowledged already): a close or a crash in between sends it again, never
        # loses it.
        await self._dead_letter_message(
            record.message,
            f"the broker dropped the connection {_POISON_STRIKES} times in a row "
            "right after this spooled message (too large, or refused by its ACL?)",
        )
        await asyncio.to_thread(spool.ack, [record])
        self._drain_strikes = 0
        self.spool_counters["spool_poison_messages"] += 1
        self._report(
            f"sink {self.name!r} took a message off its spool after the broker dropped the "
            f"connection {_POISON_STRIKES} times in a row at it (its entries are dead-lettered)",
            None,
        )

    async def _dead_letter_message(self, message: Message, reason: str) -> None:
        """Dead-letter the entries a built message carries (read back from its lines)."""
        lines = [line for line in message.payload.split(b"\n") if line.strip()]
        if not message.entries or not lines:
            return
        try:
            entries = [orjson.loads(line) for line in lines]
        except orjson.JSONDecodeError:
            return
        await self.dead_letter(Batch(entries, b"".join(line + b"\n" for line in lines)), reason)

    def _refuse(
        self,
        refused: dict[str, list[int]],
        skip: set[int],
        reason: str,
        indices: list[int],
        *,
        poison: bool = False,
        kind: str | None = None,
    ) -> None:
        """Set entries aside for the dead-letter file; report the first of each kind."""
        refused.setdefault(reason, []).extend(indices)
        skip.update(indices)
        if poison:
            kind = "poison_messages"  # counted per message by _poisoned
        else:
            if kind is None:
                bad_topic = reason.startswith("session_id")
                kind = "bad_topic_entries" if bad_topic else "oversized_entries"
            self.counters[kind] += len(indices)
        self._report_once(kind, reason)

    def _report_once(self, kind: str, reason: str) -> None:
        """Report the first dead-lettering of each kind (the others are counted in stats)."""
        if kind not in self._reported:
            self._reported.add(kind)
            self._report(
                f"sink {self.name!r} dead-letters entries it cannot publish: {reason} "
                "(further ones are counted in stats, not printed)",
                None,
            )

    def _refused_message(
        self,
        message: Message,
        why: str,
        refused: dict[str, list[int]],
        skip: set[int],
        no_status: set[int],
    ) -> None:
        """The broker acknowledged ``message`` with a failure reason code: its entries are
        dead-lettered (a status message is not built again; its entry went on its own)."""
        self.counters["refused_messages"] += 1
        if message.entries:
            self._refuse(refused, skip, why, list(message.indices), kind="refused_entries")
        else:
            no_status.update(message.indices)

    def _poisoned(self, entries: int) -> None:
        self.counters["poison_messages"] += 1
        if not entries and "poison_messages" not in self._reported:
            self._reported.add("poison_messages")
            self._report(
                f"sink {self.name!r} stopped re-sending a status or replayed message after "
                f"the broker dropped the connection {_POISON_STRIKES} times in a row at it",
                None,
            )

    async def _publish_all(
        self, client: aiomqtt.Client, messages: list[Message], size: int = _PUBLISH_CHUNK
    ) -> _Outcome:
        """Publish in order, ``size`` at a time (never more than the broker's Receive Maximum
        in flight); return where the connection died, if it did, and what the broker refused.

        paho is called directly and its acknowledgements are read from its callback
        (:class:`_Window`): aiomqtt's ``publish()`` costs a task, an event, a ``wait_for``
        and two scans of every pending call per message, and ignores the reason code of a
        PUBACK, which is how an MQTT 5 broker refuses a message (its ACL, a quota).
        """
        loop = asyncio.get_running_loop()
        paho = client._client
        size = min(size, self._in_flight_limit)
        refused: list[tuple[int, str]] = []
        for start in range(0, len(messages), size):
            chunk = messages[start : start + size]
            sent_at = loop.time()
            window = _Window(paho, loop.create_future())
            self._windows.add(window)
            error: Exception | None = None
            try:
                for index, m in enumerate(chunk):
                    qos = self.qos if m.qos is None else m.qos
                    info = paho.publish(m.topic, m.payload, qos, m.retain)
                    if info.rc != paho_client.MQTT_ERR_SUCCESS:
                        error = aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                        break
                    window.expect(info.mid, index)
                if error is None and self._lost.is_set():
                    error = aiomqtt.MqttError("the connection was lost")
                if error is None:
                    window.arm()
                    timer = loop.call_later(self.publish_timeout, window.wake)
                    try:
                        await window.done
                    finally:
                        timer.cancel()
            finally:
                self._windows.discard(window)
            refused.extend((start + i, why) for i, why in window.refused)
            if window.left == 0 and error is None:
                continue
            quick = loop.time() - sent_at < _POISON_WINDOW
            where = start + window.first_unacked(len(chunk))
            if error is None and not self._lost.is_set():
                error = TimeoutError(
                    f"the broker acknowledged {len(chunk) - window.left} of {len(chunk)} "
                    f"messages in {self.publish_timeout} s"
                )
            if error is not None:
                self.last_error = f"{type(error).__name__}: {error}"
                # A dead connection that the watchdog has not noticed yet: make it reconnect.
                if self._connected.is_set() and self._client is client:
                    self._connected.clear()
                    self._set_lost()
                    self._fail("could not publish", error)
                    _force_disconnect(client)
            return _Outcome(_Loss(where, quick), refused)
        return _Outcome(None, refused)

    def _set_lost(self) -> None:
        self._lost.set()
        for window in self._windows:
            window.wake()


class _Window:
    """The acknowledgements one chunk of publishes awaits, by message id.

    ``ack()`` is called from paho's ``on_publish`` (in the loop's thread): for QoS 1 when the
    PUBACK arrives, for QoS 0 when the packet is written.
    """

    __slots__ = ("_armed", "_mids", "codes", "done", "left", "paho")

    def __init__(self, paho: paho_client.Client, done: asyncio.Future[None]) -> None:
        self.paho = paho
        self.done = done
        self._mids: dict[int, int] = {}
        self.codes: dict[int, Any] = {}
        self.left = 0
        self._armed = False

    def expect(self, mid: int, index: int) -> None:
        self._mids[mid] = index
        self.left += 1

    def arm(self) -> None:
        """Every message is out: ``done`` resolves once the last one is acknowledged."""
        self._armed = True
        if not self.left:
            self.wake()

    def wake(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def ack(self, paho: Any, mid: int, code: Any) -> bool:
        """Record ``mid``'s acknowledgement; False if it is not one of this chunk's."""
        if paho is not self.paho:
            return False
        index = self._mids.pop(mid, None)
        if index is None:
            return False
        self.codes[index] = code
        self.left -= 1
        if not self.left and self._armed:
            self.wake()
        return True

    def first_unacked(self, size: int) -> int:
        codes = self.codes
        for index in range(size):
            if index not in codes:
                return index
        return size

    @property
    def refused(self) -> list[tuple[int, str]]:
        """The messages the broker acknowledged with a failure reason code, with the reason."""
        return [
            (index, f"the broker refused it: {code} (0x{int(code.value):02x})")
            for index, code in sorted(self.codes.items())
            if getattr(code, "is_failure", False)
        ]


class _Outcome(NamedTuple):
    """How a run of publishes ended: where the connection died (None: it did not), and the
    messages the broker refused, by position, with its reason."""

    loss: _Loss | None
    refused: list[tuple[int, str]]


class _Loss(NamedTuple):
    """Where a connection died: the first unacknowledged message, and whether it died soon."""

    at: int
    quick: bool


class _Suspect:
    """Find the message a broker refuses by dropping the connection, without guessing."""

    def __init__(self) -> None:
        self._quick_losses = 0
        self._acked: set[tuple[str, bytes]] = set()

    @property
    def chunk(self) -> int:
        """How many messages to publish at once: one while looking for the poison."""
        return 1 if self._quick_losses >= _POISON_STRIKES - 1 else _PUBLISH_CHUNK

    def pending(self, messages: list[Message]) -> list[Message]:
        """Return the messages still to send (one at a time, the acknowledged ones are done)."""
        if self.chunk > 1 or not self._acked:
            return messages
        return [m for m in messages if (m.topic, m.payload) not in self._acked]

    def lost(self, sent: list[Message], loss: _Loss) -> Message | None:
        """Record a lost connection; return the poison message once it is certain."""
        if not loss.quick:
            self._quick_losses = 0
            self._acked.clear()
            return None
        one_at_a_time = self.chunk == 1
        self._quick_losses += 1
        if not one_at_a_time or loss.at >= len(sent):
            return None
        # Sent alone and acknowledged before the next one went: these are through.
        self._acked.update((m.topic, m.payload) for m in sent[: loss.at])
        return sent[loss.at]


def _force_disconnect(client: aiomqtt.Client) -> None:
    # Closing paho's socket makes the watchdog's iteration end, which starts a reconnect.
    try:
        client._client.disconnect()
    except Exception:
        pass
