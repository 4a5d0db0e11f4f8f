"""MqttSink's disk spool: real mosquitto, real files, a real SIGKILLed app process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    ConfigurationError,
    SessionLogger,
    SinkError,
    read_dead_letters,
)
from async_session_logger.sinks import MqttSink
from async_session_logger.sinks._mqtt_payload import Message
from async_session_logger.sinks._mqtt_spool import Spool

from ..mqtt_broker import Broker, Subscriber

IDENTITY = {"host": "127.0.0.1", "port": 1, "topic": "logs/{session_id}"}


def _down_broker_with_verifier(tmp_path: Path, **options: Any) -> tuple[Broker, Subscriber]:
    """A stopped broker that will queue everything for a persistent verifier when started."""
    broker = Broker(persistence=True, workdir=tmp_path / "broker", **options)
    broker.start()
    sub = broker.subscriber(
        "logs/#", workdir=tmp_path / "sub", clean=False, client_id="spool-verifier"
    ).start()
    sub.stop()
    broker.stop()
    return broker, sub


def _seqs(sub: Subscriber, sid: str) -> list[int]:
    return [e["seq"] for e in sub.entries(f"logs/{sid}") if "event" in e]


def _sink(port: int, spool: Path, **options: Any) -> MqttSink:
    return MqttSink("127.0.0.1", port, spool_path=spool, reconnect_max=0.3, **options)


def _drained(sink: MqttSink, why: str, timeout: float = 30) -> dict[str, Any]:
    """Wait (in a thread of its own: the logger's loop runs elsewhere) until the sink's spool
    is empty; return its stats then."""
    deadline = time.monotonic() + timeout
    while sink.stats()["spool"]["records"]:
        assert time.monotonic() < deadline, why
        time.sleep(0.05)
    return sink.stats()


async def test_broker_down_spools_then_delivers_in_order_before_live_entries(
    tmp_path: Path,
) -> None:
    """Async face: spooled while down, sent first on reconnect; per-session order holds."""
    broker, sub = _down_broker_with_verifier(tmp_path)
    spool = tmp_path / "mqtt.spool"
    errors: list[SinkError] = []
    sink = _sink(broker.port, spool)
    try:
        async with AsyncSessionLogger(
            sinks=[sink], dead_letter_path=tmp_path / "dead.jsonl", on_error=errors.append
        ) as alog:
            for sid in ("a", "b"):
                await alog.start_session(sid)
            for i in range(300):
                await alog.log_entry("a" if i % 2 else "b", f"down {i}")
            report = await alog.save_logs()
            assert report.ok  # spooled = delivered to durable storage
            spooled = alog.stats()["sinks"]["mqtt"]["details"]["spool"]
            assert spooled["entries"] == 302 and spooled["bytes"] > 0
            assert spool.stat().st_size > 302 * 50
            await asyncio.to_thread(broker.start)
            # Live traffic straight after the broker came back: it must queue behind the spool.
            for i in range(300, 600):
                await alog.log_entry("a" if i % 2 else "b", f"up {i}")
            for sid in ("a", "b"):
                await alog.close_session(sid)
            assert (await alog.save_logs()).ok
            deadline = time.monotonic() + 20
            while alog.stats()["sinks"]["mqtt"]["details"]["spool"]["records"]:
                assert time.monotonic() < deadline, "spool never drained"
                await asyncio.sleep(0.05)
            details = alog.stats()["sinks"]["mqtt"]["details"]
        assert details["spool"]["bytes"] == 0 and details["spool"]["draining"] is False
        assert details["spool"]["unspooled_entries"] >= 302
        await asyncio.to_thread(sub.start)
        await sub.wait_for(lambda s: len(_seqs(s, "a")) >= 302 and len(_seqs(s, "b")) >= 302)
        for sid in ("a", "b"):
            seqs = _seqs(sub, sid)
            assert seqs == sorted(seqs) and set(seqs) == set(range(302))
        # Emptied once drained: only the header line is left.
        assert spool.read_bytes().count(b"\n") == 1
        assert not any("spool is full" in str(e) for e in errors)
    finally:
        sub.close()
        broker.close()


_APP = textwrap.dedent(
    """
    import sys, time
    from async_session_logger import SessionLogger
    from async_session_logger.sinks import MqttSink

    port, spool, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sink = MqttSink("127.0.0.1", port, spool_path=spool, reconnect_max=0.3)
    logger = SessionLogger(sinks=[sink], dead_letter_path=None)
    if mode == "log":
        logger.start_session("crash")
        for i in range(400):
            logger.log_entry("crash", f"before the kill {i}")
        assert logger.save_logs(timeout=30).ok
        print("spooled", logger.stats()["sinks"]["mqtt"]["details"]["spool"]["entries"],
              flush=True)
        time.sleep(600)  # killed here, its session still open
    else:
        deadline = time.monotonic() + 30
        while sink.stats()["spool"]["records"] and time.monotonic() < deadline:
            time.sleep(0.05)
        print("left", sink.stats()["spool"]["records"], flush=True)
        logger.close()
    """
)


def test_app_sigkilled_while_broker_down_is_delivered_after_restart(tmp_path: Path) -> None:
    """Sync face, two processes: the first is SIGKILLed with its spool; the next delivers it."""
    broker, sub = _down_broker_with_verifier(tmp_path)
    spool = tmp_path / "app.spool"
    script = tmp_path / "app.py"
    script.write_text(_APP)
    args = [sys.executable, str(script), str(broker.port), str(spool)]
    app = subprocess.Popen([*args, "log"], stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None
        assert app.stdout.readline().split() == ["spooled", "401"]
        app.send_signal(signal.SIGKILL)
        app.wait(timeout=10)
        broker.start()
        done = subprocess.run([*args, "drain"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["left", "0"]
        sub.start()
        sub.wait_for_sync(lambda s: len(_seqs(s, "crash")) >= 401)
        assert _seqs(sub, "crash") == list(range(401))
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        sub.close()
        broker.close()


def test_full_spool_dead_letters_the_rest_counted_and_reported_once(tmp_path: Path) -> None:
    """Sync face: past spool_max_bytes entries go to dead letters, counted, one report."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    sink = _sink(1, tmp_path / "small.spool", spool_max_bytes=8192, max_batch=50)
    with SessionLogger(sinks=[sink], dead_letter_path=dead, on_error=errors.append) as logger:
        logger.start_session("full")
        for i in range(300):
            logger.log_entry("full", f"entry {i} " + "x" * 40)
        logger.close_session("full")
        logger.save_logs(timeout=30)
        stats = logger.stats()["sinks"]["mqtt"]
    spool = stats["details"]["spool"]
    letters = list(read_dead_letters(dead))
    assert spool["spool_full_entries"] == len(letters) > 0
    assert spool["entries"] + len(letters) == 302
    assert stats["dead_lettered"] == len(letters)
    assert all(letter["reason"].startswith("spool full") for letter in letters)
    # In order: the spool holds a prefix, the dead letters the rest.
    assert [letter["entry"]["seq"] for letter in letters] == list(range(spool["entries"], 302))
    assert sum("spool is full" in str(e) for e in errors) == 1
    assert spool["bytes"] <= 8192


def test_spooled_message_the_broker_refuses_is_dead_lettered_after_three_drops(
    tmp_path: Path,
) -> None:
    """MQTT 3.1.1, unannounced packet limit: a spooled poison message cannot block the rest."""
    broker, sub = _down_broker_with_verifier(tmp_path, max_packet_size=2048)
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    sink = _sink(broker.port, tmp_path / "poison.spool", protocol="3.1.1")
    try:
        with SessionLogger(sinks=[sink], dead_letter_path=dead, on_error=errors.append) as logger:
            logger.start_session("poison")
            for i in range(10):
                logger.log_entry("poison", f"normal {i}")
                if i == 4:
                    logger.log_entry("poison", "x" * 5_000)  # seq 6: over the broker's limit
            logger.close_session("poison")
            assert logger.save_logs(timeout=30).ok
            broker.start()
            stats = _drained(sink, "the poison blocked the spool")
        sub.start()
        sub.wait_for_sync(lambda s: len(set(_seqs(s, "poison"))) >= 12)
        assert set(_seqs(sub, "poison")) == {seq for seq in range(13) if seq != 6}
        letters = list(read_dead_letters(dead))
        assert [letter["entry"]["seq"] for letter in letters] == [6]
        assert "3 times in a row" in letters[0]["reason"]
        assert stats["spool"]["spool_poison_messages"] == 1
        assert sum("took a message off its spool" in str(e) for e in errors) == 1
    finally:
        sub.close()
        broker.close()


def test_spooled_messages_the_broker_refuses_in_its_puback_are_dead_lettered(
    tmp_path: Path,
) -> None:
    """MQTT 5: spooled messages that the broker refuses when the spool drains (its ACL: a
    PUBACK with Not authorized) leave the spool dead-lettered with that reason; the broker
    takes the others, in order (read from its own log: an offline subscriber's queue is
    not kept under an ACL, so no verifier here). Once the spool is empty every refused entry
    is in the dead-letter file: they are dead-lettered before they leave the spool (the other
    way round, closing the logger then lost the ones not yet written)."""
    acl = tmp_path / "acl"
    acl.write_text(
        "topic readwrite logs/#\ntopic deny logs/denied\ntopic deny logs/denied/#\n"
        "topic readwrite session_loggers/#\n",
        encoding="utf-8",
    )
    # A queue limit: with none, mosquitto 2.0 drops the connection of a client it denies.
    broker = Broker(
        workdir=tmp_path / "broker",
        extra_config=(f"acl_file {acl}",),
        max_queued_messages=100_000,
    )
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    sink = _sink(broker.port, tmp_path / "acl.spool")
    try:
        with SessionLogger(sinks=[sink], dead_letter_path=dead, on_error=errors.append) as logger:
            for sid in ("ok", "denied"):
                logger.start_session(sid)
            for i in range(200):
                logger.log_entry("ok" if i % 2 else "denied", f"spooled {i}")
            for sid in ("ok", "denied"):
                logger.close_session(sid)
            assert logger.save_logs(timeout=30).ok
            assert sink.stats()["spool"]["entries"] == 204
            broker.start()
            stats = _drained(sink, "the spool never drained")
        log = broker.log_text()
        taken = re.findall(r"Received PUBLISH from \S+ \(d0, q1, r0, m\d+, 'logs/ok'", log)
        denied = re.findall(r"Denied PUBLISH from \S+ \(d0, q1, r0, m\d+, 'logs/denied'", log)
        assert len(taken) == 102 and len(denied) == 102
        letters = list(read_dead_letters(dead))
        assert sorted(letter["entry"]["seq"] for letter in letters) == list(range(102))
        assert {letter["entry"]["session_id"] for letter in letters} == {"denied"}
        assert {letter["reason"] for letter in letters} == {
            "the broker refused it: Not authorized (0x87)"
        }
        assert stats["refused_entries"] == 102 and stats["published_entries"] == 102
        assert stats["spool"]["unspooled_entries"] == 204
        assert sum("refused" in str(e) for e in errors) == 1
    finally:
        broker.close()


def _msg(i: int) -> Message:
    return Message(f"logs/s{i % 3}", b'{"seq": %d}' % i)


def test_torn_last_record_is_cut_off_and_counted(tmp_path: Path) -> None:
    """A record cut short by a crash is skipped and counted; appends start clean after it."""
    path = tmp_path / "torn.spool"
    spool = Spool(path, 1 << 20, IDENTITY)
    spool.open()
    assert spool.append([_msg(i) for i in range(5)]) == 5
    spool.close()
    whole = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b'0badc0de {"t": "logs/s0", "p": "{\\"seq')  # the write a SIGKILL cut
    again = Spool(path, 1 << 20, IDENTITY)
    again.open()
    assert (again.records, again.torn_records) == (5, 1)
    assert path.stat().st_size == whole
    again.append([_msg(5)])
    assert [r.message for r in again.read(100)] == [_msg(i) for i in range(6)]
    again.close()


def test_partial_drain_progress_survives_a_crash(tmp_path: Path) -> None:
    """Acknowledged records are never re-sent after a reopen; a damaged record is skipped."""
    path = tmp_path / "ack.spool"
    spool = Spool(path, 1 << 20, IDENTITY)
    spool.open()
    spool.append([_msg(i) for i in range(10)])
    spool.ack(spool.read(4))
    spool.close()  # the process dies here, mid-drain
    data = bytearray(path.read_bytes())
    seventh = data.index(b'{\\"seq\\": 7}')
    data[seventh + 9] ^= 1  # flip a bit inside record 7: its CRC no longer matches
    path.write_bytes(bytes(data))
    again = Spool(path, 1 << 20, IDENTITY)
    again.open()
    assert again.corrupt_records == 1
    assert [r.message for r in again.read(100)] == [_msg(i) for i in (4, 5, 6, 8, 9)]
    again.ack(again.read(100))
    assert (again.records, again.bytes) == (0, 0)
    again.close()
    assert path.read_bytes().count(b"\n") == 1


async def test_hostile_spool_paths_are_refused(tmp_path: Path) -> None:
    """A symlink, a foreign spool, a file not ours, a FIFO: refused at open, never written."""
    target = tmp_path / "victim.txt"
    target.write_bytes(b"precious\n")
    link = tmp_path / "link.spool"
    link.symlink_to(target)
    foreign = tmp_path / "foreign.spool"
    other = Spool(foreign, 1 << 20, {**IDENTITY, "topic": "other/{session_id}"})
    other.open()
    other.append([_msg(1)])
    other.close()
    foreign_bytes = foreign.read_bytes()
    fifo = tmp_path / "fifo.spool"
    os.mkfifo(fifo)
    for path, words in (
        (link, "symlink"),
        (foreign, "wrong place"),
        (target, "not an MQTT spool"),
        (fifo, "not a regular file"),
    ):
        sink = MqttSink("127.0.0.1", 1, spool_path=path)
        with pytest.raises(ConfigurationError, match=words):
            await sink.open()
    assert target.read_bytes() == b"precious\n"
    assert foreign.read_bytes() == foreign_bytes
    # One spool, one sink: a second sink on the same file is refused while the first holds it.
    first = Spool(tmp_path / "shared.spool", 1 << 20, IDENTITY)
    first.open()
    with pytest.raises(ConfigurationError, match="in use"):
        Spool(tmp_path / "shared.spool", 1 << 20, IDENTITY).open()
    first.close()
