"""Network servers killed and restarted mid-stream, beside a file sink that must not notice."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from async_session_logger import SessionLogger, SinkError, read_dead_letters
from async_session_logger.sinks import FileSink, MqttSink
from async_session_logger.sinks.smtp import SmtpSink

from ..conftest import read_lines
from ..mqtt_broker import Broker
from ..sinks.test_smtp import Server, smtp_options
from .conftest import assert_report_accounted, wait_until

SESSIONS = [f"dev-{n}" for n in range(4)]


def _log_round(logger: SessionLogger, start: int, stop: int) -> None:
    for i in range(start, stop):
        for sid in SESSIONS:
            logger.log_entry(sid, f"{sid} entry {i}", logging.INFO, {"i": i})


def test_mqtt_broker_sigkilled_beside_a_file_sink(tmp_path: Path) -> None:
    """SIGKILL of mosquitto mid-stream, then a restart: the file sink completes while the
    broker is down; afterwards every (session_id, seq) reaches an independent subscriber."""
    path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    per_session = 2500
    accepted = len(SESSIONS) * (per_session + 2)
    with Broker(persistence=True, workdir=tmp_path / "broker") as broker:
        sub = broker.subscriber("logs/#", workdir=tmp_path / "sub", clean=False)
        sub.start()
        broker.save()  # the verifier's persistent subscription survives the crash
        errors: list[SinkError] = []
        logger = SessionLogger(
            sinks=[FileSink(path), MqttSink("127.0.0.1", broker.port, reconnect_max=0.5)],
            dead_letter_path=dead,
            on_error=errors.append,
        )
        for sid in SESSIONS:
            logger.start_session(sid, metadata={"fleet": "faults"})
        _log_round(logger, 0, per_session // 4)
        sub.wait_for_sync(lambda s: len(s.messages()) >= 1000, timeout=60)
        broker.kill()
        # The broker is gone: the rest is logged, and the file sink must not wait for it.
        _log_round(logger, per_session // 4, per_session)
        for sid in SESSIONS:
            logger.close_session(sid)
        wait_until(
            lambda: logger.stats()["sinks"]["file"]["delivered"] == accepted,
            30,
            "the file sink completing while the broker is down",
        )
        down = logger.stats()["sinks"]["mqtt"]
        health = logger.health()
        assert len(read_lines(path)) == accepted
        broker.start()
        sub.resubscribe()
        report = logger.save_logs(timeout=120)
        final = logger.close()
        wanted = {(sid, seq) for sid in SESSIONS for seq in range(per_session + 2)}

        def pairs() -> Counter[tuple[str, int]]:
            return Counter(
                (e["session_id"], e["seq"])
                for t, p in sub.messages()
                if not t.endswith("/status")
                for e in [json.loads(p)]
            )

        sub.wait_for_sync(lambda s: set(pairs()) >= wanted, timeout=60)
        got = pairs()
        sub.close()

    assert down["pending"] > 0 and down["details"]["connected"] is False
    assert health["sinks"] == {"file": True, "mqtt": False}
    assert report.ok and final.ok
    assert_report_accounted(final, dead)
    assert (final["file"].delivered, final["mqtt"].delivered) == (accepted, accepted)
    assert set(got) == wanted
    print(f"\n{sum(got.values()) - len(got)} duplicates for {len(got)} entries (at-least-once)")
    file_seqs: dict[str, list[int]] = {}
    for entry in read_lines(path):
        file_seqs.setdefault(entry["session_id"], []).append(entry["seq"])
    assert file_seqs == {sid: list(range(per_session + 2)) for sid in SESSIONS}
    assert any("lost the connection" in str(e) for e in errors)
    assert any("reconnected" in str(e) for e in errors)
    assert final["mqtt"].details["disconnects"] >= 1


def _restart(server: Server) -> None:
    """Start a new aiosmtpd controller on the same port, with the same handler (same mailbox)."""
    server.controller = Controller(server, hostname="127.0.0.1", port=server.port)
    server.controller.start()


def _sessions(logger: SessionLogger, prefix: str, count: int) -> list[str]:
    sids = [f"{prefix}-{n}" for n in range(count)]
    for sid in sids:
        logger.start_session(sid)
        for i in range(5):
            logger.log_entry(sid, f"{sid} entry {i}", logging.WARNING if i == 4 else logging.INFO)
        logger.close_session(sid)
    return sids


def _digests(server: Server) -> dict[str, list[dict[str, Any]]]:
    """Return each received digest's attachment entries, by session id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for mail in server.mails:
        for name, entries in mail.attachments().items():
            out[name.removesuffix(".jsonl")] = entries
    return out


def _smtp_logger(server: Server, tmp_path: Path, errors: list[SinkError], **more: Any) -> Any:
    sink = SmtpSink(**smtp_options(server.port, max_emails_per_minute=None, timeout=5.0, **more))
    logger = SessionLogger(
        sinks=[FileSink(tmp_path / "log.jsonl"), sink],
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=errors.append,
        close_timeout=10,
    )
    return sink, logger


def test_smtp_server_restarted_digests_of_the_outage_arrive_after(tmp_path: Path) -> None:
    """SMTP server stopped while sessions close, restarted within the retries: the digests of
    the outage are mailed after the restart, each exactly once; nothing is dead-lettered."""
    errors: list[SinkError] = []
    with Server() as server:
        sink, logger = _smtp_logger(server, tmp_path, errors, retry_backoff=0.2, retries=6)
        before = _sessions(logger, "before", 2)
        server.wait_for(2)
        server.controller.stop()
        during = _sessions(logger, "during", 4)
        wait_until(lambda: sink.stats()["failed_attempts"] >= 1, 10, "a failed attempt")
        outage = logger.health()
        _restart(server)
        after = _sessions(logger, "after", 2)
        server.wait_for(8, timeout=30)
        final = logger.close()

    assert outage["sinks"] == {"file": True, "smtp": False}
    assert final.ok and not (tmp_path / "dead.jsonl").exists()
    assert_report_accounted(final)
    digests = _digests(server)
    assert sorted(digests) == sorted(before + during + after)
    lines = read_lines(tmp_path / "log.jsonl")
    for sid, entries in digests.items():
        assert entries == [e for e in lines if e["session_id"] == sid]
    assert len(server.mails) == 8  # each digest once
    texts = [str(e) for e in errors]
    assert len(texts) == 2, texts
    assert "retrying up to 6 times" in texts[0]
    assert "delivered again after" in texts[1] and "0 entries dead-lettered" in texts[1]


def test_smtp_server_down_past_the_retries_dead_letters_and_counts(tmp_path: Path) -> None:
    """SMTP server down longer than the retries last: the outage's digests are dead-lettered
    (entries counted, reported), the sessions after the restart are mailed; none is lost."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    with Server() as server:
        sink, logger = _smtp_logger(server, tmp_path, errors, retry_backoff=0.05, retries=2)
        before = _sessions(logger, "before", 2)
        server.wait_for(2)
        server.controller.stop()
        during = _sessions(logger, "during", 3)
        wait_until(lambda: sink.stats()["digests_given_up"] == 3, 10, "the outage given up")
        _restart(server)
        after = _sessions(logger, "after", 2)
        server.wait_for(4, timeout=30)
        final = logger.close()

    assert not final.ok
    assert_report_accounted(final, dead)
    assert (final["smtp"].delivered, final["smtp"].dead_lettered) == (4 * 7, 3 * 7)
    assert sorted(_digests(server)) == sorted(before + after)
    letters = list(read_dead_letters(dead))
    lines = read_lines(tmp_path / "log.jsonl")
    assert sorted((d["entry"]["session_id"], d["entry"]["seq"]) for d in letters) == sorted(
        (e["session_id"], e["seq"]) for e in lines if e["session_id"] in during
    )
    assert all(d["sink"] == "smtp" for d in letters)
    assert all(d["reason"].startswith("mail not delivered: SMTPConnectError") for d in letters)
    stats = sink.stats()
    assert (stats["digests_given_up"], stats["entries_dead_lettered"]) == (3, 21)
    texts = [str(e) for e in errors]
    assert "retrying up to 2 times" in texts[0]
    assert any("delivered again" in t and "21 entries dead-lettered" in t for t in texts)
    assert len(texts) <= 3, texts
