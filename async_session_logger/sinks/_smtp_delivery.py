"""SmtpSink's delivery rules: the outbox, the rate limit, which failures are permanent."""

from __future__ import annotations

import random
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Final

import aiosmtplib

from ._smtp_digest import Alert, SessionDigest

__all__ = ["Item", "Outbox", "Pacer", "describe", "is_permanent", "scrub"]

_WINDOW: Final = 60.0
_BACKOFF_MAX: Final = 60.0


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: a 5xx reply, a refused certificate, a missing extension.

    4xx replies, refused or dropped connections and timeouts are temporary.
    """
    if type(exc) is aiosmtplib.SMTPException:
        # aiosmtplib raises the bare class, not SMTPNotSupported, when the server lacks what
        # the configuration requires: STARTTLS (start_tls=True), AUTH or a usable AUTH method
        # (credentials given). Its subclasses are the temporary causes (disconnect, timeout).
        return True
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code >= 500
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return any(r.code >= 500 for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return True  # e.g. start_tls=True or AUTH against a server that offers neither
    cause: BaseException | None = exc
    while cause is not None:  # implicit TLS wraps the verify error in SMTPConnectError
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__
    return not isinstance(exc, OSError | TimeoutError | aiosmtplib.SMTPException)


def describe(exc: BaseException) -> str:
    """Return ``Type: code message`` for an SMTP reply, ``Type: text`` for anything else."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{type(exc).__name__}: {exc.code} {exc.message}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return f"{type(exc).__name__}: {refused}"
    return f"{type(exc).__name__}: {exc}"


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every secret in ``text`` with ``***`` (a server may echo what it was sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Pacer:
    """Pace rounds of mails: at most ``per_minute`` mails in any 60 seconds.

    Rounds start at least ``60 / per_minute`` seconds apart (the first at once); one round may
    send several mails while the last minute has room for them. The final flush at close skips
    the spacing, never the cap.
    """

    def __init__(self, per_minute: int | None) -> None:
        self.per_minute = per_minute
        self.interval = _WINDOW / per_minute if per_minute else 0.0
        self._sent: deque[float] = deque(maxlen=per_minute or 1)

    @property
    def limited(self) -> bool:
        """Whether a rate limit is set."""
        return self.per_minute is not None

    def room(self, now: float) -> int:
        """Return how many mails the last 60 seconds still allow (a large number: no limit)."""
        if not self.per_minute:
            return 1 << 30
        return self.per_minute - sum(1 for t in self._sent if t > now - _WINDOW)

    def next_at(self, now: float, *, final: bool = False) -> float:
        """Return the earliest time the next round may start (``now`` or later)."""
        if not self.per_minute or not self._sent:
            return now
        at = now if self.room(now) else self._sent[0] + _WINDOW
        return at if final else max(at, self._sent[-1] + self.interval)

    def sent(self, now: float) -> None:
        """Record a mail accepted by the server at ``now``."""
        self._sent.append(now)


@dataclass(eq=False)
class Item:
    """A session digest or an alert waiting for a mail."""

    digest: SessionDigest | None = None
    alert: Alert | None = None
    attempts: int = 0
    not_before: float = 0.0


class Outbox:
    """What waits to be mailed, and when it may go (I/O-free; times are the loop's clock).

    Alerts past ``max_alerts`` waiting are only counted (each is also in its session's
    digest); the next mail states how many.
    """

    def __init__(
        self, pacer: Pacer, *, max_alerts: int, max_bytes: int, retries: int, backoff: float
    ) -> None:
        self.pacer = pacer
        self.items: list[Item] = []
        self.unlisted = 0  # alerts over max_alerts, named in the next mail
        self.max_alerts = max_alerts
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff = backoff

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Item) -> None:
        """Queue a digest or an alert (alerts over ``max_alerts`` are counted only)."""
        if item.alert is not None and self.count(alerts=True) >= self.max_alerts:
            self.unlisted += 1
        else:
            self.items.append(item)

    def count(self, *, alerts: bool) -> int:
        """Return how many alerts (or digests) wait."""
        if alerts:
            return sum(1 for i in self.items if i.alert is not None) + self.unlisted
        return sum(1 for i in self.items if i.digest is not None)

    def delay(self, now: float) -> float | None:
        """Seconds until the next mail may go (None: nothing waits)."""
        if not self.items:
            return None
        ready = min(item.not_before for item in self.items)
        return max(self.pacer.next_at(now), ready) - now

    def plan(self, now: float) -> list[list[Item]]:
        """Group the due items into the mails of one round.

        The due alerts share a mail and each digest has its own, while the rate limit has room;
        past it, the rest ride in the last mail allowed, up to one attachment limit of digests.
        """
        due = [item for item in self.items if item.not_before <= now]
        alerts = [item for item in due if item.alert is not None]
        mails = ([alerts] if alerts else []) + [[i] for i in due if i.digest is not None]
        room = self.pacer.room(now)
        if len(mails) <= room or room < 1:
            return mails if room >= 1 else []
        last: list[Item] = []
        size = 0
        for mail in mails[room - 1 :]:
            digest = mail[0].digest
            if digest is not None:
                size += len(digest.data)
                if size > self.max_bytes and any(i.digest is not None for i in last):
                    break  # the rest waits for the next round
            last.extend(mail)
        return [*mails[: room - 1], last]

    def take_unlisted(self) -> int:
        """Hand the count of unlisted alerts to the mail being built."""
        unlisted, self.unlisted = self.unlisted, 0
        return unlisted

    def sent(self, items: list[Item], now: float) -> None:
        """Remove delivered items and count the mail against the rate limit."""
        self.pacer.sent(now)
        self.remove(items)

    def failed(self, items: list[Item], permanent: bool, now: float) -> list[Item]:
        """Count a failed attempt; return the items to give up, schedule the others."""
        given: list[Item] = []
        for item in items:
            item.attempts += 1
            if permanent or item.attempts > self.retries:
                given.append(item)
            else:
                delay = min(_BACKOFF_MAX, self.backoff * 2 ** (item.attempts - 1))
                item.not_before = now + delay * random.uniform(0.5, 1.0)
        return given

    def remove(self, items: list[Item]) -> None:
        """Drop items from the outbox."""
        gone = {id(item) for item in items}
        self.items = [item for item in self.items if id(item) not in gone]
