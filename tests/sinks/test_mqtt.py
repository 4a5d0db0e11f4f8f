"""MqttSink against real mosquitto brokers, checked by an independent mosquitto_sub."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    InvalidSessionIdError,
    SessionLogger,
    SinkError,
    read_dead_letters,
)
from async_session_logger.sinks import FileSink, MqttSink

from ..conftest import read_lines
from ..mqtt_broker import Broker, Subscriber, free_port

SCHEMA_KEYS = {"timestamp", "session_id", "seq", "event", "level", "levelno", "message"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto of the test's own on a free loopback port."""
    with Broker(workdir=tmp_path / "broker") as running:
        yield running


def _sub(broker: Broker, topic: str = "logs/#", **options: Any) -> Subscriber:
    return broker.subscriber(topic, workdir=broker.workdir / "sub", **options).start()


def test_seed_mqtt_case_delivers_every_entry_in_order(broker: Broker, tmp_path: Path) -> None:
    """method='mqtt': every entry arrives on logs/<id>, in seq order, as schema-v1 JSON."""
    sub = _sub(broker)
    logger = SessionLogger(
        method="mqtt",
        mqtt={"host": "127.0.0.1", "port": broker.port},
        dead_letter_path=tmp_path / "dead.jsonl",
    )
    logger.start_session("001", metadata={"device": "d1"})
    for i in range(200):
        logger.log_entry("001", f"MQTT entry {i}", logging.INFO, {"i": i})
    logger.close_session("001")
    report = logger.save_logs(timeout=30)
    stats = logger.stats()["sinks"]["mqtt"]
    logger.close()
    assert report.ok and report["mqtt"].delivered == 202
    entries = sub.wait_for_sync(lambda s: len(s.entries("logs/001")) >= 203)  # + status x2
    del entries
    got = [e for e in sub.entries("logs/001") if "event" in e]
    assert [e["seq"] for e in got] == list(range(202))
    assert all(e.keys() >= SCHEMA_KEYS for e in got)
    assert got[0]["metadata"] == {"device": "d1"}
    assert [e["custom_fields"]["i"] for e in got[1:-1]] == list(range(200))
    topics = Counter(topic for topic, _ in sub.messages())
    assert topics["logs/001"] == 202
    assert topics["logs/001/status"] == 2
    assert stats["details"]["connected"] is True
    assert stats["details"]["published_entries"] == 202
    sub.close()


async def test_packed_messages_and_async_face(broker: Broker, tmp_path: Path) -> None:
    """entries_per_message=50 packs a session's entries as JSON Lines; order is kept."""
    sub = _sub(broker)
    sink = MqttSink("127.0.0.1", broker.port, entries_per_message=50, qos=1)
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
        for sid in ("a", "b"):
            await alog.start_session(sid)
        for i in range(120):
            await alog.log_entry("a" if i % 2 else "b", f"m{i}")
        for sid in ("a", "b"):
            await alog.close_session(sid)
        report = await alog.save_logs()
    assert report.ok
    await sub.wait_for_entries(2 * 62 + 4)  # entries + 2 statuses per session
    for sid in ("a", "b"):
        entries = [e for e in sub.entries(f"logs/{sid}") if "event" in e]
        assert [e["seq"] for e in entries] == list(range(62))
        payloads = [p for t, p in sub.messages() if t == f"logs/{sid}"]
        assert max(p.count(b"\n") + 1 for p in payloads) == 50
        assert len(payloads) == 2  # 62 entries: 50 + 12
    sub.close()


async def test_publishes_in_flight_make_no_warning_records(broker: Broker, tmp_path: Path) -> None:
    """Many QoS 1 publishes in flight make no "pending publish calls" record per publish (a
    LogRecord each, which aiomqtt's publish() makes past ten pending: the sink publishes
    through paho); every entry still arrives."""
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.name == "async_session_logger.mqtt":
            made.append(str(record.msg))
        return record

    sub = _sub(broker)
    logging.setLogRecordFactory(counting)
    try:
        sink = MqttSink("127.0.0.1", broker.port, qos=1, status=False, logger_topic=None)
        async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
            await alog.start_session("burst")
            for i in range(2_000):
                await alog.log_entry("burst", f"m{i}")
            await alog.close_session("burst")
            report = await alog.save_logs()
    finally:
        logging.setLogRecordFactory(factory)
    assert report.ok and report["mqtt"].delivered == 2_002
    await sub.wait_for_entries(2_002)
    assert not [m for m in made if "pending publish calls" in m]
    sub.close()


def test_retained_status_reaches_a_late_subscriber(broker: Broker, tmp_path: Path) -> None:
    """A subscriber connecting after the close still sees the retained `closed` status."""
    with SessionLogger(
        method="mqtt",
        mqtt={"host": "127.0.0.1", "port": broker.port, "client_id": "dev-7"},
        dead_letter_path=None,
    ) as logger:
        logger.start_session("late", metadata={"k": "v"})
        logger.start_session("still-open")
        logger.log_entry("late", "x")
        logger.close_session("late", status="error")
        assert logger.save_logs(timeout=30).ok
        late = _sub(broker, "logs/+/status")
        late.wait_for_sync(2)
        statuses = {json.loads(p)["session_id"]: json.loads(p) for _, p in late.messages()}
        assert statuses["late"]["status"] == "error"
        assert statuses["late"]["entries"] == 1
        assert statuses["still-open"]["status"] == "open"
        assert all(m.retain for m in late.records())
        presence = _sub(broker, "session_loggers/#")
        presence.wait_for_sync(1)
        assert json.loads(presence.messages()[0][1])["status"] == "online"
        assert presence.messages()[0][0] == "session_loggers/dev-7"
    # A clean close marks the process offline (retained); a crash would trigger the last will.
    after = _sub(broker, "session_loggers/#")
    after.wait_for_sync(1)
    assert json.loads(after.messages()[0][1])["status"] == "offline"
    for s in (late, presence, after):
        s.close()


def test_last_will_marks_a_dead_process_offline(broker: Broker, tmp_path: Path) -> None:
    """A process killed with SIGKILL is marked offline by the broker's last will."""
    import subprocess
    import sys

    code = (
        "import time, sys\n"
        "from async_session_logger import SessionLogger\n"
        "logger = SessionLogger(method='mqtt', mqtt={'host': '127.0.0.1', 'port': int(sys.argv[1]),"
        " 'client_id': 'doomed', 'keepalive': 5})\n"
        "logger.start_session('s')\n"
        "logger.save_logs(timeout=30)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(broker.port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    sub = _sub(broker, "session_loggers/doomed")
    # The broker sends the will when it sees the dead socket (at once on a reset connection).
    sub.wait_for_sync(lambda s: any(b'"offline"' in p for _, p in s.messages()), timeout=15)
    sub.close()


def test_password_auth_right_and_wrong(tmp_path: Path) -> None:
    """Right credentials deliver; a wrong password is reported and the file sink is unaffected."""
    with Broker(users={"logger": "s3cret"}, workdir=tmp_path / "broker") as broker:
        sub = _sub(broker)
        with SessionLogger(
            method="mqtt",
            mqtt={
                "host": "127.0.0.1",
                "port": broker.port,
                "username": "logger",
                "password": "s3cret",
            },
            dead_letter_path=None,
        ) as good:
            good.start_session("auth-ok")
            good.close_session("auth-ok")
            assert good.save_logs(timeout=30).ok
            assert "s3cret" not in repr(good) + json.dumps(good.stats(), default=str)
        sub.wait_for_sync(lambda s: len(s.entries("logs/auth-ok")) >= 2)

        errors: list[SinkError] = []
        started = time.monotonic()
        bad = SessionLogger(
            method=["file", "mqtt"],
            path=tmp_path / "log.jsonl",
            mqtt={
                "host": "127.0.0.1",
                "port": broker.port,
                "username": "logger",
                "password": "wrong-password",
            },
            dead_letter_path=tmp_path / "dead.jsonl",
            on_error=errors.append,
            close_timeout=2,
        )
        bad.start_session("auth-bad")
        for i in range(100):
            bad.log_entry("auth-bad", f"m{i}")
        bad.close_session("auth-bad")
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bad.health()["sinks"] == {"file": True, "mqtt": False}
        report = bad.close()
        assert time.monotonic() - started < 8
        assert len(read_lines(tmp_path / "log.jsonl")) == 102
        assert report["file"].delivered == 102
        assert report["mqtt"].delivered == 0
        assert report["mqtt"].dead_lettered == 102
        assert "cannot connect" in str(errors[0])
        assert "wrong-password" not in " ".join(str(e) + repr(e.__cause__) for e in errors)
        assert "authoriz" in str(errors[0].__cause__).lower()
        assert len(list(read_dead_letters(tmp_path / "dead.jsonl"))) == 102
        sub.close()


def test_tls_with_the_right_ca_and_an_unknown_one(tmp_path: Path) -> None:
    """TLS with the broker's CA delivers; with the system CAs the certificate error is clear."""
    with Broker(tls=True, workdir=tmp_path / "broker") as broker:
        assert broker.tls_port is not None
        sub = _sub(broker)
        with SessionLogger(
            sinks=[MqttSink("localhost", broker.tls_port, tls_context=broker.client_ssl_context())],
            dead_letter_path=None,
        ) as logger:
            logger.start_session("tls-ok")
            logger.close_session("tls-ok")
            assert logger.save_logs(timeout=30).ok
        sub.wait_for_sync(lambda s: len(s.entries("logs/tls-ok")) >= 2)

        errors: list[SinkError] = []
        untrusted = SessionLogger(
            sinks=[MqttSink("localhost", broker.tls_port, tls=True)],
            dead_letter_path=None,
            on_error=errors.append,
            close_timeout=1,
        )
        untrusted.start_session("tls-bad")
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        report = untrusted.close()
        assert report["mqtt"].delivered == 0
        cause = errors[0].__cause__
        assert isinstance(
            cause, ssl.SSLCertVerificationError
        ) or "CERTIFICATE_VERIFY_FAILED" in str(cause)
        assert not any(e for _, p in sub.messages() for e in [p] if b"tls-bad" in p)
        sub.close()


def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    """Entries logged while no broker runs are buffered and delivered once it starts."""
    broker = Broker(persistence=True, workdir=tmp_path / "broker")
    # The verifier registers a persistent session first, so that the broker queues everything
    # for it whatever the order in which the sink and the verifier reconnect later.
    broker.start()
    sub = _sub(broker, clean=False, client_id="verifier-early")
    sub.stop()
    broker.stop()
    errors: list[SinkError] = []
    logger = SessionLogger(
        method="mqtt",
        mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_max": 0.5},
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=errors.append,
    )
    logger.start_session("early")
    for i in range(500):
        logger.log_entry("early", f"m{i}")
    logger.close_session("early")
    time.sleep(0.5)
    assert logger.stats()["sinks"]["mqtt"]["pending"] == 502
    assert logger.health()["ok"] is False
    assert "cannot connect" in str(errors[0])
    try:
        broker.start()
        report = logger.save_logs(timeout=30)
        assert report.ok and report["mqtt"].delivered == 502
        sub.resubscribe()
        sub.wait_for_sync(
            lambda s: len([e for e in s.entries("logs/early") if "event" in e]) >= 502
        )
        assert [e["seq"] for e in sub.entries("logs/early") if "event" in e] == list(range(502))
        assert "reconnected" in str(errors[-1])
        assert logger.health()["ok"] is True
    finally:
        logger.close()
        sub.close()
        broker.close()


def test_broker_sigkilled_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the broker during 20,000 QoS 1 entries, restart: every pair arrives."""
    total = 20_000
    with Broker(persistence=True, workdir=tmp_path / "broker") as broker:
        sub = _sub(broker, clean=False, client_id="verifier-kill")
        broker.save()  # the verifier's subscription survives the crash
        errors: list[SinkError] = []
        logger = SessionLogger(
            sinks=[MqttSink("127.0.0.1", broker.port, qos=1, reconnect_max=0.5)],
            dead_letter_path=tmp_path / "dead.jsonl",
            on_error=errors.append,
        )
        logger.start_session("storm")

        def produce() -> None:
            for i in range(total - 2):
                logger.log_entry("storm", f"m{i}", logging.INFO, {"i": i})
            logger.close_session("storm")

        producer = threading.Thread(target=produce)
        producer.start()
        sub.wait_for_sync(lambda s: len(s.messages()) >= total // 4, timeout=60)
        broker.kill()
        time.sleep(0.5)
        broker.restart()
        sub.resubscribe()
        producer.join()
        report = logger.save_logs(timeout=120)
        details = logger.stats()["sinks"]["mqtt"]["details"]
        logger.close()
        sub.wait_for_sync(
            lambda s: len({e["seq"] for e in s.entries("logs/storm") if "event" in e}) >= total,
            timeout=60,
        )
        entries = [e for e in sub.entries("logs/storm") if "event" in e]
        pairs = Counter((e["session_id"], e["seq"]) for e in entries)
        duplicates = sum(n - 1 for n in pairs.values())
        print(
            f"\nSIGKILL test: {len(entries)} entries received for {total} sent, "
            f"{duplicates} duplicates; sink: {details}"
        )
        assert set(pairs) == {("storm", seq) for seq in range(total)}
        assert report.ok and report["mqtt"].delivered == total
        assert details["disconnects"] >= 1 and details["replayed_messages"] >= 1
        assert any("lost the connection" in str(e) for e in errors)
        sub.close()


def test_buffer_overflow_is_dead_lettered_and_close_keeps_its_timeout(tmp_path: Path) -> None:
    """A broker down longer than the buffer holds: overflow dead-lettered, lifecycle kept."""
    port = free_port()
    path = tmp_path / "log.jsonl"
    dead = tmp_path / "dead.jsonl"
    logger = SessionLogger(
        sinks=[FileSink(path), MqttSink("127.0.0.1", port, buffer_size=100, reconnect_max=0.5)],
        dead_letter_path=dead,
        on_error=lambda e: None,
        close_timeout=2,
    )
    logger.start_session("flood")
    for i in range(1000):
        logger.log_entry("flood", f"m{i}")
    logger.close_session("flood")
    time.sleep(0.3)
    mid = logger.stats()["sinks"]["mqtt"]
    assert mid["pending"] <= 102  # the buffer, plus the start and close entries it keeps
    assert mid["dead_lettered"] >= 898
    assert len(read_lines(path)) == 1002  # the file sink did not wait for the broker
    started = time.monotonic()
    report = logger.close()
    assert time.monotonic() - started < 4
    stats = report["mqtt"]
    assert stats.delivered == 0
    assert stats.dead_lettered + stats.lost == 1002
    assert not report.ok
    letters = list(read_dead_letters(dead))
    assert len(letters) == 1002
    assert {d["sink"] for d in letters} == {"mqtt"}
    assert sorted(d["entry"]["seq"] for d in letters) == list(range(1002))
    reasons = Counter(d["reason"].split(":")[0] for d in letters)
    assert reasons["overflow"] >= 898
    # Start and close entries were kept through the overflow: they left only at close.
    lifecycle = [d for d in letters if d["entry"]["event"] != "log"]
    assert all(not d["reason"].startswith("overflow") for d in lifecycle)


def test_hostile_ids_never_reach_a_topic(broker: Broker, tmp_path: Path) -> None:
    """Ids with +, #, / or CR/LF are refused at start_session; nothing is published."""
    sub = _sub(broker)
    with SessionLogger(
        method="mqtt", mqtt={"host": "127.0.0.1", "port": broker.port}, dead_letter_path=None
    ) as logger:
        for bad in ("a/#", "+", "x/y", "line\nbreak", "nul\x00"):
            with pytest.raises(InvalidSessionIdError):
                logger.start_session(bad)
        logger.start_session("fine")
        assert logger.save_logs(timeout=30).ok
    sub.wait_for_sync(lambda s: len(s.entries("logs/fine")) >= 1)
    assert {t for t, _ in sub.messages()} == {
        "logs/fine",
        "logs/fine/status",
    }
    sub.close()


async def test_mqtt_sink_configuration_errors() -> None:
    """Bad topics and QoS values are refused at construction."""
    from async_session_logger import ConfigurationError

    with pytest.raises(ConfigurationError, match="session_id"):
        MqttSink(topic="logs/all")
    with pytest.raises(ConfigurationError, match="'#'"):
        MqttSink(topic="logs/#/{session_id}")
    with pytest.raises(ConfigurationError, match="qos"):
        MqttSink(qos=3)
    sink = MqttSink(username="u", password="pw-never-shown")
    assert "pw-never-shown" not in repr(sink)
    await asyncio.sleep(0)


def test_exit_drain_reconnects_and_delivers(tmp_path: Path) -> None:
    """A script exiting without close() while the broker is down delivers once it is up."""
    import subprocess
    import sys

    broker = Broker(persistence=True, workdir=tmp_path / "broker")
    broker.start()
    sub = _sub(broker, clean=False, client_id="verifier-exit")
    sub.stop()
    broker.stop()
    code = (
        "import sys\n"
        "from async_session_logger import SessionLogger\n"
        "logger = SessionLogger(method='mqtt', mqtt={'host': '127.0.0.1', 'port': int(sys.argv[1]),"
        " 'reconnect_max': 0.2}, close_timeout=15, dead_letter_path=None)\n"
        "logger.start_session('bye')\n"
        "for i in range(10):\n"
        "    logger.log_entry('bye', f'm{i}')\n"
        "print('logged', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(broker.port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "logged"
        time.sleep(0.5)  # the script is in its exit drain, retrying the connection
        broker.start()  # aiomqtt connects through the loop's executor: it must work at exit
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "reconnected" in err
        assert "dead-lettered" not in err
        sub.resubscribe()
        sub.wait_for_sync(lambda s: len([e for e in s.entries("logs/bye") if "event" in e]) >= 12)
        got = [e for e in sub.entries("logs/bye") if "event" in e]
        assert [e["seq"] for e in got] == list(range(12))
        assert got[-1]["status"] == "interrupted"
    finally:
        proc.kill()
        sub.close()
        broker.close()


# -- entries the broker will not take (issue 10, items 9 and 16) ------------------------------


def _log_with_one_huge_entry(logger: SessionLogger, sid: str, huge: int = 5_000) -> None:
    """Start ``sid``, log 10 normal entries with one of ``huge`` bytes in the middle, close."""
    logger.start_session(sid)
    for i in range(10):
        logger.log_entry(sid, f"normal {i}")
        if i == 4:
            logger.log_entry(sid, "x" * huge)  # seq 6
    logger.close_session(sid)


def _seq_counts(sub: Subscriber, sid: str) -> Counter[int]:
    return Counter(e["seq"] for e in sub.entries(f"logs/{sid}") if "event" in e)


def test_entry_over_the_brokers_packet_limit_is_dead_lettered_once(tmp_path: Path) -> None:
    """A v5 broker's Maximum Packet Size is honoured: 1 entry dead-lettered, the rest once."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    with Broker(workdir=tmp_path / "broker", max_packet_size=2048) as broker:
        sub = _sub(broker)
        sink = MqttSink("127.0.0.1", broker.port)
        logger = SessionLogger(
            sinks=[sink], dead_letter_path=dead, on_error=errors.append, close_timeout=5
        )
        started = time.monotonic()
        _log_with_one_huge_entry(logger, "big")
        report = logger.save_logs(timeout=10)
        assert time.monotonic() - started < 5
        stats = sink.stats()
        logger.close()
        sub.wait_for_sync(lambda s: len(_seq_counts(s, "big")) >= 12)
        time.sleep(0.3)  # a re-send would arrive by now
        counts = _seq_counts(sub, "big")
        sub.close()
    assert counts == Counter({seq: 1 for seq in range(13) if seq != 6})
    assert (report["mqtt"].delivered, report["mqtt"].dead_lettered) == (12, 1)
    letters = list(read_dead_letters(dead))
    assert [(d["sink"], d["entry"]["seq"]) for d in letters] == [("mqtt", 6)]
    assert "exceeds the broker's packet limit" in letters[0]["reason"]
    assert (stats["connects"], stats["disconnects"], stats["resent_messages"]) == (1, 0, 0)
    assert stats["packet_limit"] == 2048 and stats["oversized_entries"] == 1
    assert len([e for e in errors if "cannot publish" in str(e)]) == 1
    assert not [e for e in errors if "connection" in str(e)]


async def test_max_packet_size_splits_packed_messages(broker: Broker, tmp_path: Path) -> None:
    """max_packet_size=: packed messages are split to fit; an entry too large alone is not sent."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    sub = _sub(broker)
    sink = MqttSink("127.0.0.1", broker.port, entries_per_message=100, max_packet_size=1024)
    async with AsyncSessionLogger(
        sinks=[sink], dead_letter_path=dead, on_error=errors.append
    ) as alog:
        await alog.start_session("pack")
        for i in range(60):
            await alog.log_entry("pack", f"entry {i:03d} " + "y" * 40)
        await alog.log_entry("pack", "z" * 2000)  # seq 61
        await alog.close_session("pack")
        report = await alog.save_logs(timeout=10)
    await sub.wait_for(lambda s: len(_seq_counts(s, "pack")) >= 62)
    payloads = [p for t, p in sub.messages() if t == "logs/pack"]
    assert _seq_counts(sub, "pack") == Counter({seq: 1 for seq in range(63) if seq != 61})
    assert len(payloads) > 1 and all(len(p) + len("logs/pack") + 5 <= 1024 for p in payloads)
    assert (report["mqtt"].delivered, report["mqtt"].dead_lettered) == (62, 1)
    assert [d["entry"]["seq"] for d in read_dead_letters(dead)] == [61]
    assert len([e for e in errors if "cannot publish" in str(e)]) == 1
    sub.close()


def test_packet_limit_nobody_announced_stops_after_three_drops(tmp_path: Path) -> None:
    """MQTT 3.1.1 (no limit in CONNACK): the poison message is dead-lettered after 3 drops."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    with Broker(workdir=tmp_path / "broker", max_packet_size=2048) as broker:
        sub = _sub(broker)
        sink = MqttSink("127.0.0.1", broker.port, protocol="3.1.1", reconnect_max=0.5)
        logger = SessionLogger(
            sinks=[sink], dead_letter_path=dead, on_error=errors.append, close_timeout=5
        )
        _log_with_one_huge_entry(logger, "poison")
        report = logger.save_logs(timeout=20)
        stats = sink.stats()
        logger.close()
        sub.wait_for_sync(lambda s: len(_seq_counts(s, "poison")) >= 12)
        counts = _seq_counts(sub, "poison")
        sub.close()
    assert set(counts) == {seq for seq in range(13) if seq != 6}  # at least once, deduplicated
    assert (report["mqtt"].delivered, report["mqtt"].dead_lettered) == (12, 1)
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["seq"] for d in letters] == [6]
    assert "dropped the connection 3 times in a row" in letters[0]["reason"]
    assert stats["connects"] <= 4 and stats["poison_messages"] == 1
    assert len([e for e in errors if "cannot publish" in str(e)]) == 1


def _evil_ids(entry: dict[str, Any]) -> dict[str, Any]:
    """A formatter that rewrites session_id from a custom field (what item 16 guards against)."""
    fields = entry.get("custom_fields") or {}
    if "sid" in fields:
        entry["session_id"] = fields["sid"]
    return entry


def test_formatter_rewritten_ids_never_reach_a_wrong_topic(broker: Broker, tmp_path: Path) -> None:
    """Ids a formatter rewrites into +, #, /, NUL, '' or 200 chars are dead-lettered, not sent."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    sub = _sub(broker, "#")
    bad = ["x/y", "+", "#", "", "a\x00b", "c\x1bd", "z" * 200, ".."]
    with SessionLogger(
        sinks=[MqttSink("127.0.0.1", broker.port)],
        custom_formatter=_evil_ids,
        dead_letter_path=dead,
        on_error=errors.append,
    ) as logger:
        logger.start_session("good")
        logger.log_entry("good", "before")
        for sid in bad:
            logger.log_entry("good", "rewritten", custom_fields={"sid": sid})
        logger.log_entry("good", "after")
        logger.close_session("good")
        report = logger.save_logs(timeout=10)
    sub.wait_for_sync(lambda s: len(_seq_counts(s, "good")) >= 4)
    time.sleep(0.2)
    topics = {t for t, _ in sub.messages()} - {
        t for t, _ in sub.messages() if "session_loggers/" in t
    }
    assert topics == {"logs/good", "logs/good/status"}
    assert sorted(_seq_counts(sub, "good")) == [0, 1, len(bad) + 2, len(bad) + 3]
    assert (report["mqtt"].delivered, report["mqtt"].dead_lettered) == (4, len(bad))
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["session_id"] for d in letters] == bad
    assert all(d["reason"].startswith("session_id cannot be an MQTT topic level") for d in letters)
    assert len([e for e in errors if "cannot publish" in str(e)]) == 1
    assert not [e for e in errors if "connection" in str(e)]
    sub.close()
