"""Issue 12's entry fields downstream: MQTT retained statuses and SMTP digests, real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import AsyncSessionLogger
from async_session_logger.sinks import Batch, MqttSink
from async_session_logger.sinks.smtp import SmtpSink

from ..mqtt_broker import Broker
from .test_smtp import FAST, Received, Server, smtp_options

T0 = "2026-03-01T10:00:00.000000Z"


def _ts(second: int, micro: int = 0) -> str:
    """Return a schema-v1 timestamp ``second`` seconds after T0."""
    return f"2026-03-01T10:00:{second:02d}.{micro:06d}Z"


def _start(sid: str, seq: int = 0, *, parent: str | None = None, at: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "timestamp": _ts(at), "session_id": sid, "seq": seq, "event": "session_start",
        "level": "INFO", "levelno": 20, "message": "Session started", "metadata": {"m": 1},
    }  # fmt: skip
    if parent is not None:
        entry["parent_session_id"] = parent
    return entry


def _log(
    sid: str, seq: int, level: str, message: str, *, at: int, micro: int = 0
) -> dict[str, Any]:
    levelno = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}[level]
    return {
        "timestamp": _ts(at, micro), "session_id": sid, "seq": seq, "event": "log",
        "level": level, "levelno": levelno, "message": message,
    }  # fmt: skip


def _close(
    sid: str, seq: int, status: str = "closed", *, at: int = 9, **more: Any
) -> dict[str, Any]:
    levelno = {"closed": 20, "error": 40}.get(status, 30)
    return {
        "timestamp": _ts(at), "session_id": sid, "seq": seq, "event": "session_close",
        "level": {20: "INFO", 30: "WARNING", 40: "ERROR"}[levelno], "levelno": levelno,
        "message": "Session closed", "status": status, "duration_s": 9.5,
        "entries": seq - 1, **more,
    }  # fmt: skip


def _batch(*entries: dict[str, Any]) -> Batch:
    """Return a batch as the lane hands it over: the dicts and their JSON Lines."""
    data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
    return Batch(list(entries), data)


# -- MQTT -------------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto of the test's own on a free loopback port."""
    with Broker(workdir=tmp_path / "broker") as running:
        yield running


def _statuses(broker: Broker, count: int) -> dict[str, dict[str, Any]]:
    """Return the retained statuses a subscriber connecting now finds, by session id."""
    late = broker.subscriber("logs/+/status", workdir=broker.workdir / "late").start()
    try:
        late.wait_for_sync(count)
        assert all(m.retain for m in late.records())
        return {m.topic: json.loads(m.payload) for m in late.records()}
    finally:
        late.close()


async def _publish(sink: MqttSink, *batches: Batch) -> None:
    await sink.open()
    try:
        for batch in batches:
            await asyncio.wait_for(sink.write_batch(batch), 30)  # hang guard
    finally:
        await sink.close()


async def test_close_status_carries_the_close_fields_and_the_parent(broker: Broker) -> None:
    """The retained close status has levels, discarded, summary and the start's parent."""
    summary = {"user": "bob", "token": "***", "items": 3}
    levels = {"INFO": 2, "ERROR": 1}
    sink = MqttSink("127.0.0.1", broker.port)
    # Start and close in different batches: the sink remembers the parent in between.
    await _publish(
        sink,
        _batch(_start("job", parent="req-1"), _start("plain")),
        _batch(
            _log("job", 1, "INFO", "a", at=1),
            _close("job", 2, "timeout", levels=levels, summary=summary, discarded=12),
            _close("plain", 1, "evicted", levels={}),
        ),
    )
    found = _statuses(broker, 2)
    assert found["logs/job/status"] == {
        "status": "timeout", "duration_s": 9.5, "entries": 1, "levels": levels,
        "discarded": 12, "summary": summary, "parent_session_id": "req-1",
        "session_id": "job", "timestamp": _ts(9),
    }  # fmt: skip
    assert found["logs/plain/status"] == {
        "status": "evicted", "duration_s": 9.5, "entries": 0, "levels": {},
        "discarded": 0, "summary": {}, "parent_session_id": None,
        "session_id": "plain", "timestamp": _ts(9),
    }  # fmt: skip


async def test_open_status_names_the_parent_and_a_reused_id_forgets_it(broker: Broker) -> None:
    """A child's open status names its parent; the same id started again without one: null."""
    sub = broker.subscriber("logs/+/status", workdir=broker.workdir / "sub").start()
    sink = MqttSink("127.0.0.1", broker.port, entries_per_message=10)
    await _publish(
        sink,
        _batch(_start("w", parent="asl-parent"), _close("w", 1, levels={})),
        _batch(_start("w", at=10)),
    )
    await sub.wait_for(3)
    bodies = [json.loads(p) for _, p in sub.messages()]
    assert [(b["status"], b["parent_session_id"]) for b in bodies] == [
        ("open", "asl-parent"),
        ("closed", "asl-parent"),
        ("open", None),
    ]
    assert bodies[0]["metadata"] == {"m": 1}
    sub.close()


async def test_a_summary_too_large_for_a_packet_is_omitted_from_the_status(
    broker: Broker,
) -> None:
    """A close entry whose summary makes the status too large: the status says omitted."""
    big = {f"k{i}": "v" * 20 for i in range(60)}
    close = _close("big", 1, "error", levels={"ERROR": 0}, summary=big)
    # The status repeats the summary and adds a 128-character parent: the entry fits, it not.
    line = len(_batch(close).data) - 1
    limit = 16 + line + 20  # a PUBLISH of topic "logs/big" at QoS 1, v5: 16 bytes + payload
    sink = MqttSink("127.0.0.1", broker.port, max_packet_size=limit)
    sub = broker.subscriber("logs/big", workdir=broker.workdir / "entries").start()
    await _publish(sink, _batch(_start("big", parent="p" * 128), close))
    status = _statuses(broker, 1)["logs/big/status"]
    assert status["status"] == "error" and status["levels"] == {"ERROR": 0}
    assert status["parent_session_id"] == "p" * 128
    assert status["summary"]["omitted"].endswith("bytes: larger than a packet may be")
    await sub.wait_for(2)
    assert sub.entries()[-1]["summary"] == big  # the entry itself keeps it
    sub.close()


# -- SMTP -------------------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[Server]:
    """A plain SMTP server of the test's own."""
    with Server() as running:
        yield running


async def _mail(sink: SmtpSink, *batches: Batch) -> None:
    await sink.open()
    try:
        for batch in batches:
            await sink.write_batch(batch)
    finally:
        await sink.close()


def _by_session(mails: list[Received]) -> dict[str, Received]:
    return {next(iter(m.raw_attachments())).removesuffix(".jsonl"): m for m in mails}


async def test_digest_shows_parent_levels_summary_and_discarded(server: Server) -> None:
    """A child's digest: parent, status, level counts, the summary table, discarded entries."""
    summary = {"user": "bob", "card": "***", "items": [1, 2], "ok": True}
    sink = SmtpSink(
        **smtp_options(server.port, **FAST),
        subject="[{status}] {session_id} of {parent_session_id} ({discarded} discarded)",
    )
    entries = [
        _start("child", parent="req-7"),
        _log("child", 1, "INFO", "step", at=1),
        _log("child", 2, "INFO", "step", at=2),
        _log("child", 3, "WARNING", "slow", at=3),
        _close("child", 4, levels={"WARNING": 1, "INFO": 2}, summary=summary, discarded=12),
    ]
    await _mail(sink, _batch(*entries))
    mail = (await asyncio.to_thread(server.wait_for, 1))[0]
    assert mail.message["Subject"] == "[closed] child of req-7 (12 discarded)"
    body = mail.body
    assert "Session child: status closed, 9.500 s, 3 entries, 0 at ERROR or worse" in body
    assert "Child session of req-7" in body
    assert "Levels: INFO 2, WARNING 1" in body  # by severity, whatever the entry's order
    assert "Summary:\n  user   bob\n  card   ***\n  items  [1,2]\n  ok     true\n" in body
    assert "12 entries held back by buffer_level were not written: the session did not fail." in (
        body
    )
    assert [e["seq"] for e in mail.attachments()["child.jsonl"]] == [0, 1, 2, 3, 4]


async def test_timeout_and_evicted_digests_under_digest_on_error(server: Server) -> None:
    """digest_on='error' mails timeout and evicted sessions, saying why; a clean one is skipped."""
    sink = SmtpSink(**smtp_options(server.port, digest_on="error", **FAST))
    sink_all = SmtpSink(**smtp_options(server.port, digest_on="always", **FAST), name="all")
    batch = _batch(
        _start("idle"), _close("idle", 1, "timeout", levels={}),
        _start("pushed"), _close("pushed", 1, "evicted", levels={}),
        _start("fine"), _close("fine", 1, levels={}),
    )  # fmt: skip
    await asyncio.gather(_mail(sink, batch), _mail(sink_all, batch))
    mails = await asyncio.to_thread(server.wait_for, 5)
    subjects = sorted(m.message["Subject"] for m in mails)
    assert subjects == [
        "[closed] session fine",
        "[evicted] session pushed",
        "[evicted] session pushed",
        "[timeout] session idle",
        "[timeout] session idle",
    ]
    assert sink.stats()["sessions_skipped"] == 1
    bodies = {m.message["Subject"]: m.body for m in mails}
    assert "Closed by idle_timeout: no activity for that long." in bodies["[timeout] session idle"]
    assert "Closed by max_open_sessions" in bodies["[evicted] session pushed"]
    assert "Child session of" not in bodies["[closed] session fine"]
    assert "Levels:" not in bodies["[closed] session fine"]  # no log entries: nothing to count


async def test_hostile_summary_and_parent_stay_in_the_body(server: Server) -> None:
    """CR/LF and controls in summary keys, values and the parent never reach a header."""
    evil = "x\r\nBcc: victim@example.org\r\n\r\nbody"
    summary = {"k\r\nX-Key: 1": evil, "long": "y" * 1000, "nul": "a\x00b"}
    summary |= {f"more{i}": i for i in range(60)}
    sink = SmtpSink(
        **smtp_options(server.port, **FAST), subject="{session_id} < {parent_session_id}"
    )
    await _mail(sink, _batch(_start("h", parent=evil), _close("h", 1, summary=summary)))
    mail = (await asyncio.to_thread(server.wait_for, 1))[0]
    assert mail.message["Subject"] == "h < x Bcc: victim@example.org body"
    assert "Bcc" not in mail.message and "X-Key" not in mail.message
    assert mail.rcpt_tos == smtp_options(0)["recipients"]
    body = mail.body
    assert "Child session of x\n      Bcc: victim@example.org\n      \n      body" in body
    assert "  k\n      X-Key: 1  x\n      Bcc: victim@example.org" in body
    assert f"  {'nul':<11}  a\\x00b" in body
    assert "y" * 297 + "..." in body and "y" * 298 not in body
    assert "... 13 more fields: the close entry in the attachment holds them all" in body
    assert mail.attachments()["h.jsonl"][1]["summary"] == summary


async def test_flushed_entries_with_older_timestamps_are_digested_once(server: Server) -> None:
    """Entries written at failure keep older timestamps: kept in the digest, and a retry of the
    batch (the lane's) or an earlier session of the same id counts nothing twice."""
    sink = SmtpSink(**smtp_options(server.port, **FAST))
    old = [_start("f", at=0), _log("f", 1, "INFO", "old", at=1), _close("f", 2, at=2)]
    new = [
        _start("f", at=10),
        _log("f", 1, "INFO", "before failing", at=20),
        # held by buffer_level at 11-12 s, written when the session failed at 21 s:
        _log("f", 2, "DEBUG", "detail 1", at=11),
        _log("f", 3, "DEBUG", "detail 2", at=12),
        _log("f", 4, "ERROR", "boom", at=21),
        _close("f", 5, "error", at=22, levels={"INFO": 1, "DEBUG": 2, "ERROR": 1}),
    ]
    await sink.open()
    try:
        await sink.write_batch(_batch(*old))
        await sink.write_batch(_batch(*old[1:], *new[:3]))  # a retry overlapping both
        await sink.write_batch(_batch(*old[1:], *new))
    finally:
        await sink.close()
    mails = await asyncio.to_thread(server.wait_for, 2)
    assert sorted(m.message["Subject"] for m in mails) == [
        "[closed] session f",
        "[error] session f",
    ]
    failed = next(m for m in mails if m.message["Subject"] == "[error] session f")
    assert [e["seq"] for e in failed.attachments()["f.jsonl"]] == [0, 1, 2, 3, 4, 5]
    assert "Levels: DEBUG 2, INFO 1, ERROR 1" in failed.body
    assert "4 entries, 1 at ERROR or worse" in failed.body
    assert sink.stats()["digests_sent"] == 2


# -- end to end: a real logger produces the fields ----------------------------------------------
async def _session_story(alog: AsyncSessionLogger) -> None:
    """A request with a child job (annotated, DEBUG held and discarded), a failing job whose
    held entries are written, and a session evicted by max_open_sessions."""
    async with alog.session("req") as req:
        async with alog.session("job", parent=req) as job:
            for i in range(3):
                await job.debug(f"detail {i}")
            await job.info("done")
            job.annotate(rows=42, password="hunter2")
        async with alog.session("bad", parent=req.token()) as bad:
            await bad.debug("held 1")
            await bad.debug("held 2")
            await bad.error("boom")
            bad.annotate(rows=0)
    await alog.start_session("a")
    await alog.start_session("b")
    await alog.start_session("c")  # max_open_sessions=2: "a" is evicted


async def test_a_real_logger_fills_the_mqtt_statuses(broker: Broker, tmp_path: Path) -> None:
    """Statuses of a real logger's sessions: parent, summary (masked), discarded, evicted."""
    sink = MqttSink("127.0.0.1", broker.port)
    async with AsyncSessionLogger(
        sinks=[sink], dead_letter_path=None, buffer_level="DEBUG", max_open_sessions=2
    ) as alog:
        await _session_story(alog)
        assert (await alog.save_logs()).ok
        found = await asyncio.to_thread(_statuses, broker, 6)
    job, bad = found["logs/job/status"], found["logs/bad/status"]
    assert (job["status"], job["parent_session_id"], job["entries"]) == ("closed", "req", 1)
    assert (job["levels"], job["discarded"]) == ({"INFO": 1}, 3)
    assert job["summary"] == {"rows": 42, "password": "***"}
    assert (bad["status"], bad["parent_session_id"], bad["discarded"]) == ("closed", "req", 0)
    assert bad["levels"] == {"DEBUG": 2, "ERROR": 1}
    assert found["logs/req/status"]["parent_session_id"] is None
    assert found["logs/a/status"]["status"] == "evicted"
    assert {found[f"logs/{s}/status"]["status"] for s in ("b", "c")} == {"open"}


async def test_a_real_logger_fills_the_smtp_digests(server: Server) -> None:
    """Digests of a real logger's sessions, and a timeout mailed under digest_on='error'."""
    sink = SmtpSink(**smtp_options(server.port, max_emails_per_minute=None, **FAST))
    async with AsyncSessionLogger(
        sinks=[sink], dead_letter_path=None, buffer_level="DEBUG", max_open_sessions=2
    ) as alog:
        await _session_story(alog)
    idle = SmtpSink(**smtp_options(server.port, digest_on="error", **FAST), name="idle")
    async with AsyncSessionLogger(sinks=[idle], dead_letter_path=None, idle_timeout=0.05) as alog:
        await alog.start_session("sleepy")
        await alog.start_session("brief")
        await alog.close_session("brief")
        # The 7th mail: "sleepy" closed by idle_timeout while the logger runs.
        mails = _by_session(await asyncio.to_thread(server.wait_for, 7))
    assert sorted(mails) == ["a", "b", "bad", "c", "job", "req", "sleepy"]
    job = mails["job"]
    assert job.message["Subject"] == "[closed] session job"
    assert "Child session of req" in job.body and "Levels: INFO 1" in job.body
    assert "Summary:\n  rows      42\n  password  ***\n" in job.body
    assert "3 entries held back by buffer_level were not written: the session did not fail." in (
        job.body
    )
    bad = mails["bad"]
    assert [e["message"] for e in bad.attachments()["bad.jsonl"]] == [
        "Session started", "held 1", "held 2", "boom", "Session closed",
    ]  # fmt: skip
    assert "Levels: DEBUG 2, ERROR 1" in bad.body and "held back" not in bad.body
    assert mails["a"].message["Subject"] == "[evicted] session a"
    sleepy = mails["sleepy"]
    assert sleepy.message["Subject"] == "[timeout] session sleepy"
    assert "Closed by idle_timeout" in sleepy.body
    assert idle.stats()["sessions_skipped"] == 1  # "brief" closed cleanly: no mail
