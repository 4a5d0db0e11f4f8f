"""Consume session logs from MQTT: deduplicate on (session_id, seq), print, track statuses.

Delivery is at-least-once (a batch in flight when the connection drops is sent again), so a
consumer keeps the ``(session_id, seq)`` pairs it has seen and drops repeats.

    python examples/mqtt_subscriber.py --host 127.0.0.1 --port 1883 [--exit-after-close N]

Needs aiomqtt, the ``[mqtt]`` extra: ``pip install -e '.[mqtt]'`` (or ``'.[examples]'``) in a
checkout.
"""

import argparse
import asyncio
import json

try:
    import aiomqtt
except ImportError as exc:
    raise SystemExit(
        f"examples/mqtt_subscriber.py needs aiomqtt ({exc}): pip install -e '.[mqtt]' in a checkout"
    ) from exc


async def consume(host: str, port: int, topic: str, exit_after_close: int | None) -> None:
    """Print every new entry and every session status until N sessions have closed."""
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    closed = 0
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topic, qos=1)
        print("subscribed", flush=True)
        async for message in client.messages:
            payload = bytes(message.payload)
            if str(message.topic).endswith("/status"):
                status = json.loads(payload)
                print(f"STATUS {status['session_id']}: {status['status']}", flush=True)
                continue
            for line in payload.splitlines():  # one entry, or JSON Lines when packed
                entry = json.loads(line)
                key = (entry["session_id"], entry["seq"])
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                print(
                    f"{entry['session_id']} #{entry['seq']} {entry['level']} "
                    f"{entry['message']} {json.dumps(entry.get('custom_fields', {}))}",
                    flush=True,
                )
                if entry["event"] == "session_close":
                    closed += 1
            if exit_after_close is not None and closed >= exit_after_close:
                print(f"done: {len(seen)} entries, {duplicates} duplicates dropped", flush=True)
                return


def main() -> None:
    """Parse arguments and consume."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--topic", default="logs/#")
    parser.add_argument("--exit-after-close", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(consume(args.host, args.port, args.topic, args.exit_after_close))


if __name__ == "__main__":
    main()
