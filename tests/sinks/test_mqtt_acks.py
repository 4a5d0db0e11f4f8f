"""MqttSink and the broker's acknowledgements: refusals and its Receive Maximum, against a real
mosquitto (the window observed on the wire by a TCP relay that reads the MQTT packets)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from async_session_logger import AsyncSessionLogger, SinkError, read_dead_letters
from async_session_logger.sinks import MqttSink
from async_session_logger.sinks._mqtt_payload import Message

from ..mqtt_broker import PROBE_PREFIX, Broker, Subscriber, free_port

# Anonymous clients may publish and read logs/#, except one session's topics (and the test
# subscriber's probes).
ACL = (
    "topic readwrite logs/#\ntopic deny logs/denied\ntopic deny logs/denied/#\n"
    f"topic readwrite {PROBE_PREFIX}#\n"
)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto whose ACL refuses the topics of session ``denied``."""
    acl = tmp_path / "acl"
    acl.write_text(ACL, encoding="utf-8")
    # With max_queued_messages 0 ("no limit", the helper's default) mosquitto 2.0 drops the
    # connection of a client whose publish it denies instead of refusing it in the PUBACK (the
    # sink's poison detection handles that case), so this broker gets a queue limit.
    with Broker(
        workdir=tmp_path / "broker",
        extra_config=(f"acl_file {acl}",),
        max_queued_messages=100_000,
    ) as running:
        yield running


@pytest.mark.parametrize("per_message", [1, 50])
async def test_messages_the_broker_refuses_are_dead_lettered_with_its_reason(
    acl_broker: Broker, tmp_path: Path, per_message: int
) -> None:
    """MQTT 5: a broker refuses a QoS 1 publish with a PUBACK reason code (here its ACL: Not
    authorized, 0x87). Those entries are dead-lettered with the reason, counted and reported
    once, not counted as published; the other session's entries all arrive."""
    sub = acl_broker.subscriber("logs/#", workdir=tmp_path / "sub").start()
    errors: list[SinkError] = []
    sink = MqttSink(
        "127.0.0.1", acl_broker.port, entries_per_message=per_message, logger_topic=None
    )
    async with AsyncSessionLogger(
        sinks=[sink], dead_letter_path=tmp_path / "dead.jsonl", on_error=errors.append
    ) as alog:
        for sid in ("ok", "denied"):
            await alog.start_session(sid)
        for i in range(60):
            await alog.log_entry("ok" if i % 2 else "denied", f"entry {i}")
        for sid in ("ok", "denied"):
            await alog.close_session(sid)
        report = await alog.save_logs()
        details = alog.stats()["sinks"]["mqtt"]["details"]
    assert report["mqtt"].delivered == 32 and report["mqtt"].dead_lettered == 32
    dead = list(read_dead_letters(tmp_path / "dead.jsonl"))
    assert {d["entry"]["session_id"] for d in dead} == {"denied"}
    assert sorted(d["entry"]["seq"] for d in dead) == list(range(32))
    assert {d["reason"] for d in dead} == {"the broker refused it: Not authorized (0x87)"}
    # Its start and close statuses (logs/denied/status) were refused too.
    assert details["refused_entries"] == 32
    assert details["refused_messages"] == 2 + (32 if per_message == 1 else 1)
    assert details["published_entries"] == 32
    refusals = [e for e in errors if "refused" in str(e)]
    assert len(refusals) == 1 and "Not authorized" in str(refusals[0])
    await sub.wait_for(lambda s: len([e for e in s.entries("logs/ok") if "seq" in e]) >= 32)
    assert sorted(e["seq"] for e in sub.entries("logs/ok") if "seq" in e) == list(range(32))
    assert not sub.entries("logs/denied")
    sub.close()


class _PacketWatch:
    """A TCP relay between a client and a broker that reads the MQTT packets going through:
    the most QoS 1 PUBLISH packets the client had sent without their PUBACK at once."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.outstanding: set[int] = set()
        self.most = 0
        self.published = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_PacketWatch]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        async with server:
            yield self

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        await asyncio.gather(
            self._pump(client_r, broker_w, self._from_client),
            self._pump(broker_r, client_w, self._from_broker),
            return_exceptions=True,
        )
        for writer in (client_w, broker_w):
            writer.close()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seen: Callable[[int, bytes], None],
    ) -> None:
        try:
            while True:
                first = await reader.readexactly(1)
                length, multiplier, header = 0, 1, first
                while True:  # the remaining length: a varint of up to four bytes
                    byte = await reader.readexactly(1)
                    header += byte
                    length += (byte[0] & 0x7F) * multiplier
                    multiplier *= 128
                    if not byte[0] & 0x80:
                        break
                body = await reader.readexactly(length)
                seen(first[0], body)
                writer.write(header + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _from_client(self, kind: int, body: bytes) -> None:
        if kind >> 4 == 3 and (kind >> 1) & 3 == 1:  # PUBLISH, QoS 1: topic, then its id
            topic_length = int.from_bytes(body[:2], "big")
            self.outstanding.add(int.from_bytes(body[2 + topic_length : 4 + topic_length], "big"))
            self.most = max(self.most, len(self.outstanding))
            self.published += 1

    def _from_broker(self, kind: int, body: bytes) -> None:
        if kind >> 4 == 4:  # PUBACK
            self.outstanding.discard(int.from_bytes(body[:2], "big"))


async def test_no_more_publishes_in_flight_than_the_brokers_receive_maximum(
    tmp_path: Path,
) -> None:
    """MQTT 5 §3.3.4: a client must not have more unacknowledged QoS 1 publishes than the
    Receive Maximum the broker announces (mosquitto: its max_inflight_messages; a broker that
    enforces it disconnects a client that sends more). Observed on the wire: at most one less
    than it (the presence status may be in flight too), and still pipelined."""
    with Broker(workdir=tmp_path / "broker", extra_config=("max_inflight_messages 5",)) as broker:
        sub: Subscriber = broker.subscriber("logs/#", workdir=tmp_path / "sub").start()
        async with _PacketWatch(broker.port).running() as watch:
            sink = MqttSink("127.0.0.1", watch.port, status=False)
            async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
                await alog.start_session("window")
                for i in range(600):
                    await alog.log_entry("window", f"entry {i}")
                await alog.close_session("window")
                report = await alog.save_logs()
                details = alog.stats()["sinks"]["mqtt"]["details"]
        assert report.ok and report["mqtt"].delivered == 602
        assert watch.published >= 602
        assert 2 <= watch.most <= 4
        assert details["receive_maximum"] == 5
        await sub.wait_for(lambda s: len(s.entries("logs/window")) >= 602)
        sub.close()


async def test_a_broker_that_stops_acknowledging_times_out_and_the_batch_is_sent_again(
    tmp_path: Path,
) -> None:
    """A broker frozen (SIGSTOP) keeps the TCP connection open but acknowledges nothing: after
    publish_timeout the chunk counts as failed, the connection is dropped and remade once the
    broker runs again (SIGCONT), and every entry arrives (at least once)."""
    with Broker(workdir=tmp_path / "broker") as broker:
        assert broker.pid is not None
        sub = broker.subscriber("logs/#", workdir=tmp_path / "sub").start()
        sink = MqttSink(
            "127.0.0.1",
            broker.port,
            status=False,
            logger_topic=None,
            publish_timeout=1.0,
            connect_timeout=1.0,
            reconnect_max=0.3,
        )
        errors: list[SinkError] = []
        async with AsyncSessionLogger(
            sinks=[sink], dead_letter_path=None, on_error=errors.append
        ) as alog:
            await alog.start_session("frozen")
            for i in range(10):
                await alog.log_entry("frozen", f"before {i}")
            assert (await alog.save_logs()).ok
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                for i in range(10):
                    await alog.log_entry("frozen", f"while frozen {i}")
                deadline = time.monotonic() + 10
                while sink.healthy:
                    assert time.monotonic() < deadline, "the unacknowledged chunk never timed out"
                    await asyncio.sleep(0.05)
                # Reported with its cause (last_error moves on to the lost connection).
                failed = [e for e in errors if "could not publish" in str(e)]
                assert len(failed) == 1 and isinstance(failed[0].__cause__, TimeoutError)
                assert "acknowledged 0 of" in str(failed[0].__cause__)
                assert "in 1.0 s" in str(failed[0].__cause__)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            await alog.close_session("frozen")
            report = await alog.save_logs(timeout=30)
            details = sink.stats()
        assert report.ok and report["mqtt"].delivered == 22
        assert details["connects"] >= 2 and details["resent_messages"] >= 1
        await sub.wait_for(lambda s: {e["seq"] for e in s.entries("logs/frozen")} >= set(range(22)))
        sub.close()


async def test_a_replayed_message_the_broker_now_refuses_leaves_the_replay_window(
    tmp_path: Path,
) -> None:
    """After a lost connection the sink re-sends its recent acknowledged messages. A broker
    restarted with an ACL that now denies their topic refuses them: they are counted and
    forgotten (already delivered once), not re-sent after every later reconnect, and entries
    of other sessions still go through."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite logs/#\ntopic readwrite {PROBE_PREFIX}#\n", encoding="utf-8")
    with Broker(
        workdir=tmp_path / "broker",
        extra_config=(f"acl_file {acl}",),
        max_queued_messages=100_000,  # see acl_broker
    ) as broker:
        sink = MqttSink("127.0.0.1", broker.port, status=False, logger_topic=None)
        sink.reconnect_max = 0.3

        async def reconnected(connects: int) -> None:
            deadline = time.monotonic() + 10
            while sink.stats()["connects"] < connects or not sink.healthy:
                assert time.monotonic() < deadline, "the sink did not reconnect"
                await asyncio.sleep(0.05)

        async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
            await alog.start_session("early")
            for i in range(5):
                await alog.log_entry("early", f"acknowledged {i}")
            assert (await alog.save_logs()).ok
            acl.write_text(
                f"topic readwrite logs/#\ntopic deny logs/early\ntopic readwrite {PROBE_PREFIX}#\n",
                encoding="utf-8",
            )
            await asyncio.to_thread(broker.restart)
            await reconnected(2)
            await alog.start_session("late")  # the next batch sends the replay first
            report = await alog.save_logs()
            first = sink.stats()
            await asyncio.to_thread(broker.restart)
            await reconnected(3)
            await alog.log_entry("late", "after the second restart")
            assert (await alog.save_logs()).ok
            second = sink.stats()
            log = broker.log_text()  # before close: early's close entry is denied too
        assert report.ok
        # The start and five entries of "early", refused on replay, once.
        assert first["refused_messages"] == 6 and first["refused_entries"] == 0
        assert second["refused_messages"] == 6
        assert second["published_entries"] == 6 + 2  # early's, then late's start and entry
        assert log.count("Denied PUBLISH") == 6


async def test_two_chunks_in_flight_at_once_each_get_their_acknowledgements(
    tmp_path: Path,
) -> None:
    """The sink publishes one chunk at a time (the spool lock keeps the drain and live batches
    apart), but should two ever be in flight at once, each still receives its own
    acknowledgements rather than one waiting out publish_timeout."""
    with Broker(workdir=tmp_path / "broker") as broker:
        sink = MqttSink(
            "127.0.0.1", broker.port, status=False, logger_topic=None, publish_timeout=3.0
        )
        async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
            await alog.start_session("warm")
            assert (await alog.save_logs()).ok  # connected
            client = sink._client
            assert client is not None
            first = [Message("logs/first", b'{"n":%d}' % i) for i in range(50)]
            second = [Message("logs/second", b'{"n":%d}' % i) for i in range(50)]
            outcomes = await asyncio.gather(
                sink._publish_all(client, first), sink._publish_all(client, second)
            )
        assert [(o.loss, o.refused) for o in outcomes] == [(None, []), (None, [])]
