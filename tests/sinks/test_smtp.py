"""SmtpSink against real aiosmtpd servers on loopback, reading back what the servers received."""

from __future__ import annotations

import asyncio
import email
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from async_session_logger import (
    AsyncSessionLogger,
    ConfigurationError,
    InvalidSessionIdError,
    SessionLogger,
    SinkError,
    read_dead_letters,
)
from async_session_logger.sinks import Batch, FileSink
from async_session_logger.sinks.smtp import SmtpSink

from ..conftest import read_lines

SENDER = "logger@example.com"
RCPTS = ["ops@example.com", "dev@example.com"]
USER, PASSWORD = "bob", "s3cret-Pa55"
FAST = {"retry_backoff": 0.05, "timeout": 5.0}  # short pauses: the whole file runs in seconds


def free_port() -> int:
    """Return a loopback port nobody listens on (aiosmtpd 1.4 cannot listen on port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    """One mail as the server got it: envelope, parsed message, connection facts."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    peer: Any
    tls: bool
    auth: Any

    def raw_attachments(self) -> dict[str, bytes]:
        """Return each attachment's bytes by file name."""
        out = {}
        for part in self.message.iter_attachments():
            data = part.get_content()
            assert isinstance(data, bytes)
            out[str(part.get_filename())] = data
        return out

    def attachments(self) -> dict[str, list[dict[str, Any]]]:
        """Return each attachment's JSON Lines, parsed, by file name."""
        return {
            name: [json.loads(line) for line in data.splitlines()]
            for name, data in self.raw_attachments().items()
        }

    @property
    def body(self) -> str:
        """Return the plain-text body (SMTP carries it with CRLF line ends: LF here)."""
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content()).replace("\r\n", "\n")


class Server:
    """A real SMTP server in a thread on a free loopback port; replies to DATA as scripted."""

    def __init__(self, replies: list[str] | None = None, **options: Any) -> None:
        self.replies = list(replies or [])
        self.data_commands = 0
        self.mails: list[Received] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Answer the next scripted reply, or keep the mail and answer 250."""
        with self._lock:
            self.data_commands += 1
            if self.replies:
                return self.replies.pop(0)
            assert isinstance(envelope.content, bytes)
            message = email.message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(message, EmailMessage)
            tls = server.transport is not None and bool(
                server.transport.get_extra_info("ssl_object")
            )
            self.mails.append(
                Received(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    message,
                    session.peer,
                    tls,
                    session.auth_data,
                )
            )
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until ``count`` mails arrived; return them (exactly ``count``)."""
        deadline = time.monotonic() + timeout
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.mails) == count, f"{len(self.mails)} mails, expected {count}"
        return list(self.mails)

    def __enter__(self) -> Server:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def server() -> Iterator[Server]:
    """A plain SMTP server of the test's own."""
    with Server() as running:
        yield running


@dataclass
class Tls:
    """A private CA, a server context holding its cert for 127.0.0.1, a client trusting it."""

    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> Tls:
    """TLS contexts from a trustme CA."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return Tls(server_ctx, client_ctx)


def authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    """Accept bob's password only (a refusal must be handled=False, or the client hangs)."""
    if isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    ):
        return AuthResult(success=True, auth_data=data.login)
    return AuthResult(success=False, handled=False)


def smtp_options(port: int, **more: Any) -> dict[str, Any]:
    """Return SmtpSink options for a loopback server."""
    return {"host": "127.0.0.1", "port": port, "sender": SENDER, "recipients": RCPTS, **more}


def entries_of(path: Path, session_id: str) -> list[dict[str, Any]]:
    """Return a session's entries from a JSON Lines file."""
    return [e for e in read_lines(path) if e["session_id"] == session_id]


def test_seed_email_case_one_digest_per_session(server: Server, tmp_path: Path) -> None:
    """method='smtp': one digest per session whose attachment is exactly the session's entries."""
    log_path = tmp_path / "log.jsonl"
    errors: list[SinkError] = []
    logger = SessionLogger(
        method=["file", "smtp"],
        path=log_path,
        smtp=smtp_options(server.port),
        dead_letter_path=tmp_path / "dead.jsonl",
        on_error=errors.append,
    )
    for sid in ("001", "002"):
        logger.start_session(sid, metadata={"user_id": "u1"})
        logger.log_entry(sid, "This is the first log entry.", logging.INFO)
        logger.log_entry(
            sid, "This is the second log entry.", logging.WARNING, {"custom_field": "custom_value"}
        )
        logger.close_session(sid)
    report = logger.close()  # a second digest within 6 s of the first would wait: close sends it
    mails = server.wait_for(2)
    assert report.ok and report["smtp"].delivered == 8 and errors == []
    assert sorted(m.message["Subject"] for m in mails) == [
        "[closed] session 001",
        "[closed] session 002",
    ]
    for mail in mails:
        sid = mail.message["Subject"].rsplit(" ", 1)[1]
        assert (mail.mail_from, mail.rcpt_tos) == (SENDER, RCPTS)
        assert mail.message["From"] == SENDER and mail.message["To"] == ", ".join(RCPTS)
        assert mail.attachments() == {f"{sid}.jsonl": entries_of(log_path, sid)}
        assert "This is the second log entry." in mail.body
        assert '{"custom_field":"custom_value"}' in mail.body
        assert 'Metadata: {"user_id":"u1"}' in mail.body
    assert len(server.mails) == 2 and server.data_commands == 2


async def test_burst_of_100_errors_fits_in_3_mails(server: Server, tmp_path: Path) -> None:
    """100 ERROR alerts at 3 mails a minute: 3 mails hold all 100; the held ones are counted."""
    sink = SmtpSink(
        **smtp_options(server.port, alert_level=logging.ERROR, max_emails_per_minute=3, **FAST)
    )
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=tmp_path / "d.jsonl") as alog:
        await alog.start_session("burst")
        await alog.log_entry("burst", "error 1", logging.ERROR, {"i": 1})
        await asyncio.to_thread(server.wait_for, 1)  # the first alert goes at once
        await asyncio.to_thread(_wait, lambda: sink.stats()["mails_sent"] == 1)  # 250 seen
        for i in range(2, 101):  # the next round may start 20 s later: these wait
            await alog.log_entry("burst", f"error {i}", logging.ERROR, {"i": i})
        await alog.close_session("burst")
        await alog.save_logs()
        assert sink.stats()["alerts_coalesced"] == 99 and sink.stats()["mails_sent"] == 1
    mails = server.wait_for(3)
    alerted = [
        e["custom_fields"]["i"] for m in mails for e in m.attachments().get("alerts.jsonl", [])
    ]
    assert sorted(alerted) == list(range(1, 101))
    digest = [m for m in mails if "burst.jsonl" in m.attachments()]
    assert len(digest) == 1
    logged = digest[0].attachments()["burst.jsonl"]
    assert [e["seq"] for e in logged] == list(range(102))
    assert mails[0].message["Subject"] == "[ERROR] 1 alert(s), first in session burst"
    stats = sink.stats()
    assert (stats["mails_sent"], stats["alerts_sent"], stats["digests_sent"]) == (3, 100, 1)


def test_starttls_and_auth(tls: Tls, tmp_path: Path) -> None:
    """STARTTLS with a private CA, then AUTH: delivered; the password shows up nowhere."""
    errors: list[SinkError] = []
    with Server(
        tls_context=tls.server,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    ) as server:
        sink = SmtpSink(
            **smtp_options(server.port, username=USER, password=PASSWORD, **FAST),
            start_tls=True,
            tls_context=tls.client,
        )
        with SessionLogger(sinks=[sink], dead_letter_path=None, on_error=errors.append) as log:
            with log.session("tls-1") as s:
                s.error("over TLS")
            log.save_logs()
            mails = server.wait_for(1)
        assert (mails[0].tls, mails[0].auth) == (True, USER.encode())
        assert mails[0].message["Subject"] == "[closed] session tls-1"
        assert errors == []
        assert PASSWORD not in repr(sink) and PASSWORD not in json.dumps(sink.stats())
        assert repr(sink) == (
            f"<SmtpSink 'smtp' 127.0.0.1:{server.port} starttls user='bob' to={RCPTS!r}>"
        )


def test_implicit_tls(tls: Tls, tmp_path: Path) -> None:
    """use_tls=True speaks TLS from the first byte (SMTPS)."""
    with Server(ssl_context=tls.server) as server:
        sink = SmtpSink(**smtp_options(server.port, **FAST), use_tls=True, tls_context=tls.client)
        with SessionLogger(sinks=[sink], dead_letter_path=None) as log:
            log.start_session("smtps")
            log.close_session("smtps", status="error")
            mails = server.wait_for(1)
    assert mails[0].tls is True
    assert mails[0].message["Subject"] == "[error] session smtps"


def test_untrusted_certificate_is_refused(tls: Tls, tmp_path: Path) -> None:
    """Without the private CA the certificate fails verification: nothing sent, dead-lettered."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    with Server(ssl_context=tls.server) as server:
        sink = SmtpSink(**smtp_options(server.port, **FAST), use_tls=True)  # system CAs only
        with SessionLogger(sinks=[sink], dead_letter_path=dead, on_error=errors.append) as log:
            log.start_session("mitm")
            log.close_session("mitm")
        assert server.data_commands == 0
    assert [d["entry"]["seq"] for d in read_dead_letters(dead)] == [0, 1]
    assert "CERTIFICATE_VERIFY_FAILED" in str(errors[0].__cause__)
    assert "refused permanently" in str(errors[0])
    assert sink.stats()["failed_attempts"] == 1  # permanent: never retried


def test_wrong_password_reported_other_sinks_unaffected(tls: Tls, tmp_path: Path) -> None:
    """A 535 is reported once and dead-lettered; the file sink has every entry."""
    errors: list[SinkError] = []
    log_path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    with Server(
        tls_context=tls.server,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    ) as server:
        sink = SmtpSink(
            **smtp_options(server.port, username=USER, password="wrong-" + PASSWORD, **FAST),
            tls_context=tls.client,
        )
        logger = SessionLogger(
            sinks=[FileSink(log_path), sink], dead_letter_path=dead, on_error=errors.append
        )
        logger.start_session("auth")
        for i in range(5):
            logger.log_entry("auth", f"entry {i}", logging.INFO)
        logger.close_session("auth")
        report = logger.close()
        assert server.data_commands == 0
    assert report["file"].delivered == 7 and report["file"].failed == 0
    assert [e["seq"] for e in read_lines(log_path)] == list(range(7))
    assert (report["smtp"].delivered, report["smtp"].dead_lettered) == (0, 7)
    letters = list(read_dead_letters(dead))
    assert [(d["sink"], d["entry"]["seq"]) for d in letters] == [("smtp", i) for i in range(7)]
    assert letters[0]["reason"].startswith("mail not delivered: SMTPAuthenticationError: 535")
    smtp_errors = [e for e in errors if "could not deliver" in str(e)]
    assert len(smtp_errors) == 1 and "535" in str(smtp_errors[0].__cause__)
    text = " ".join(f"{e} {e.__cause__}" for e in errors) + json.dumps(sink.stats())
    assert PASSWORD not in text and PASSWORD not in repr(sink)


async def test_451_twice_then_250_delivers_once(tmp_path: Path) -> None:
    """Two temporary refusals are retried with backoff; the digest arrives exactly once."""
    errors: list[SinkError] = []
    with Server(replies=["451 4.3.0 try later", "451 4.3.0 try later"]) as server:
        sink = SmtpSink(**smtp_options(server.port, **FAST))
        async with AsyncSessionLogger(
            sinks=[sink], dead_letter_path=tmp_path / "dead.jsonl", on_error=errors.append
        ) as alog:
            async with alog.session("greylisted") as s:
                await s.warning("retry me")
            mails = await asyncio.to_thread(server.wait_for, 1)
            report = await alog.save_logs()
        assert server.data_commands == 3 and len(server.mails) == 1
    assert mails[0].message["Subject"] == "[closed] session greylisted"
    assert report.ok and not (tmp_path / "dead.jsonl").exists()
    assert [str(e).split(" (")[0] for e in errors] == [
        f"sink 'smtp' could not deliver a mail to 127.0.0.1:{server.port}",
        "sink 'smtp' delivered again after 2 failed attempts; 0 entries dead-lettered meanwhile",
    ]
    assert "retrying up to 5 times" in str(errors[0]) and "451" in str(errors[0].__cause__)
    assert (sink.stats()["failed_attempts"], sink.stats()["mails_sent"]) == (2, 1)


async def test_554_reported_once_and_dead_lettered(tmp_path: Path) -> None:
    """A 554 is not retried: reported once, the session's entries (from every batch) dead."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    with Server(replies=["554 5.7.1 rejected: spam"] * 5) as server:
        sink = SmtpSink(**smtp_options(server.port, max_emails_per_minute=None, **FAST))
        async with AsyncSessionLogger(
            sinks=[sink], dead_letter_path=dead, on_error=errors.append
        ) as alog:
            await alog.start_session("spam")
            for i in range(4):
                await alog.log_entry("spam", f"entry {i}", logging.INFO)
                await alog.save_logs()  # one batch per entry: the digest spans five batches
            await alog.close_session("spam")
            await alog.save_logs()
            await asyncio.to_thread(_wait, lambda: sink.stats()["entries_dead_lettered"] == 6)
            report = await alog.save_logs()
        assert server.data_commands == 1
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["seq"] for d in letters] == list(range(6))
    assert {d["sink"] for d in letters} == {"smtp"}
    assert letters[0]["reason"] == "mail not delivered: SMTPDataError: 554 5.7.1 rejected: spam"
    assert (report["smtp"].delivered, report["smtp"].dead_lettered, report.ok) == (0, 6, False)
    incident = [e for e in errors if "could not deliver" in str(e)]
    assert len(incident) == 1
    assert "refused permanently, its 6 entries were dead-lettered" in str(incident[0])
    assert sink.stats()["entries_dead_lettered"] == 6
    assert (sink.healthy, sink.stats()["last_error"]) == (
        False,
        "SMTPDataError: 554 5.7.1 rejected: spam",
    )


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture(params=["refused", "silent"])
def dead_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A port where no SMTP server answers: nothing listens, or a listener never greets."""
    if request.param == "refused":
        yield free_port()
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_server_down_file_unaffected_close_on_time(dead_server: int, tmp_path: Path) -> None:
    """A dead server slows neither the app nor the file sink; close() keeps its timeout."""
    errors: list[SinkError] = []
    log_path, dead = tmp_path / "log.jsonl", tmp_path / "dead.jsonl"
    sink = SmtpSink(**smtp_options(dead_server, timeout=30.0, retry_backoff=1.0))
    logger = SessionLogger(
        sinks=[FileSink(log_path), sink],
        dead_letter_path=dead,
        on_error=errors.append,
        close_timeout=1.5,
    )
    started = time.monotonic()
    for sid in ("a", "b"):
        logger.start_session(sid)
        for i in range(200):
            logger.log_entry(sid, f"entry {i}", logging.INFO)
        logger.close_session(sid)
    report = logger.save_logs()
    assert time.monotonic() - started < 1.0
    assert report["file"].delivered == 404 and len(read_lines(log_path)) == 404
    closing = time.monotonic()
    final = logger.close()
    assert time.monotonic() - closing < 1.5 + 0.5
    assert (final["smtp"].delivered, final["smtp"].dead_lettered) == (0, 404)
    assert sorted(
        (d["entry"]["session_id"], d["entry"]["seq"]) for d in read_dead_letters(dead)
    ) == [(sid, seq) for sid in ("a", "b") for seq in range(202)]
    assert (
        "sink 'smtp' closed with 2 session digests and 0 alerts undelivered; "
        "the digests' 404 entries were dead-lettered"
    ) in [str(e) for e in errors]
    assert final["file"].delivered == 404 and final["file"].failed == 0


def test_crlf_in_messages_and_fields_injects_no_header(server: Server, tmp_path: Path) -> None:
    """CR/LF in messages, fields and metadata stay in the body and attachment, never headers."""
    evil = "hi\r\nBcc: victim@example.org\r\nX-Injected: yes\r\n\r\nbody"
    fields = {"note": "a\r\nSubject: pwned", "k\nX-Key: 1": "v\rTo: x@example.org"}
    sink = SmtpSink(**smtp_options(server.port, alert_level=logging.WARNING, **FAST))
    with SessionLogger(sinks=[sink], dead_letter_path=None) as logger:
        logger.start_session("crlf", metadata={"who": "m\r\nCc: y@example.org"})
        logger.log_entry("crlf", evil, logging.WARNING, fields)
        logger.close_session("crlf")
    mails = server.wait_for(2)
    headers = {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"}
    headers |= {"MIME-Version", "Content-Type"}
    for mail in mails:
        assert set(mail.message.keys()) == headers
        assert mail.rcpt_tos == RCPTS
        assert "\n" not in mail.message["Subject"] and "\r" not in mail.message["Subject"]
    subjects = sorted(m.message["Subject"] for m in mails)
    assert subjects == ["[WARNING] 1 alert(s), first in session crlf", "[closed] session crlf"]
    digest = next(m for m in mails if m.message["Subject"].startswith("[closed]"))
    logged = digest.attachments()["crlf.jsonl"]
    assert (logged[1]["message"], logged[1]["custom_fields"]) == (evil, fields)
    assert logged[0]["metadata"] == {"who": "m\r\nCc: y@example.org"}
    rendered = "hi\n      Bcc: victim@example.org\n      X-Injected: yes\n      \n      body"
    assert f"WARNING   {rendered}" in digest.body


def _rewrite_ids(entry: dict[str, Any]) -> dict[str, Any]:
    entry["session_id"] += "\r\nBcc: victim@example.org"
    if "status" in entry:
        entry["status"] += "\nX-Injected: yes"
    return entry


def test_formatter_cannot_inject_headers_either(server: Server) -> None:
    """Ids and statuses rewritten with CR/LF after validation still reach one header line."""
    sink = SmtpSink(**smtp_options(server.port, **FAST))
    with SessionLogger(sinks=[sink], custom_formatter=_rewrite_ids, dead_letter_path=None) as log:
        log.start_session("fmt")
        log.close_session("fmt")
        mails = server.wait_for(1)
    message = mails[0].message
    assert set(message.keys()) == {"From", "To", "Subject", "Date", "Message-ID"} | {
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
    }
    assert message["Subject"] == "[closed X-Injected: yes] session fmt Bcc: victim@example.org"
    assert mails[0].rcpt_tos == RCPTS
    assert list(mails[0].attachments()) == ["fmt Bcc: victim@example.org.jsonl"]


def test_bad_configuration_is_refused_and_ids_never_reach_the_sink() -> None:
    """Header-breaking addresses, bad templates or TLS options raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match="bad email address"):
        SmtpSink(sender="a@example.com\r\nBcc: x@example.org", recipients=RCPTS)
    with pytest.raises(ConfigurationError, match="bad email address"):
        SmtpSink(sender=SENDER, recipients=["ok@example.com", "x@example.org\nCc: y"])
    with pytest.raises(ConfigurationError, match="may use only"):
        SmtpSink(sender=SENDER, recipients=RCPTS, subject="{message}")
    with pytest.raises(ConfigurationError, match="exclude each other"):
        SmtpSink(sender=SENDER, recipients=RCPTS, use_tls=True, start_tls=True)
    with pytest.raises(ConfigurationError, match="bad options for the smtp sink"):
        AsyncSessionLogger(method="smtp", smtp={"host": "127.0.0.1"})  # no sender
    logger = AsyncSessionLogger(method="smtp", smtp=smtp_options(port := free_port()))
    assert repr(logger.sinks[0]) == f"<SmtpSink 'smtp' 127.0.0.1:{port} to={RCPTS!r}>"
    sink = SmtpSink(**smtp_options(free_port()))
    with (
        SessionLogger(sinks=[sink], dead_letter_path=None) as log,
        pytest.raises(InvalidSessionIdError),
    ):
        log.start_session("a\r\nBcc: x@example.org")


async def test_alerts_past_the_list_bound_are_counted_not_dropped(server: Server) -> None:
    """Held alerts past max_digest_entries are named by count; every one is in the digest."""
    sink = SmtpSink(
        **smtp_options(server.port, alert_level="ERROR", max_emails_per_minute=2, **FAST),
        max_digest_entries=5,
    )
    alerts_only = SmtpSink(
        **smtp_options(server.port, alert_level="CRITICAL", digest_on=None, **FAST),
        name="pager",
    )
    async with AsyncSessionLogger(sinks=[sink, alerts_only], dead_letter_path=None) as alog:
        await alog.start_session("x")
        await alog.log_entry("x", "first", logging.ERROR)
        await asyncio.to_thread(_wait, lambda: sink.stats()["mails_sent"] == 1)
        for i in range(30):
            await alog.log_entry("x", f"held {i}", logging.ERROR)
        await alog.log_entry("x", "on fire", logging.CRITICAL)
        await alog.close_session("x")
        await alog.save_logs()
        assert sink.stats()["pending_alerts"] == 31
    mails = server.wait_for(3)
    subjects = [m.message["Subject"] for m in mails]
    assert sorted(subjects) == [
        "[CRITICAL] 1 alert(s), first in session x",
        "[ERROR] 1 alert(s), first in session x",
        "[closed] session x (+31 alerts)",
    ]
    held = mails[subjects.index("[closed] session x (+31 alerts)")]
    assert len(held.attachments()["alerts.jsonl"]) == 5
    assert "... and 26 more alerts, not listed (each is in its session's digest)" in held.body
    assert [e["seq"] for e in held.attachments()["x.jsonl"]] == list(range(34))
    assert (sink.stats()["alerts_sent"], sink.stats()["alerts_coalesced"]) == (32, 31)
    assert alerts_only.stats()["sessions_skipped"] == 1 and alerts_only.stats()["mails_sent"] == 1


async def test_digest_on_error_and_digest_level(server: Server, tmp_path: Path) -> None:
    """digest_on='error' mails only failed or interrupted sessions; digest_level trims the body."""
    sink = SmtpSink(
        **smtp_options(server.port, digest_on="error", digest_level="WARNING", **FAST),
        max_emails_per_minute=None,
    )
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
        for sid in ("fine", "failed", "cut"):
            await alog.start_session(sid)
            await alog.log_entry(sid, f"{sid}: debug detail", logging.DEBUG)
            await alog.log_entry(sid, f"{sid}: all good", logging.INFO)
        await alog.log_entry("failed", "failed: boom", logging.ERROR)
        await alog.close_session("fine")
        await alog.close_session("failed")
        # "cut" stays open: closing the logger closes it as interrupted, before the sinks close
    mails = server.wait_for(2)
    by_subject = {m.message["Subject"]: m for m in mails}
    assert sorted(by_subject) == ["[closed] session failed", "[interrupted] session cut"]
    failed = by_subject["[closed] session failed"]
    assert [e["message"] for e in failed.attachments()["failed.jsonl"]] == [
        "Session started",
        "failed: debug detail",
        "failed: all good",
        "failed: boom",
        "Session closed",
    ]
    assert "boom" in failed.body and "all good" not in failed.body
    assert "2 entries below WARNING are not listed" in failed.body
    assert sink.stats()["sessions_skipped"] == 1


async def test_bounded_digest_lists_some_and_dead_letters_past_the_byte_cap(
    server: Server, tmp_path: Path
) -> None:
    """max_digest_entries trims the body; entries past max_attachment_bytes are dead-lettered."""
    dead = tmp_path / "dead.jsonl"
    sink = SmtpSink(
        **smtp_options(server.port, max_digest_entries=4, max_attachment_bytes=4000, **FAST)
    )
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=dead) as alog:
        await alog.start_session("big")
        for i in range(40):
            await alog.log_entry("big", f"entry {i:02d} " + "x" * 100, logging.INFO)
        await alog.close_session("big")
        report = await alog.save_logs()
        mails = await asyncio.to_thread(server.wait_for, 1)
    kept = mails[0].attachments()["big.jsonl"]
    overflow = [d["entry"]["seq"] for d in read_dead_letters(dead)]
    first_dead = overflow[0]
    assert [e["seq"] for e in kept] == [*range(first_dead), 41]
    assert overflow == list(range(first_dead, 41))
    data = mails[0].raw_attachments()["big.jsonl"]
    without_close = len(data) - len(data.splitlines(keepends=True)[-1])
    assert without_close <= 4000 < without_close + 100  # the next line (> 100 bytes) did not fit
    body = mails[0].body
    assert f"{len(kept) - 4} more entries not listed (max_digest_entries=4)" in body
    assert f"{len(overflow)} entries (seq {first_dead}-40) did not fit" in body
    assert (report["smtp"].delivered, report["smtp"].dead_lettered) == (
        42 - len(overflow),
        len(overflow),
    )


async def test_burst_of_digests_shares_one_connection(server: Server) -> None:
    """Five sessions closing together: five mails, one SMTP connection."""
    sink = SmtpSink(**smtp_options(server.port, max_emails_per_minute=None, **FAST))
    async with AsyncSessionLogger(sinks=[sink], dead_letter_path=None) as alog:
        for i in range(5):  # no await yields in between: one batch, one round
            await alog.start_session(f"s{i}")
            await alog.close_session(f"s{i}")
        mails = await asyncio.to_thread(server.wait_for, 5)
    assert sorted(m.message["Subject"] for m in mails) == [
        f"[closed] session s{i}" for i in range(5)
    ]
    assert len({m.peer for m in mails}) == 1
    assert (sink.stats()["connections"], sink.stats()["mails_sent"]) == (1, 5)


async def test_retried_batch_is_not_digested_twice(server: Server) -> None:
    """A batch handed over twice (a lane retry) counts each entry once: one digest."""
    entries = [
        {"timestamp": "2026-01-01T00:00:00.000001Z", "session_id": "r", "seq": 0,
         "event": "session_start", "level": "INFO", "levelno": 20, "message": "Session started"},
        {"timestamp": "2026-01-01T00:00:00.000002Z", "session_id": "r", "seq": 1,
         "event": "log", "level": "INFO", "levelno": 20, "message": "once"},
        {"timestamp": "2026-01-01T00:00:00.000003Z", "session_id": "r", "seq": 2,
         "event": "session_close", "level": "INFO", "levelno": 20, "message": "Session closed",
         "status": "closed", "entries": 1, "duration_s": 0.0},
    ]  # fmt: skip
    batch = Batch(entries, b"".join(json.dumps(e).encode() + b"\n" for e in entries))
    sink = SmtpSink(**smtp_options(server.port, **FAST))
    await sink.open()
    await sink.write_batch(batch.select([0, 1]))
    await sink.write_batch(batch)  # a retry re-sends what was filed already
    await sink.write_batch(batch)
    await sink.close()
    mails = server.wait_for(1)
    assert [e["seq"] for e in mails[0].attachments()["r.jsonl"]] == [0, 1, 2]
    assert sink.stats()["digests_sent"] == 1


@pytest.mark.parametrize("missing", ["STARTTLS", "AUTH"])
def test_server_lacking_starttls_or_auth_is_given_up_at_once(missing: str, tmp_path: Path) -> None:
    """start_tls=True without STARTTLS, or credentials without AUTH: permanent, not retried."""
    errors: list[SinkError] = []
    dead = tmp_path / "dead.jsonl"
    needs: dict[str, Any] = (
        {"start_tls": True}
        if missing == "STARTTLS"
        else {"start_tls": False, "username": USER, "password": PASSWORD}
    )
    # A plain aiosmtpd offers neither STARTTLS (no TLS context) nor AUTH (not over plain TCP).
    with Server() as server:
        sink = SmtpSink(**smtp_options(server.port, **needs))  # default retries and backoff
        logger = SessionLogger(sinks=[sink], dead_letter_path=dead, on_error=errors.append)
        logger.start_session("cfg")
        logger.log_entry("cfg", "entry", logging.INFO)
        logger.close_session("cfg")
        started = time.monotonic()
        report = logger.save_logs()
        while report.ok and time.monotonic() - started < 3:  # the mail goes out just after
            time.sleep(0.01)
            report = logger.save_logs()
        given_up_after = time.monotonic() - started
        closing = time.monotonic()
        final = logger.close()
        close_took = time.monotonic() - closing
        assert server.data_commands == 0
    assert not report.ok and given_up_after < 1.0
    assert (report["smtp"].delivered, report["smtp"].dead_lettered) == (0, 3)
    assert (final["smtp"].delivered, final["smtp"].dead_lettered) == (0, 3)
    assert close_took < 1.0
    assert (sink.stats()["failed_attempts"], sink.stats()["connections"]) == (1, 1)
    letters = list(read_dead_letters(dead))
    assert [d["entry"]["seq"] for d in letters] == [0, 1, 2]
    assert letters[0]["reason"].startswith("mail not delivered: SMTPException: ")
    assert missing in letters[0]["reason"]
    incident = [e for e in errors if "could not deliver" in str(e)]
    assert len(incident) == 1 and "refused permanently" in str(incident[0])
