"""MQTT throughput: MqttSink against raw aiomqtt publishing, to a local mosquitto, one run.

Run by hand: ``.venv/bin/python benchmarks/mqtt.py [--entries 100000] [--repeat 3]``.

Each case publishes N entries to its own topic prefix while an independent subscriber process
(aiomqtt, QoS 1) counts the entries it receives (JSON Lines payloads are split into entries).
The rate is N divided by the time from the first publish until the subscriber has every entry.
Cases: raw aiomqtt at QoS 0 and 1 with one entry per message (the same bounded concurrency as
the sink: up to 1,000 publishes in flight), and MqttSink at QoS 0 and 1 with 1 and 100 entries
per message, the same at QoS 1 and 100 per message with entries of 10 sessions taken in turn
(a gateway's or a web app's mix: each batch holds several sessions, so the planner goes entry
by entry), and the same logger into a sink that does nothing (its own ceiling in this run:
the packed MQTT rate cannot pass it). Targets (issue 15): 1 entry/message >= 0.95x raw aiomqtt at
the same QoS; 100 entries/message at QoS 1 >= 250,000 entries/s delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SUBSCRIBER = r"""
import asyncio, sys, time, aiomqtt
port, prefix, expected = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def main():
    count = 0
    async with aiomqtt.Client("127.0.0.1", port, max_queued_incoming_messages=0) as client:
        await client.subscribe(prefix + "/#", qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            if str(message.topic).endswith("/status"):
                continue
            count += message.payload.count(b"\n") + 1
            if count >= expected:
                print(time.time(), count, flush=True)
                return
asyncio.run(main())
"""


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start mosquitto on a free loopback port (no queue limit: every message counts)."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


def start_subscriber(port: int, prefix: str, expected: int) -> subprocess.Popen[str]:
    """Start the counting subscriber and wait until its subscription is active."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, str(port), prefix, str(expected)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("subscriber failed")
    return proc


def finish(proc: subprocess.Popen[str], start: float, expected: int) -> float:
    """Wait for the subscriber's last entry; return entries per second end to end."""
    out, _ = proc.communicate(timeout=600)
    done_at, count = out.split()
    assert int(count) >= expected
    return expected / (float(done_at) - start)


async def raw_aiomqtt(port: int, prefix: str, entries: int, qos: int) -> float:
    """Publish one small JSON message per entry with aiomqtt alone."""
    import aiomqtt

    sub = start_subscriber(port, prefix, entries)
    # The same bytes the sink sends: a schema-v1 entry of the same shape.
    payloads = [
        json.dumps(
            {
                "timestamp": "2026-11-24T06:23:13.123456Z",
                "session_id": "bench",
                "seq": i,
                "event": "log",
                "level": "INFO",
                "levelno": 20,
                "message": "message number",
                "custom_fields": {"i": i},
            },
            separators=(",", ":"),
        ).encode()
        for i in range(entries)
    ]
    quiet = logging.getLogger("bench.aiomqtt")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    async with aiomqtt.Client(
        "127.0.0.1", port, max_inflight_messages=1000, logger=quiet
    ) as client:
        start = time.time()
        for chunk in range(0, entries, 1000):
            await asyncio.gather(
                *(
                    client.publish(f"{prefix}/bench", p, qos=qos)
                    for p in payloads[chunk : chunk + 1000]
                )
            )
    return finish(sub, start, entries)


async def produce(alog: Any, entries: int, sessions: int = 1) -> float:
    """Log ``entries`` entries (starts and closes included) in ``sessions`` sessions taken in
    turn, yielding every 100, and close the logger; return the clock's reading just before the
    first log entry."""
    ids = ["bench"] if sessions == 1 else [f"bench-{n}" for n in range(sessions)]
    async with alog:
        for sid in ids:
            await alog.start_session(sid)
        await alog.save_logs()
        start = time.time()
        for i in range(entries - 2 * sessions):
            await alog.log_entry(ids[i % sessions], "message number", logging.INFO, {"i": i})
            if i % 100 == 99:
                await asyncio.sleep(0)
        for sid in ids:
            await alog.close_session(sid)
        await alog.save_logs()
    return start


async def sink(
    port: int, prefix: str, entries: int, qos: int, per_message: int, sessions: int = 1
) -> float:
    """Log entries through AsyncSessionLogger into an MqttSink."""
    from async_session_logger import AsyncSessionLogger
    from async_session_logger.sinks import MqttSink

    sub = start_subscriber(port, prefix, entries)
    mqtt = MqttSink(
        "127.0.0.1",
        port,
        topic=prefix + "/{session_id}",
        qos=qos,
        entries_per_message=per_message,
        status=False,
        logger_topic=None,
    )
    alog = AsyncSessionLogger(sinks=[mqtt], dead_letter_path=None)
    start = await produce(alog, entries, sessions)
    # The start entries were delivered before the clock started: count the rest.
    rest = entries - sessions
    return finish(sub, start, rest) * entries / rest


async def no_sink(entries: int) -> float:
    """The same producer into a sink that does nothing: the logger's own ceiling, this run."""
    from async_session_logger import AsyncSessionLogger
    from async_session_logger.sinks import Batch, Sink

    class Nothing(Sink):
        async def write_batch(self, batch: Batch) -> None:
            pass

    alog = AsyncSessionLogger(sinks=[Nothing(name="nothing")], dead_letter_path=None)
    start = await produce(alog, entries)
    return (entries - 1) / (time.time() - start)


def main() -> None:
    """Run every case --repeat times and print medians with the target checks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases: list[tuple[str, int, int | None]] = [
        ("raw aiomqtt", 0, None),
        ("raw aiomqtt", 1, None),
        ("MqttSink", 0, 1),
        ("MqttSink", 1, 1),
        ("MqttSink", 0, 100),
        ("MqttSink", 1, 100),
        ("MqttSink, 10 sessions in turn", 1, 100),
        ("no-op sink", 1, 100),
    ]
    results: dict[tuple[str, int, int | None], list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            for rep in range(args.repeat):
                for n, case in enumerate(cases):
                    name, qos, per_message = case
                    prefix = f"b{rep}x{n}"
                    if name == "no-op sink":
                        rate = asyncio.run(no_sink(args.entries))
                    elif per_message is None:
                        rate = asyncio.run(raw_aiomqtt(port, prefix, args.entries, qos))
                    else:
                        sessions = 10 if "sessions" in name else 1
                        rate = asyncio.run(
                            sink(port, prefix, args.entries, qos, per_message, sessions)
                        )
                    results[case].append(rate)
                    print(
                        f"[{rep + 1}/{args.repeat}] {name} qos={qos} per_message="
                        f"{per_message or 1}: {rate:,.0f} entries/s",
                        file=sys.stderr,
                    )
        finally:
            broker.terminate()
            broker.wait()
    med = {case: statistics.median(rates) for case, rates in results.items()}
    print(f"\n{args.entries:,} entries, median of {args.repeat}, pid {os.getpid()}\n")
    print("| case | QoS | entries/message | entries/s delivered | vs raw aiomqtt |")
    print("|---|--:|--:|--:|--:|")
    for (name, qos, per_message), rate in med.items():
        raw = med[("raw aiomqtt", qos, None)]
        if name == "no-op sink":
            print(f"| the same logger, a sink that does nothing | - | - | {rate:,.0f} | - |")
            continue
        print(f"| {name} | {qos} | {per_message or 1} | {rate:,.0f} | {rate / raw:.2f}x |")
    print()
    for qos in (0, 1):
        ratio = med[("MqttSink", qos, 1)] / med[("raw aiomqtt", qos, None)]
        verdict = "OK" if ratio >= 0.95 else "MISSED"
        print(
            f"target: 1 entry/message, QoS {qos} >= 0.95x raw aiomqtt (measured {ratio:.2f}x) "
            f"{verdict}"
        )
    packed = med[("MqttSink", 1, 100)]
    verdict = "OK" if packed >= 250_000 else "MISSED"
    print(
        f"target: 100 entries/message, QoS 1 >= 250,000 entries/s (measured {packed:,.0f}) "
        f"{verdict}"
    )
    ceiling = med[("no-op sink", 1, 100)]
    print(
        f"the logger alone (a sink that does nothing) did {ceiling:,.0f} entries/s in this run: "
        f"MqttSink at 100 entries/message, QoS 1, is {packed / ceiling:.2f}x of it"
    )


if __name__ == "__main__":
    main()
