"""``SmtpSink``: one digest email per session and prompt alerts, over SMTP with aiosmtplib.

``write_batch`` only files entries into per-session digests and an outbox: no network I/O, so a
dead or slow server never holds the lane. A background task mails the outbox, paced by
``max_emails_per_minute``, over one connection per round, retrying temporary failures with
backoff. What the sink gives up on (a 5xx reply, retries spent, the close deadline) goes to the
logger's dead-letter file. See docs/smtp.md.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Final, Literal

import aiosmtplib

from .._errors import ConfigurationError
from .._threads import run_blocking
from .._validate import resolve_level
from ._base import Batch, Sink
from ._smtp_courier import Courier
from ._smtp_delivery import Item, Outbox, Pacer
from ._smtp_digest import MailFormat, safe_header
from ._smtp_sessions import SessionBook

__all__ = ["SmtpSink"]

DigestOn = Literal["always", "error"]

_SUBJECT_FIELDS: Final = {
    "session_id": "x",
    "status": "closed",
    "entries": 1,
    "errors": 0,
    "parent_session_id": "",
    "discarded": 0,
}
_ALERT_FIELDS: Final = {"level": "CRITICAL", "count": 1, "session_id": "x"}


class SmtpSink(Sink):
    """Mail a digest of each session when it closes, and alerts as they happen.

    Args:
        host, port: the SMTP server.
        sender: the envelope and ``From`` address.
        recipients: an address or a list: the envelope recipients, exactly (never read back
            from headers).
        username, password: SMTP AUTH credentials (never in repr, stats, errors or logs).
        use_tls: implicit TLS (SMTPS, usually port 465).
        start_tls: ``True`` requires STARTTLS, ``False`` never uses it, ``None`` (default) uses
            it when the server offers it. Certificates and host names are always verified.
        tls_context: the ``ssl.SSLContext`` to verify with (e.g. one trusting a private CA).
        timeout: seconds for each SMTP step (connecting, each command); also the lane's limit
            for ``write_batch`` and for ``close()``.
        subject: digest subject: ``{session_id}``, ``{status}`` (``closed``, ``error``,
            ``interrupted``, ``timeout``, ``evicted``, or ``open``), ``{entries}`` (log entries),
            ``{errors}`` (entries at ERROR or worse), ``{parent_session_id}`` (empty unless a
            child session), ``{discarded}`` (entries ``buffer_level`` held and never wrote).
        alert_subject: alert subject: ``{level}`` (the worst), ``{count}``, ``{session_id}``
            (of the first alert).
        digest_on: ``"always"``; ``"error"``: only sessions that logged ERROR or worse, raised
            an alert or did not close cleanly (status ``error``, ``interrupted``, ``timeout``
            or ``evicted``); ``None``: alerts only.
        digest_level: entries below it are not listed in the body (the attachment has them).
        max_digest_entries: most entries listed in a body (the first and last halves); also
            the most alerts one mail lists.
        max_attachment_bytes: most JSON Lines bytes kept per session; entries past it are
            dead-lettered, and the digest says so (start and close entries always fit).
        alert_level: entries at this level or worse are mailed promptly (``None``: no alerts).
        max_emails_per_minute: at most ``n`` mails, digests and alerts alike, in any minute:
            rounds of mails start ``60 / n`` seconds apart, what becomes due meanwhile waits,
            and past the limit it rides in the last mail allowed (``None``: no limit).
        retry_backoff: first pause after a temporary failure, doubling up to 60 s.
        local_hostname: the name sent with EHLO (default: this host's FQDN, looked up once).
        **options: the lane options of :class:`Sink`; here ``retries`` (default 5) is how many
            times a mail is retried after temporary failures before it is dead-lettered.
    """

    default_name = "smtp"
    default_overflow = "dead_letter"

    def __init__(
        self,
        host: str = "localhost",
        port: int = 25,
        *,
        sender: str,
        recipients: str | Sequence[str],
        username: str | None = None,
        password: str | None = None,
        use_tls: bool = False,
        start_tls: bool | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        subject: str = "[{status}] session {session_id}",
        alert_subject: str = "[{level}] {count} alert(s), first in session {session_id}",
        digest_on: DigestOn | None = "always",
        digest_level: int | str = logging.NOTSET,
        max_digest_entries: int = 200,
        max_attachment_bytes: int = 5 * 1024 * 1024,
        alert_level: int | str | None = logging.CRITICAL,
        max_emails_per_minute: int | None = 10,
        retry_backoff: float = 1.0,
        local_hostname: str | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("retries", 5)
        super().__init__(timeout=timeout, **options)
        rcpts = (recipients,) if isinstance(recipients, str) else tuple(recipients)
        _check(sender, rcpts, use_tls, start_tls, digest_on, subject, alert_subject)
        if max_digest_entries < 1 or max_attachment_bytes < 1:
            raise ConfigurationError("max_digest_entries and max_attachment_bytes must be >= 1")
        if max_emails_per_minute is not None and max_emails_per_minute < 1:
            raise ConfigurationError("max_emails_per_minute must be >= 1 or None")
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.use_tls = use_tls
        self.start_tls = start_tls
        self.tls_context = tls_context
        self.local_hostname = local_hostname
        self.format = MailFormat(
            sender=sender,
            recipients=rcpts,
            subject=subject,
            alert_subject=alert_subject,
            digest_level=resolve_level(digest_level),
            max_digest_entries=max_digest_entries,
            max_attachment_bytes=max_attachment_bytes,
        )
        level = None if alert_level is None else resolve_level(alert_level)
        self._book = SessionBook(self.format, digest_on, level)
        self._outbox = Outbox(
            Pacer(max_emails_per_minute),
            max_alerts=max_digest_entries,
            max_bytes=max_attachment_bytes,
            retries=self.retries,
            backoff=retry_backoff,
        )
        self._courier = Courier(
            self.name,
            f"{host}:{port}",
            self._outbox,
            self.format,
            self._connect,
            self._dead_letter,
            self.report,
            _secret_forms(username, password),
        )

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the sender task; a server that is down is not an error here."""
        self._courier.start()

    async def close(self) -> None:
        """Mail what is pending, open sessions' digests included, then stop.

        What is not delivered when the lane's close deadline cancels this is dead-lettered
        and reported.
        """
        for digest in self._book.finish_all():
            self._outbox.add(Item(digest=digest))
        await self._courier.close()

    @property
    def healthy(self) -> bool:
        """Whether the last delivery attempt succeeded."""
        return self._courier.incident_failures == 0

    def stats(self) -> dict[str, Any]:
        """Mail counters; the logger's lane counts entries (see docs/smtp.md)."""
        return {
            **self._courier.counters,
            "sessions_skipped": self._book.skipped,
            "open_sessions": len(self._book.open),
            "pending_digests": self._outbox.count(alerts=False),
            "pending_alerts": self._outbox.count(alerts=True),
            "last_error": self._courier.last_error,
        }

    def __repr__(self) -> str:
        tls = " tls" if self.use_tls else " starttls" if self.start_tls else ""
        user = f" user={self.username!r}" if self.username else ""
        to = list(self.format.recipients)
        return f"<SmtpSink {self.name!r} {self.host}:{self.port}{tls}{user} to={to!r}>"

    # -- intake (lane task) -----------------------------------------------------------------
    async def write_batch(self, batch: Batch) -> None:
        """File each entry into its session's digest and the outbox (no network I/O)."""
        lines = batch.lines()
        loop = asyncio.get_running_loop()
        too_big: list[int] = []
        for i, entry in enumerate(batch.entries):
            fits, alert, digest = self._book.absorb(entry, lines[i])
            if not fits:
                too_big.append(i)
            if alert is not None:
                if self._outbox.pacer.next_at(loop.time()) > loop.time():
                    self._courier.counters["alerts_coalesced"] += 1  # held by the rate limit
                self._outbox.add(Item(alert=alert))
            if digest is not None:
                self._outbox.add(Item(digest=digest))
        if too_big:
            limit = self.format.max_attachment_bytes
            await self._dead_letter(
                batch.select(too_big), f"session digest full (max_attachment_bytes={limit})"
            )
        if len(self._outbox):
            self._courier.wake()

    # -- the courier's callbacks ----------------------------------------------------------
    async def _connect(self) -> aiosmtplib.SMTP:
        if self.local_hostname is None:
            # aiosmtplib would look the FQDN up for every connection; once is enough.
            self.local_hostname = await run_blocking(socket.getfqdn)
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self._password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            tls_context=self.tls_context,
            validate_certs=True,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )
        await client.connect()
        return client

    async def _dead_letter(self, batch: Batch, reason: str) -> None:
        """Move entries this sink had accepted to the logger's dead-letter file."""
        kept = await self.dead_letter(batch, reason)
        self._courier.counters["entries_dead_lettered" if kept else "entries_lost"] += len(batch)


def _check(
    sender: str,
    recipients: tuple[str, ...],
    use_tls: bool,
    start_tls: bool | None,
    digest_on: str | None,
    subject: str,
    alert_subject: str,
) -> None:
    """Refuse a configuration that could never send a mail (or could inject a header)."""
    if not recipients:
        raise ConfigurationError("recipients must name at least one address")
    for address in (sender, *recipients):
        if not isinstance(address, str) or not address or safe_header(address) != address:
            raise ConfigurationError(f"bad email address {address!r}")
    if use_tls and start_tls:
        raise ConfigurationError("use_tls (implicit TLS) and start_tls=True exclude each other")
    if digest_on not in ("always", "error", None):
        raise ConfigurationError(f"digest_on must be 'always', 'error' or None: {digest_on!r}")
    for template, fields in ((subject, _SUBJECT_FIELDS), (alert_subject, _ALERT_FIELDS)):
        try:
            template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigurationError(
                f"subject template {template!r} may use only {', '.join(fields)}"
            ) from exc


def _secret_forms(username: str | None, password: str | None) -> tuple[str, ...]:
    """Return the password as sent by AUTH PLAIN and LOGIN, to scrub it from server replies."""
    if not password:
        return ()
    plain = f"\0{username or ''}\0{password}".encode()
    return (
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(plain).decode(),
    )
