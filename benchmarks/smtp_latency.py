"""SMTP digest latency: from ``close_session`` to the mail on a loopback server, one run.

Run by hand: ``.venv/bin/python benchmarks/smtp_latency.py [--sessions 50] [--entries 20]``.

A real aiosmtpd server runs in a thread on a loopback port and stamps each mail as its DATA
arrives (``time.perf_counter``, shared by every thread of the process). Case 1: an
``AsyncSessionLogger`` with an ``SmtpSink`` (no rate limit) logs sessions one after the other;
the latency is from the moment ``close_session`` is called to the digest's arrival. Case 2, the
floor: ``aiosmtplib.send`` of a mail of the same shape (text body and a JSON Lines attachment),
from the call to the arrival, on a new connection each time as the sink opens one per round.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

SENDER, RECIPIENT = "logger@example.com", "ops@example.com"


class Stamper:
    """An aiosmtpd handler that stamps each mail's arrival and wakes the benchmark."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.arrivals.append(time.perf_counter())
        self.arrived.set()
        return "250 OK"


def free_port() -> int:
    """Return a loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_arrival(stamper: Stamper) -> float:
    """Wait (off the loop) for the next mail; return its arrival stamp."""
    got = await asyncio.to_thread(stamper.arrived.wait, 10.0)
    if not got:
        raise RuntimeError("no mail arrived within 10 s")
    stamper.arrived.clear()
    return stamper.arrivals[-1]


async def sink_case(port: int, stamper: Stamper, sessions: int, entries: int) -> list[float]:
    """Digest latency through AsyncSessionLogger + SmtpSink, in ms."""
    from async_session_logger import AsyncSessionLogger
    from async_session_logger.sinks import SmtpSink

    sink = SmtpSink(
        "127.0.0.1",
        port,
        sender=SENDER,
        recipients=[RECIPIENT],
        max_emails_per_minute=None,
        local_hostname="localhost",
    )
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        dead = Path(tmp) / "dead.jsonl"
        async with AsyncSessionLogger(sinks=[sink], dead_letter_path=dead) as alog:
            for n in range(sessions + 1):
                sid = f"bench-{n}"
                await alog.start_session(sid, {"user": "u1"})
                for i in range(entries):
                    await alog.log_entry(sid, f"step {i}", "INFO", {"i": i})
                started = time.perf_counter()
                await alog.close_session(sid)
                arrived = await wait_arrival(stamper)
                if n:  # the first one also pays the FQDN lookup and imports
                    latencies.append((arrived - started) * 1000)
    return latencies


def sample_mail(entries: int) -> EmailMessage:
    """A mail shaped like a digest: a text body listing entries and a JSON Lines attachment."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = SENDER, RECIPIENT, "[closed] session bench"
    body = "\n".join(f"2026-11-24T00:00:00.000000Z INFO step {i}" for i in range(entries))
    mail.set_content(body)
    lines = "".join(f'{{"seq":{i},"message":"step {i}"}}\n' for i in range(entries))
    mail.add_attachment(lines.encode(), maintype="application", subtype="x-ndjson")
    return mail


async def raw_case(port: int, stamper: Stamper, sessions: int, entries: int) -> list[float]:
    """aiosmtplib.send latency for a digest-shaped mail, in ms."""
    latencies = []
    for n in range(sessions + 1):
        started = time.perf_counter()
        await aiosmtplib.send(
            sample_mail(entries), hostname="127.0.0.1", port=port, local_hostname="localhost"
        )
        arrived = await wait_arrival(stamper)
        if n:
            latencies.append((arrived - started) * 1000)
    return latencies


def describe(name: str, values: list[float]) -> str:
    """One row: median, p90 and max in ms."""
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"| {name} | {statistics.median(ordered):.2f} | {p90:.2f} | {ordered[-1]:.2f} |"


async def main() -> None:
    """Run both cases against one server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--entries", type=int, default=20, help="log entries per session")
    args = parser.parse_args()
    stamper = Stamper()
    port = free_port()
    controller = Controller(stamper, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sink = await sink_case(port, stamper, args.sessions, args.entries)
        raw = await raw_case(port, stamper, args.sessions, args.entries)
    finally:
        controller.stop()
    print(f"{args.sessions} sessions of {args.entries} entries, loopback aiosmtpd, ms:")
    print("| case | median | p90 | max |\n|---|--:|--:|--:|")
    print(describe("close_session -> digest at the server (SmtpSink)", sink))
    print(describe("aiosmtplib.send of a digest-shaped mail (floor)", raw))
    print(f"ratio of medians: {statistics.median(sink) / statistics.median(raw):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
