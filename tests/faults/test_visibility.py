"""What a user sees of failures: stats() and health() per sink, and one report per incident."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import SessionLogger, SinkError
from async_session_logger.sinks import CustomSink, FileSink, MemorySink, MqttSink, Sink
from async_session_logger.sinks.smtp import SmtpSink

from ..mqtt_broker import Broker
from ..sinks.test_smtp import Server, smtp_options
from .conftest import Script, assert_report_accounted, wait_until

LOGGER_KEYS = {"accepted", "queued", "open_sessions", "state", "sinks"}
SINK_KEYS = {
    "name",
    "delivered",
    "retried",
    "failed",
    "dead_lettered",
    "lost",
    "filtered",
    "pending",  # this sink's queue depth
    "failures",
    "incidents",
    "last_error",
    "healthy",
    "details",
}
MQTT_DETAILS = {
    "published_messages",
    "published_entries",
    "resent_messages",
    "replayed_messages",
    "connects",
    "connect_failures",
    "disconnects",
    "connected",
    "last_error",
}
SMTP_DETAILS = {
    "mails_sent",
    "digests_sent",
    "alerts_sent",
    "alerts_coalesced",
    "alerts_failed",
    "digests_given_up",
    "entries_dead_lettered",
    "entries_lost",
    "failed_attempts",
    "connections",
    "sessions_skipped",
    "open_sessions",
    "pending_digests",
    "pending_alerts",
    "last_error",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stats_and_health_shapes_for_every_sink(tmp_path: Path) -> None:
    """stats() has the same counters for every sink (plus its own details) and is JSON;
    health() says ok per sink; both against a real broker and a real mail server."""
    with Broker(workdir=tmp_path / "broker") as broker, Server() as server:
        sinks: list[Sink] = [
            FileSink(tmp_path / "log.jsonl"),
            MemorySink(),
            CustomSink(lambda message: None, name="hook"),
            MqttSink("127.0.0.1", broker.port),
            SmtpSink(**smtp_options(server.port, max_emails_per_minute=None)),
        ]
        with SessionLogger(sinks=sinks, dead_letter_path=tmp_path / "dead.jsonl") as logger:
            logger.start_session("shape")
            logger.log_entry("shape", "hello", logging.WARNING, {"k": 1})
            logger.close_session("shape")
            report = logger.save_logs(timeout=30)
            server.wait_for(1)
            # The server has the mail a moment before the client has read its "250 OK".
            deadline = time.monotonic() + 5
            while logger.stats()["sinks"]["smtp"]["details"]["digests_sent"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            stats = logger.stats()
            health = logger.health()
    assert report.ok
    assert stats.keys() >= LOGGER_KEYS
    assert (stats["accepted"], stats["queued"], stats["open_sessions"]) == (3, 0, 0)
    assert stats["state"] == "running"
    names = ["file", "memory", "hook", "mqtt", "smtp"]
    assert list(stats["sinks"]) == names
    for name in names:
        sink = stats["sinks"][name]
        assert sink.keys() >= SINK_KEYS, name
        assert sink["name"] == name
        assert (sink["delivered"], sink["failed"], sink["pending"]) == (3, 0, 0), name
        assert (sink["retried"], sink["dead_lettered"], sink["lost"]) == (0, 0, 0), name
        assert (sink["last_error"], sink["healthy"]) == (None, True), name
    assert stats["sinks"]["mqtt"]["details"].keys() >= MQTT_DETAILS
    assert stats["sinks"]["mqtt"]["details"]["connected"] is True
    assert stats["sinks"]["smtp"]["details"].keys() >= SMTP_DETAILS
    assert stats["sinks"]["smtp"]["details"]["digests_sent"] == 1
    json.dumps(stats)  # plain JSON, ready for a metrics endpoint
    json.dumps(report.as_dict())
    assert health == {"ok": True, "sinks": dict.fromkeys(names, True)}


def test_an_incident_as_stats_and_health_show_it(tmp_path: Path) -> None:
    """A sink failing then recovering, twice: healthy flips, failures/retried/incidents and
    last_error count it, each incident is reported once and its recovery once."""
    broken = {"on": False}

    def handler(message: str) -> None:
        if broken["on"]:
            raise OSError("disk of the handler is gone")

    errors: list[SinkError] = []
    logger = SessionLogger(
        sinks=[CustomSink(handler, name="hook", retries=2), MemorySink()],
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=errors.append,
    )
    logger.start_session("i")

    def phase(failing: bool, count: int) -> dict[str, Any]:
        broken["on"] = failing
        for n in range(count):
            logger.log_entry("i", f"{'bad' if failing else 'good'} {n}")
        logger.save_logs()
        out: dict[str, Any] = logger.stats()["sinks"]["hook"]
        assert logger.health()["sinks"]["hook"] is (not failing)
        return out

    ok = phase(False, 10)
    first = phase(True, 10)
    back = phase(False, 10)
    second = phase(True, 5)
    again = phase(False, 1)
    final = logger.close()

    assert (ok["failures"], ok["incidents"], ok["healthy"]) == (0, 0, True)
    assert (first["dead_lettered"], first["retried"], first["incidents"]) == (10, 20, 1)
    # Each batch is tried 3 times (1 + 2 retries); the 10 entries may come in one batch or more.
    assert first["failures"] % 3 == 0 and first["failures"] >= 3 and first["healthy"] is False
    assert first["last_error"] == "OSError: disk of the handler is gone"
    assert (back["healthy"], back["incidents"], back["delivered"]) == (True, 1, 21)
    assert back["last_error"] == "OSError: disk of the handler is gone"  # kept for inspection
    assert (second["incidents"], second["dead_lettered"]) == (2, 15)
    second_failures = second["failures"] - first["failures"]
    assert again["healthy"] is True
    assert_report_accounted(final, tmp_path / "dead.jsonl")
    texts = [str(e) for e in errors]
    assert [t.split(";")[0] for t in texts] == [
        "sink 'hook' failed",
        f"sink 'hook' recovered after {first['failures']} failed attempts",
        "sink 'hook' failed",
        f"sink 'hook' recovered after {second_failures} failed attempts",
        "sink 'hook' closed with 15 entries dead-lettered to "
        f"{str(tmp_path / 'dead.jsonl')!r} and 0 lost",
    ]


N = 10_000


def _file_full(tmp_path: Path) -> list[Sink]:
    return [FileSink("/dev/full", retries=1)]


def _mqtt_down(tmp_path: Path) -> list[Sink]:
    return [MqttSink("127.0.0.1", _free_port(), reconnect_max=0.2)]


def _smtp_down(tmp_path: Path) -> list[Sink]:
    options = smtp_options(_free_port(), retry_backoff=0.02, timeout=2.0, retries=1)
    return [SmtpSink(**options, max_emails_per_minute=None)]


@pytest.mark.parametrize(
    "make_sinks", [_file_full, _mqtt_down, _smtp_down], ids=["file-on-dev-full", "mqtt", "smtp"]
)
def test_a_dead_sink_for_ten_thousand_entries_is_reported_a_few_times(
    tmp_path: Path, make_sinks: Callable[[Path], list[Sink]]
) -> None:
    """10,000 entries (100 sessions) into a sink that cannot deliver: a handful of on_error
    calls, not one per entry or per batch; every entry dead-lettered and counted."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    logger = SessionLogger(
        sinks=[*make_sinks(tmp_path), MemorySink()],
        dead_letter_path=dead,
        on_error=errors.append,
        close_timeout=1.5,
    )
    for s in range(100):
        sid = f"s{s}"
        logger.start_session(sid)
        for i in range(N // 100):
            logger.log_entry(sid, f"{sid} entry {i}")
        logger.close_session(sid)
    wait_until(lambda: bool(errors), 10, "the first report")
    final = logger.close()

    accepted = N + 200
    assert_report_accounted(final, dead)
    assert final["memory"].delivered == accepted
    dead_sink = next(name for name in final.sinks if name != "memory")
    assert final[dead_sink].dead_lettered == accepted
    texts = [str(e) for e in errors]
    print(f"\n{dead_sink}: {len(texts)} reports for {accepted} failed entries: {texts}")
    assert 2 <= len(texts) <= 3, texts
    assert all(e.sink_name == dead_sink for e in errors)


DEV_FULL_SCRIPT = """
from async_session_logger import SessionLogger
from async_session_logger.sinks import FileSink, MemorySink

logger = SessionLogger(sinks=[FileSink("/dev/full"), MemorySink()], dead_letter_path="dead.jsonl")
for s in range(100):
    logger.start_session(f"s{s}")
    for i in range(100):
        logger.log_entry(f"s{s}", f"entry {i}")
    logger.close_session(f"s{s}")
"""


def test_default_reporting_is_a_few_stderr_lines(script: Callable[[str], Script]) -> None:
    """With the default on_error, a sink failing for 10,200 entries prints two lines to
    stderr: the incident (with its cause) and what the exit drain dead-lettered."""
    run = script(DEV_FULL_SCRIPT).run()
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("async_session_logger: sink 'file' failed; retrying up to 3")
    assert "(OSError: [Errno 28] No space left on device)" in lines[0]
    assert lines[1] == (
        "async_session_logger: sink 'file' closed with 10200 entries dead-lettered to "
        "'dead.jsonl' and 0 lost"
    )
