"""Manual MQTT acknowledgements for ``collect``: PUBACK only after the entries are committed.

aiomqtt 2.5.1 has no public manual-ack API; the paho-mqtt 2.x client it wraps has one
(``manual_ack_set`` and ``ack(mid, qos)``). The workaround documented in aiomqtt issue #345
(empicano/aiomqtt) reaches that paho client through ``Client._client``. This module is the only
place that touches it, so an aiomqtt release with a public API changes two lines here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiomqtt

__all__ = ["ack", "enable_manual_acks"]


def enable_manual_acks(client: aiomqtt.Client) -> None:
    """Stop the client from acknowledging QoS 1 messages by itself (call before connecting)."""
    # Before connecting, not after: with a persistent session the broker sends queued messages
    # right after CONNACK, and paho would acknowledge those on arrival (aiomqtt issue #345).
    client._client.manual_ack_set(True)  # private: no public API in 2.5.1


def ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Acknowledge one received message (``aiomqtt.Message.mid``/``.qos``) on its connection."""
    # On a connection that has dropped meanwhile paho returns an error code and sends nothing:
    # the broker re-delivers the message, and the collector's dedup drops the copy.
    client._client.ack(mid, qos)  # private: aiomqtt issue #345
