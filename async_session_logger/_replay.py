"""Re-send the entries of a dead-letter file to a sink, keeping whatever still fails.

How the file itself is claimed and rewritten safely is in :mod:`._replay_claim`.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ._entry import format_timestamp
from ._errors import InvalidSessionIdError, SinkError
from ._reader import ReaderWarning, entry_problem
from ._replay_claim import Claim
from ._threads import run_blocking
from ._validate import check_session_id
from .sinks._base import Batch, PartialWriteError, Sink

__all__ = ["ReplayReport", "replay_dead_letters"]

_ENTRY_KEY: Final = b',"entry":'
_READ_HINT: Final = 1 << 20
_BACKOFF_INITIAL: Final = 0.1
_BACKOFF_MAX: Final = 5.0


@dataclass
class ReplayReport:
    """What a replay did: how many entries were re-sent, and what stayed in the file.

    ``failed`` letters (the sink still refused them, or were not tried after it gave up) and
    ``other`` letters (of other sinks) and ``invalid`` lines (not dead letters, or letters whose
    entry is no log entry or has an unsafe session id) are all kept in ``path``; ``error`` is
    the last delivery error, if any.
    """

    path: str
    sink: str
    resent: int = 0
    failed: int = 0
    other: int = 0
    invalid: int = 0
    error: str | None = None
    resumed: bool = False
    incidents: list[str] = field(default_factory=list, repr=False)

    @property
    def kept(self) -> int:
        """Return how many lines are left in the file for a later replay."""
        return self.failed + self.other + self.invalid

    @property
    def ok(self) -> bool:
        """Return whether every selected letter was re-sent."""
        return self.failed == 0 and self.error is None

    def __str__(self) -> str:
        text = f"re-sent {self.resent} entries to sink {self.sink!r}"
        if self.failed:
            text += f"; {self.failed} failed ({self.error})"
        if self.other:
            text += f"; {self.other} letters of other sinks"
        if self.invalid:
            text += f"; {self.invalid} invalid lines"
        if self.kept:
            text += f"; {self.kept} kept in {self.path}"
        return text


async def replay_dead_letters(
    path: str | os.PathLike[str],
    sink: Sink,
    *,
    from_sinks: str | Iterable[str] | None = None,
    all_sinks: bool = False,
    keep: bool = False,
    timeout: float | None = 30.0,
    retries: int | None = None,
    batch_size: int = 1_000,
) -> ReplayReport:
    """Re-send the entries of a dead-letter file to ``sink`` and keep only what still fails.

    Each entry goes out as the exact bytes the dead-letter file holds for it (a ``FileSink``
    writes the original line again). The sink must not be in use by a logger: it is opened
    and closed here.

    Args:
        path: The dead-letter file (``dead_letters.jsonl``).
        sink: Where to send the entries, e.g. ``FileSink("recovered.jsonl")`` or an
            ``MqttSink``.
        from_sinks: Re-send only the letters of these sink names (default: ``sink.name``,
            the letters of the sink that is being retried).
        all_sinks: Re-send every letter, whichever sink gave up on it.
        keep: Leave the file exactly as it is (no claim, no rewrite): re-send and report only.
        timeout: Seconds one ``write_batch`` may take (None: the sink's own ``timeout``).
        retries: Attempts after a failed batch, with backoff (default: ``sink.retries``).
            Once a batch has failed for good, the rest is not tried and stays in the file.
        batch_size: Entries handed to the sink at once.

    Returns:
        A :class:`ReplayReport`. The file then holds the letters that were not re-sent
        (removed when none are left); ``keep=True`` leaves it untouched.

    Raises:
        FileNotFoundError: ``path`` does not exist (and no interrupted replay of it either).
        BlockingIOError: Another replay of the same file is running.
        OSError: The file or its directory cannot be read or written.
    """
    name = os.fspath(path)
    if all_sinks:
        selected: frozenset[str] | None = None
    elif from_sinks is None:
        selected = frozenset((sink.name,))
    else:
        selected = frozenset((from_sinks,) if isinstance(from_sinks, str) else from_sinks)
    report = ReplayReport(path=name, sink=sink.name)
    claim: Claim | None = None
    if keep:
        os.stat(name)  # FileNotFoundError before the sink is opened
        source = name
    else:
        claim = Claim(name)
        await run_blocking(claim.acquire)
        report.resumed = claim.resumed
        source = claim.work
    courier = _Courier(sink, report, timeout, retries)
    leftovers: list[bytes] = []
    finished = False
    try:
        await courier.open()
        pending: list[_Letter] = []
        async for lineno, line in _lines(source):
            parsed = _parse(line)
            if isinstance(parsed, str):
                report.invalid += 1
                leftovers.append(line if line.endswith(b"\n") else line + b"\n")
                warnings.warn(f"{name}:{lineno}: {parsed}; kept", ReaderWarning, stacklevel=2)
                continue
            if selected is not None and parsed.sink not in selected:
                report.other += 1
                leftovers.append(line)
                continue
            pending.append(parsed)
            if len(pending) >= batch_size:
                leftovers += await courier.send(pending)
                pending = []
        if pending:
            leftovers += await courier.send(pending)
        finished = True
    finally:
        leftovers += await courier.close()
        if claim is not None:
            if finished:
                await run_blocking(claim.release, leftovers)
            else:
                # Cancelled or failed half-way: the working copy keeps every letter (those
                # already re-sent too) for the next replay to take up.
                await run_blocking(claim.abandon)
    return report


@dataclass(slots=True)
class _Letter:
    line: bytes  # the dead letter as found, with its newline: kept as is if it fails
    sink: object
    entry: dict[str, Any]
    data: bytes  # the entry's JSON, byte for byte as in the file when possible


def _parse(line: bytes) -> _Letter | str:
    """Return the letter on ``line``, or why it is not one."""
    try:
        letter = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(letter, dict) or not isinstance(letter.get("entry"), dict):
        return 'not a dead letter (no "entry" object)'
    entry: dict[str, Any] = letter["entry"]
    # A letter is data from a file anyone with write access may have edited: re-send only
    # what the logger itself could have written (an entry `{}` is no log line), and no id
    # that the logger would refuse, since sinks turn ids into file names and topics.
    problem = entry_problem(entry)
    if problem is not None:
        return f"not a log entry ({problem})"
    try:
        check_session_id(entry["session_id"])
    except InvalidSessionIdError as exc:
        return f"unsafe session id: {exc}"
    if not line.endswith(b"\n"):
        line += b"\n"
    raw = line.rstrip(b"\r\n")
    # DeadLetters writes the entry's line verbatim as the last value. JSON strings hold quotes
    # only escaped, so the first unescaped `,"entry":` is the letter's own key; the check below
    # catches files written in another key order.
    cut = raw.find(_ENTRY_KEY)
    if cut >= 0 and raw.endswith(b"}"):
        data = raw[cut + len(_ENTRY_KEY) : -1]
        try:
            if orjson.loads(data) == entry:
                return _Letter(line, letter.get("sink"), entry, data)
        except orjson.JSONDecodeError:
            pass
    return _Letter(line, letter.get("sink"), entry, orjson.dumps(entry))


async def _lines(path: str) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(lineno, line)`` of a file, read in a worker thread a chunk at a time."""
    fh = await run_blocking(open, path, "rb")
    try:
        lineno = 0
        while True:
            chunk: list[bytes] = await run_blocking(fh.readlines, _READ_HINT)
            if not chunk:
                return
            for line in chunk:
                lineno += 1
                if line.strip():
                    yield lineno, line
    finally:
        await run_blocking(fh.close)


class _Courier:
    """Hand batches to the sink with a timeout and retries, as a lane would."""

    def __init__(
        self, sink: Sink, report: ReplayReport, timeout: float | None, retries: int | None
    ) -> None:
        self.sink = sink
        self.report = report
        self.timeout = sink.timeout if timeout is None else timeout
        self.retries = sink.retries if retries is None else retries
        self.broken: BaseException | None = None
        self.opened = False
        self.given_up: list[bytes] = []
        sink.attach(self._incident, self._dead_letter)

    def _incident(self, error: SinkError) -> None:
        if len(self.report.incidents) < 100:
            self.report.incidents.append(str(error))

    async def _dead_letter(self, batch: Batch, reason: str) -> bool:
        # A sink that keeps entries after write_batch (SmtpSink's digests) gave up on them
        # later: they were counted re-sent, and go back into the file as new letters.
        self.report.resent -= len(batch)
        self.report.failed += len(batch)
        self.report.error = reason
        head = orjson.dumps(
            {
                "sink": self.sink.name,
                "reason": reason,
                "failed_at": format_timestamp(time.time_ns()),
            }
        )[:-1]
        self.given_up += [head + b',"entry":' + line + b"}\n" for line in batch.lines()]
        return True

    async def open(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.sink.open()
        except Exception as exc:
            self._break(exc, "cannot open the sink")
        else:
            self.opened = True

    def _break(self, exc: BaseException, what: str) -> None:
        self.broken = exc
        if isinstance(exc, TimeoutError) and not str(exc):
            self.report.error = f"{what}: timed out after {self.timeout} s"
        else:
            self.report.error = f"{what}: {type(exc).__name__}: {exc}"

    async def send(self, letters: list[_Letter]) -> list[bytes]:
        """Deliver ``letters``; return the lines of those that failed for good."""
        if self.broken is not None:
            self.report.failed += len(letters)
            return [letter.line for letter in letters]
        indices = list(range(len(letters)))
        batch = Batch([x.entry for x in letters], b"".join(x.data + b"\n" for x in letters))
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.sink.write_batch(batch)
            except PartialWriteError as exc:
                self.report.resent += len(batch) - len(exc.failed)
                indices = [indices[i] for i in exc.failed]
                batch = batch.select(exc.failed)
                error: BaseException = exc.cause
            except Exception as exc:
                error = exc
            else:
                self.report.resent += len(batch)
                return []
            if attempt >= self.retries:
                self._break(error, "the sink failed")
                self.report.failed += len(indices)
                return [letters[i].line for i in indices]
            attempt += 1
            await asyncio.sleep(min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** (attempt - 1)))

    async def close(self) -> list[bytes]:
        """Close the sink; return letters it gave up on while closing."""
        if self.opened:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.sink.close()
            except Exception as exc:
                self._incident(SinkError(f"closing failed: {exc!r}", sink_name=self.sink.name))
        return self.given_up
