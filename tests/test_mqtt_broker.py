"""Prove the mosquitto test helpers against a real broker and a real mosquitto_sub."""

from __future__ import annotations

import json
import socket
import ssl

import aiomqtt
import pytest

from tests.mqtt_broker import (
    Broker,
    BrokerError,
    Message,
    Subscriber,
    SubscriberError,
    free_port,
    mosquitto_pub,
    running_broker,
    running_subscriber,
)


def port_open(port: int) -> bool:
    """Tell whether the loopback port accepts TCP connections."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def publish(port: int, *messages: tuple[str, bytes], **client: object) -> None:
    """Publish messages at QoS 1 with a fresh aiomqtt client, as the sink will."""
    async with aiomqtt.Client("127.0.0.1", port, **client) as mqtt:  # type: ignore[arg-type]
        for topic, payload in messages:
            await mqtt.publish(topic, payload, qos=1)


def test_free_port_is_bindable() -> None:
    """Return a loopback port that can be bound right away."""
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 < port < 65536


def test_broker_starts_listens_and_stops() -> None:
    """Start mosquitto with the generated config, then stop it and free the port."""
    broker = Broker()
    try:
        config = broker.config_path.read_text().splitlines()
        assert config[:3] == [
            f"listener {broker.port} 127.0.0.1",
            "user root",
            "max_queued_messages 0",
        ]
        assert "allow_anonymous true" in config
        assert broker.start() is broker
        assert broker.running
        assert port_open(broker.port)
        assert "mosquitto version 2.0.11 running" in broker.log_text()
        broker.stop()
        assert not broker.running
        assert broker.pid is None
        assert not port_open(broker.port)
        assert "mosquitto version 2.0.11 terminating" in broker.log_text()
    finally:
        broker.close()
    assert not broker.workdir.exists()


def test_start_on_a_taken_port_fails_with_the_log() -> None:
    """Raise BrokerError quoting the broker log when the port belongs to someone else."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = Broker(port=squatter.getsockname()[1])
        try:
            with pytest.raises(BrokerError, match="Error: Address already in use"):
                broker.start()
            assert not broker.running
        finally:
            broker.close()


async def test_aiomqtt_publish_reaches_subscriber() -> None:
    """Deliver messages published with aiomqtt to the independent subscriber, in order."""
    with running_broker() as broker, running_subscriber(broker) as sub:
        sent = [("logs/s1", b"first"), ("logs/s1/x", b"second"), ("other/s1", b"unmatched")]
        await publish(broker.port, *sent)
        assert await sub.wait_for(2, timeout=5) == sent[:2]
        assert sub.records() == [
            Message("logs/s1", b"first", qos=1, retain=False),
            Message("logs/s1/x", b"second", qos=1, retain=False),
        ]


async def test_multiline_payloads_parse_as_separate_entries() -> None:
    """Keep message boundaries for multi-line and binary payloads; flatten JSON Lines."""
    batch = b"".join(json.dumps({"seq": i, "msg": "a\tb"}).encode() + b"\n" for i in range(3))
    binary = b"line1\nline2\t\x00\r\n"
    with running_broker() as broker, running_subscriber(broker) as sub:
        await publish(broker.port, ("logs/a", batch), ("logs/b", b'{"seq": 9}'), ("bin/x", binary))
        assert await sub.wait_for(2, timeout=5) == [("logs/a", batch), ("logs/b", b'{"seq": 9}')]
        assert sub.entries() == [
            {"seq": 0, "msg": "a\tb"},
            {"seq": 1, "msg": "a\tb"},
            {"seq": 2, "msg": "a\tb"},
            {"seq": 9},
        ]
        assert sub.entries(topic_prefix="logs/b") == [{"seq": 9}]
        entries = await sub.wait_for_entries(4, timeout=5)
        assert [entry["seq"] for entry in entries] == [0, 1, 2, 9]
        with running_subscriber(broker, "bin/#") as raw:
            await publish(broker.port, ("bin/x", binary))
            assert await raw.wait_for(1, timeout=5) == [("bin/x", binary)]


async def test_large_volume_is_not_stalled_by_a_pipe() -> None:
    """Receive well over 64 KiB of output and over 1000 messages without losing any."""
    payload = b"x" * 200
    with running_broker() as broker, running_subscriber(broker) as sub:
        await publish(broker.port, *[(f"logs/n/{i}", payload) for i in range(1500)])
        got = await sub.wait_for(1500, timeout=10)
        assert [topic for topic, _ in got] == [f"logs/n/{i}" for i in range(1500)]
        assert {body for _, body in got} == {payload}
        assert sub.output_path.stat().st_size > 4 * 65536


async def test_retained_message_reaches_late_subscriber() -> None:
    """Deliver a message retained before the subscription, flagged as retained."""
    with running_broker() as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port) as mqtt:
            await mqtt.publish("logs/status", b"online", qos=1, retain=True)
        with running_subscriber(broker) as sub:
            assert await sub.wait_for(1, timeout=5) == [("logs/status", b"online")]
            assert sub.records() == [Message("logs/status", b"online", qos=1, retain=True)]


async def test_password_auth_accepts_right_and_refuses_wrong_credentials() -> None:
    """Let the right password publish; refuse a wrong password and anonymous clients."""
    with running_broker(users={"logger": "s3cret", "other": "pw2"}) as broker:
        assert "allow_anonymous false" in broker.config_path.read_text().splitlines()
        with running_subscriber(broker, user="other") as sub:
            assert (sub.username, sub.password) == ("other", "pw2")
            await publish(broker.port, ("logs/auth", b"ok"), username="logger", password="s3cret")
            assert await sub.wait_for(1, timeout=5) == [("logs/auth", b"ok")]
        with pytest.raises(aiomqtt.MqttCodeError) as wrong:
            await publish(broker.port, ("logs/auth", b"no"), username="logger", password="bad")
        assert str(wrong.value) == "[code:135] Not authorized"
        with pytest.raises(aiomqtt.MqttCodeError) as anonymous:
            await publish(broker.port, ("logs/auth", b"no"))
        assert str(anonymous.value) == "[code:135] Not authorized"
        bad_sub = broker.subscriber(password="bad")
        with pytest.raises(SubscriberError, match="Connection Refused: not authorised"):
            bad_sub.start()
        bad_sub.close()


async def test_tls_listener_trusts_only_the_test_ca() -> None:
    """Connect over TLS with client_ssl_context; fail verification with a default context."""
    with running_broker(tls=True) as broker:
        assert broker.tls_port is not None
        assert broker.ca_pem_path is not None
        assert broker.tls_port != broker.port
        with running_subscriber(broker, tls=True) as sub:
            assert sub.connect_port == broker.tls_port
            await publish(
                broker.tls_port, ("logs/tls", b"secret"), tls_context=broker.client_ssl_context()
            )
            assert await sub.wait_for(1, timeout=5) == [("logs/tls", b"secret")]
        with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
            await publish(
                broker.tls_port, ("logs/tls", b"x"), tls_context=ssl.create_default_context()
            )


async def test_kill_and_restart_on_the_same_port_then_resubscribe() -> None:
    """Keep the port across SIGKILL and restart; a resubscribed subscriber sees new messages."""
    with running_broker() as broker, running_subscriber(broker) as sub:
        port, pid = broker.port, broker.pid
        await publish(port, ("logs/r", b"before"))
        assert await sub.wait_for(1, timeout=5) == [("logs/r", b"before")]
        broker.kill()
        assert not broker.running
        assert not port_open(port)
        broker.restart()
        assert broker.port == port
        assert broker.pid != pid
        assert port_open(port)
        sub.resubscribe()
        await publish(port, ("logs/r", b"after"))
        assert await sub.wait_for(2, timeout=5) == [("logs/r", b"before"), ("logs/r", b"after")]


async def test_saved_persistent_session_survives_kill() -> None:
    """Keep an offline persistent subscriber's queued QoS 1 messages across save, kill, restart."""
    with running_broker(persistence=True) as broker:
        sub = broker.subscriber(client_id="verifier", clean=False)
        try:
            sub.start()
            sub.stop()
            sent = [(f"logs/p/{i}", f"m{i}".encode()) for i in range(1200)]
            await publish(broker.port, *sent)
            broker.save()
            broker.kill()
            broker.restart()
            # Queued messages precede the readiness probe, so they are all in once start returns.
            sub.restart()
            assert sub.messages() == sent
            assert "Sending CONNACK to verifier (1, 0)" in broker.log_text()
        finally:
            sub.close()


async def test_unsaved_persistent_session_is_lost_on_kill() -> None:
    """Lose a persistent subscriber's session and queue when the broker dies before a save."""
    with running_broker(persistence=True) as broker:
        sub = broker.subscriber(client_id="verifier", clean=False)
        try:
            sub.start()
            sub.stop()
            await publish(broker.port, ("logs/p", b"lost"))
            broker.kill()
            broker.restart()
            sub.restart()
            assert sub.messages() == []
        finally:
            sub.close()


def test_save_needs_persistence() -> None:
    """Refuse save() on a broker created without persistence."""
    with running_broker() as broker, pytest.raises(BrokerError, match="persistence=True"):
        broker.save()


def test_subscriber_is_a_context_manager_and_stops() -> None:
    """Start on enter, stop on exit, and keep no process behind."""
    with running_broker() as broker:
        sub = Subscriber(broker.port, "logs/#", qos=0)
        with sub:
            assert sub.running
            mosquitto_pub(broker.port, "logs/cli", "from mosquitto_pub", qos=0)
            assert sub.wait_for_sync(1, timeout=5) == [("logs/cli", b"from mosquitto_pub")]
        assert not sub.running
        assert not sub.workdir.exists()
