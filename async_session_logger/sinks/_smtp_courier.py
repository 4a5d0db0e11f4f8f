"""SmtpSink's sender task: paced rounds of mails over one connection, retries, give-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiosmtplib
import orjson

from .._errors import SinkError
from ._base import Batch
from ._smtp_delivery import Item, Outbox, describe, is_permanent, scrub
from ._smtp_digest import MailFormat, compose

__all__ = ["Courier"]

_REPLY_ERRORS: Final = (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused)
_COUNTERS: Final = (
    "mails_sent",
    "digests_sent",
    "alerts_sent",
    "alerts_coalesced",
    "alerts_failed",
    "digests_given_up",
    "failed_attempts",
    "entries_dead_lettered",
    "entries_lost",
    "connections",
)


class Courier:
    """Mail the outbox from a background task, and once more at close.

    Args:
        name: the sink's name, for the task's name and the reports.
        where: ``host:port``, for the reports.
        outbox: what waits, and when it may go.
        fmt: the mails' addresses, subjects and limits.
        connect: open and return a connected client (counted in ``connections``).
        dead_letter: move entries the sink had accepted to the dead-letter file.
        report: the sink's incident reporter.
        secrets: strings scrubbed from errors, stats and reports (the password's forms).
    """

    def __init__(
        self,
        name: str,
        where: str,
        outbox: Outbox,
        fmt: MailFormat,
        connect: Callable[[], Awaitable[aiosmtplib.SMTP]],
        dead_letter: Callable[[Batch, str], Awaitable[None]],
        report: Callable[[SinkError], None],
        secrets: tuple[str, ...],
    ) -> None:
        self.name = name
        self.where = where
        self.outbox = outbox
        self.format = fmt
        self._connect = connect
        self._dead_letter = dead_letter
        self._report = report
        self._secrets = secrets
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.last_error: str | None = None
        self.incident_failures = 0
        self.incident_dead = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the sender task (kept here, named, cancelled by ``close``)."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"async_session_logger.smtp[{self.name}]"
        )

    def wake(self) -> None:
        """Tell the sender task that the outbox changed."""
        self._wake.set()

    async def close(self) -> None:
        """Let a round in progress finish, mail what waits, then give up the rest.

        The give-up also runs when the lane's close deadline cancels this.
        """
        self._closing = True
        self._wake.set()
        try:
            if self._task is not None:
                await self._task
            await self._flush()
        finally:
            await self._give_up_rest()

    # -- rounds -----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._wake.clear()
            delay = self.outbox.delay(loop.time())
            if delay is None or delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            try:
                await self._round()
            except Exception as exc:  # a bug: say so; close() still mails what waits
                self.report(f"sink {self.name!r}: its sender task failed", exc)
                return

    async def _flush(self) -> None:
        """Mail everything now: past the spacing and backoff, never past the per-minute cap."""
        loop = asyncio.get_running_loop()
        for item in self.outbox.items:
            item.not_before = 0.0
        while len(self.outbox):
            now = loop.time()
            ready = min(item.not_before for item in self.outbox.items)
            at = max(self.outbox.pacer.next_at(now, final=True), ready)
            if at > now:
                await asyncio.sleep(at - now)
            await self._round()

    async def _round(self) -> None:
        """Send the due mails over one connection."""
        async with self._lock:
            mails = self.outbox.plan(asyncio.get_running_loop().time())
            client: aiosmtplib.SMTP | None = None
            try:
                for n, items in enumerate(mails):
                    unlisted = self.outbox.take_unlisted() if n == 0 else 0
                    try:
                        message = compose(
                            [i.digest for i in items if i.digest is not None],
                            [i.alert for i in items if i.alert is not None],
                            unlisted,
                            self.format,
                        )
                        if client is None:
                            self.counters["connections"] += 1
                            client = await self._connect()
                        refused, _ = await client.send_message(
                            message, sender=self.format.sender, recipients=self.format.recipients
                        )
                    except Exception as exc:
                        await self._failed(items, unlisted, exc)
                        if isinstance(exc, _REPLY_ERRORS) and client is not None:
                            continue  # the server refused this mail; the connection is fine
                        for rest in mails[n + 1 :]:  # no connection: the rest wait as well
                            await self._failed(rest, 0, exc)
                        break
                    self._sent(items, unlisted, refused)
                if client is not None:
                    await _hang_up(client)
            finally:
                if client is not None:
                    client.close()

    # -- outcomes ---------------------------------------------------------------------------
    def _sent(self, items: list[Item], unlisted: int, refused: dict[str, Any]) -> None:
        self.outbox.sent(items, asyncio.get_running_loop().time())
        self.counters["mails_sent"] += 1
        self.counters["digests_sent"] += sum(1 for i in items if i.digest is not None)
        self.counters["alerts_sent"] += sum(1 for i in items if i.alert is not None) + unlisted
        if refused:  # the others got it: a retry would send it to them twice
            self.report(
                f"sink {self.name!r}: the server refused the recipients "
                f"{', '.join(sorted(refused))}; the others received the mail",
                None,
            )
        if self.incident_failures:
            self.report(
                f"sink {self.name!r} delivered again after {self.incident_failures} failed "
                f"attempts; {self.incident_dead} entries dead-lettered meanwhile",
                None,
            )
            self.incident_failures = self.incident_dead = 0

    async def _failed(self, items: list[Item], unlisted: int, exc: BaseException) -> None:
        """Count a failed attempt: schedule a retry, or give the items up."""
        permanent = is_permanent(exc)
        self.counters["failed_attempts"] += 1
        self.last_error = scrub(describe(exc), self._secrets)
        given = self.outbox.failed(items, permanent, asyncio.get_running_loop().time())
        if permanent:
            self.counters["alerts_failed"] += unlisted
        else:
            self.outbox.unlisted += unlisted
        first = self.incident_failures == 0
        self.incident_failures += 1
        dead = await self._give_up(given, self.last_error) if given else 0
        if first:
            what = (
                f"refused permanently, its {dead} entries were dead-lettered"
                if permanent
                else f"retrying up to {self.outbox.retries} times with backoff, then dead-lettering"
            )
            self.report(
                f"sink {self.name!r} could not deliver a mail to {self.where} ({what}; "
                "further failures of this incident are counted, not printed)",
                exc,
            )

    async def _give_up(self, items: list[Item], reason: str) -> int:
        """Drop items; dead-letter the entries of their digests; return how many."""
        self.outbox.remove(items)
        # An alert's entry is also in its session's digest: only digests are dead-lettered.
        self.counters["alerts_failed"] += sum(1 for i in items if i.alert is not None)
        digests = [i.digest for i in items if i.digest is not None]
        if not digests:
            return 0
        self.counters["digests_given_up"] += len(digests)
        data = b"".join(bytes(d.data) for d in digests)
        entries = [orjson.loads(line) for line in data.split(b"\n")[:-1]]
        await self._dead_letter(Batch(entries, data), f"mail not delivered: {reason}")
        self.incident_dead += len(entries)
        return len(entries)

    async def _give_up_rest(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        digests = self.outbox.count(alerts=False)
        alerts = self.outbox.count(alerts=True)
        if not digests and not alerts:
            return
        self.counters["alerts_failed"] += self.outbox.take_unlisted()
        dead = await self._give_up(list(self.outbox.items), "the sink closed before sending it")
        self.report(
            f"sink {self.name!r} closed with {digests} session digests and {alerts} alerts "
            f"undelivered; the digests' {dead} entries were dead-lettered",
            None,
        )

    def report(self, message: str, exc: BaseException | None) -> None:
        """Report an incident, with any credential scrubbed from its cause."""
        error = SinkError(message, sink_name=self.name)
        if exc is not None and scrub(describe(exc), self._secrets) != describe(exc):
            exc = aiosmtplib.SMTPException(scrub(describe(exc), self._secrets))
        error.__cause__ = exc
        self._report(error)


async def _hang_up(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except Exception:
        pass  # the mails are through; a server that drops the line at QUIT changes nothing
