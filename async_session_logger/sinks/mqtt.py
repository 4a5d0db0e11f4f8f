"""``MqttSink``: session logs to an MQTT broker with aiomqtt, through disconnects, without loss.

Delivery is at-least-once: a batch is re-sent whole after a failure, and after every lost
connection the most recently acknowledged messages are re-sent too, because a broker that
crashed may have acknowledged messages it never forwarded (a SIGKILLed mosquitto loses them,
and one restarted from an older save even reports our session as present). Consumers
deduplicate on ``(session_id, seq)``.
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
from typing import Any, Final

import aiomqtt
import orjson

from .._errors import ConfigurationError, SinkError
from ._base import Batch, Sink
from ._mqtt_payload import Message, ReplayBuffer, build_messages

__all__ = ["MqttSink"]

_BACKOFF_INITIAL: Final = 0.2
_PUBLISH_CHUNK: Final = 1_000


class _DropPendingWarnings(logging.Filter):
    """Drop aiomqtt's "There are N pending publish calls" warnings.

    The sink keeps up to a thousand publishes in flight on purpose (that is how QoS 1 reaches
    thousands of messages per second), and a bridge from stdlib logging into this sink must not
    receive one warning per publish about it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("There are %d pending publish calls")


_client_logger = logging.getLogger("async_session_logger.mqtt")
_client_logger.addFilter(_DropPendingWarnings())


class MqttSink(Sink):
    """Publish entries to ``topic`` (``{session_id}`` is replaced) on an MQTT broker.

    Args:
        host, port: the broker.
        topic: topic template; ``{session_id}`` is the entry's session. Session ids can never
            hold ``+``, ``#``, ``/`` or control characters (the logger refuses them).
        qos: 0 or 1 (1: the broker acknowledges every message; 2 is not needed for at-least-once
            with deduplication and costs a round trip more).
        client_id: MQTT client id (default ``asl-HOST-PID-RANDOM``), also in the logger topic.
        username, password: broker credentials (never shown in repr, stats or errors).
        tls_context: TLS with this context; ``tls=True`` uses the system's trusted CAs. Hostnames
            and certificates are always verified.
        keepalive: seconds between MQTT pings.
        entries_per_message: above 1, up to that many entries of one session travel in one
            message as JSON Lines (the way to high rates).
        status: publish a retained ``{topic}/status`` message when a session starts (``open``)
            and closes (its status), for subscribers that connect later.
        logger_topic: retained ``online`` / ``offline`` status of this process, with a last will
            so the broker marks it ``offline`` if the process dies (default
            ``session_loggers/{client_id}``: outside the session topics, so a ``logs/#`` consumer
            sees only entries and session statuses; None: off).
        replay_window, replay_bytes: how many recently acknowledged messages (and bytes) are
            re-sent after a lost connection (0 turns the replay off).
        connect_timeout, publish_timeout: seconds for a connection attempt and for the broker
            to acknowledge a chunk of messages before the connection counts as dead.
        reconnect_max: the longest pause between reconnection attempts (exponential backoff
            with jitter from 0.2 s).
        buffer_size: entries held for the broker while it is unreachable (the lane's
            ``max_pending``); past it the oldest log entries are dead-lettered and counted,
            start and close entries are kept.
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
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        reconnect_max: float = 30.0,
        buffer_size: int = 100_000,
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
        self._incident = False
        self.counters: dict[str, int] = {
            "published_messages": 0,
            "published_entries": 0,
            "resent_messages": 0,
            "replayed_messages": 0,
            "connects": 0,
            "connect_failures": 0,
            "disconnects": 0,
        }
        self.last_error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Start connecting in the background: a broker that is down is not an error here."""
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
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def healthy(self) -> bool:
        """Whether the sink is connected to its broker."""
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        """Counters of messages and connections (entries are counted by the logger's lane)."""
        return {**self.counters, "connected": self.healthy, "last_error": self.last_error}

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
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                username=self.username,
                password=self._password,
                clean_session=True,
                keepalive=self.keepalive,
                tls_context=self.tls_context,
                timeout=self.connect_timeout,
                will=aiomqtt.Will(self.logger_topic, self._presence("offline"), 1, True)
                if self.logger_topic
                else None,
                max_inflight_messages=1000,
                logger=_client_logger,
            )
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
            if self.logger_topic:
                try:
                    await client.publish(
                        self.logger_topic, self._presence("online"), qos=1, retain=True
                    )
                except aiomqtt.MqttError:
                    pass
            await self._watch(client)
            self._connected.clear()
            self._lost.set()
            if not self._closing:
                self.counters["disconnects"] += 1
                self._fail(f"lost the connection to {self.host}:{self.port}", None)
                await asyncio.gather(client.__aexit__(None, None, None), return_exceptions=True)

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
            self._report(
                f"sink {self.name!r} {what}; buffering and retrying with backoff "
                "(further attempts are counted, not printed)",
                exc,
            )

    def _report(self, message: str, exc: BaseException | None) -> None:
        error = SinkError(message, sink_name=self.name)
        error.__cause__ = exc
        self.report(error)

    # -- publishing -------------------------------------------------------------------------
    async def write_batch(self, batch: Batch) -> None:
        """Publish the batch; wait for the broker while it is unreachable, then re-send."""
        messages = build_messages(batch, self.topic, self.entries_per_message, status=self.status)
        while True:
            await self._connected.wait()
            client = self._client
            assert client is not None
            if self._replay_pending:
                self._replay_pending = False
                replay = self._replay.snapshot()
                if not await self._publish_all(client, replay):
                    self._replay_pending = True
                    continue
                self.counters["replayed_messages"] += len(replay)
            if await self._publish_all(client, messages):
                self.counters["published_messages"] += len(messages)
                self.counters["published_entries"] += len(batch)
                self._replay.extend(messages)
                return
            self.counters["resent_messages"] += len(messages)

    async def _publish_all(self, client: aiomqtt.Client, messages: list[Message]) -> bool:
        """Publish in order; return False when the connection died before every ack."""
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            chunk = messages[start : start + _PUBLISH_CHUNK]
            sends: asyncio.Future[Any] = asyncio.gather(
                *(
                    client.publish(
                        m.topic,
                        m.payload,
                        qos=m.qos if m.qos is not None else self.qos,
                        retain=m.retain,
                        timeout=self.publish_timeout,
                    )
                    for m in chunk
                )
            )
            lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
            try:
                done, _ = await asyncio.wait({sends, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if sends not in done:
                sends.cancel()
                await asyncio.gather(sends, return_exceptions=True)
                return False
            try:
                sends.result()
            except (aiomqtt.MqttError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                # A dead connection that the watchdog has not noticed yet: make it reconnect.
                if self._connected.is_set() and self._client is client:
                    self._connected.clear()
                    self._lost.set()
                    self._fail("could not publish", exc)
                    _force_disconnect(client)
                return False
        return True


def _force_disconnect(client: aiomqtt.Client) -> None:
    # Closing paho's socket makes the watchdog's iteration end, which starts a reconnect.
    try:
        client._client.disconnect()
    except Exception:
        pass
