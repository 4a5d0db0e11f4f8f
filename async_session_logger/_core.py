"""``AsyncSessionLogger``: the async core. The writer task drains the intake into sink lanes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import traceback
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Self

from ._config import build_sinks
from ._deadletter import DeadLetters
from ._entry import DEFAULT_MASK_KEYS, EntryBuilder, Formatter, Masker, Record
from ._errors import ConfigurationError, LoggerClosedError, SinkError
from ._handles import AsyncSessionHandle
from ._intake import OVERFLOW_POLICIES, Intake, Overflow
from ._lane import Lane
from ._recorder import Recorder
from ._report import DeliveryReport, ErrorHandler, SinkStats, print_error
from .sinks import Batch, Sink

__all__ = ["AsyncSessionLogger"]

DEFAULT_DEAD_LETTER_PATH: Final = "dead_letters.jsonl"


class _Flush:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[DeliveryReport] = concurrent.futures.Future()


class _Stop:
    __slots__ = ()


_STOP: Final = _Stop()


class AsyncSessionLogger:
    """Session logger for asyncio code: every verb is awaited, none blocks the event loop.

    Construction does no I/O. ``async with`` (or ``await start()``, or the first verb) opens the
    sinks and starts the writer task on the running loop; ``aclose()`` drains and stops.

    Args:
        method: ``"file"``, ``"stdout"``, ``"custom"``, ``"mqtt"``, ``"smtp"`` or a list of them
            (default ``"file"`` unless ``sinks`` is given).
        custom_formatter: ``fmt(entry: dict) -> dict`` applied to every entry before encoding.
        sinks: sink objects, in addition to those named by ``method``.
        max_queue: entries waiting for the writer before the ``overflow`` policy applies.
        overflow: what a full queue does to a new log entry: ``"block"`` (default) makes the
            caller wait (``await`` in async code), so nothing is lost; ``"drop_newest"`` drops
            it; ``"drop_oldest"`` drops the oldest queued log entry to make room. Drops are
            counted (``stats()["dropped"]``, the report) and a ``gap`` entry in the session's
            stream says how many and which seqs. Start and close entries are never dropped.
        batch_size: most entries the writer encodes before it yields to the loop (1,000 keeps
            the event-loop lag around a millisecond; a slow sink still gets merged batches).
        mask_keys: key substrings whose values are masked in metadata and custom fields
            (``None`` turns masking off).
        on_error: called with a :class:`SinkError` once per sink incident (default: stderr).
        dead_letter_path: JSON Lines file for entries a sink gave up on (``None``: count only).
        close_timeout: seconds ``aclose()`` waits for the sinks before dead-lettering the rest.
        max_message_chars: longest message accepted (``None``: no limit).
        **options: per-method options: ``path=``, ``custom_handler=``, ``file={...}``,
            ``stdout={...}``, ``custom={...}``, ``mqtt={...}``, ``smtp={...}``.
    """

    def __init__(
        self,
        method: str | Sequence[str] | None = None,
        custom_formatter: Formatter | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
        max_queue: int = 10_000,
        overflow: Overflow = "block",
        batch_size: int = 1_000,
        mask_keys: Iterable[str] | None = DEFAULT_MASK_KEYS,
        on_error: ErrorHandler | None = None,
        dead_letter_path: str | os.PathLike[str] | None = DEFAULT_DEAD_LETTER_PATH,
        close_timeout: float = 10.0,
        max_message_chars: int | None = 1_000_000,
        **options: Any,
    ) -> None:
        if custom_formatter is not None and not callable(custom_formatter):
            raise ConfigurationError("custom_formatter must be callable")
        if max_queue < 1 or batch_size < 1:
            raise ConfigurationError("max_queue and batch_size must be >= 1")
        if close_timeout <= 0:
            raise ConfigurationError("close_timeout must be > 0")
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigurationError(
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {overflow!r}"
            )
        self.sinks: list[Sink] = build_sinks(method, sinks, options)
        self.close_timeout = close_timeout
        self._builder = EntryBuilder(custom_formatter, Masker(mask_keys))
        self._intake = Intake(max_queue, overflow)
        self._recorder = Recorder(self._intake, max_message_chars=max_message_chars)
        self._batch_size = batch_size
        self._dead_letters = DeadLetters(dead_letter_path)
        self._on_error = on_error or print_error
        self._lanes: list[Lane] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "new"  # new -> running -> closing -> closed
        self._closed = asyncio.Event()
        self._final_report: DeliveryReport | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every sink and start the writer and lane tasks on the running loop.

        Raises:
            LoggerClosedError: the logger was closed.
            Exception: whatever a sink's ``open()`` raised (the other sinks are closed again).
        """
        if self._state == "running":
            return
        if self._state != "new":
            raise LoggerClosedError("the logger is closed")
        self._state = "starting"
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._intake.bind(loop)
        self._lanes = [Lane(s, self._dead_letters, self._on_error) for s in self.sinks]
        opened: list[Lane] = []
        try:
            for lane in self._lanes:
                await lane.sink.open()
                opened.append(lane)
        except BaseException:
            for lane in opened:
                await lane.close_sink(lane.sink.timeout)
            self._state = "closed"
            self._recorder.closed = True
            self._closed.set()
            raise
        self._tasks = [
            loop.create_task(lane.run(), name=f"async_session_logger.lane[{lane.name}]")
            for lane in self._lanes
        ]
        self._writer = loop.create_task(self._write_loop(), name="async_session_logger.writer")
        self._state = "running"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _ensure_started(self) -> None:
        if self._state != "running":
            await self.start()

    # -- verbs --------------------------------------------------------------------------------
    async def start_session(self, session_id: str, metadata: dict[str, Any] | None = None) -> None:
        """Start a session and log its start entry (with ``metadata``)."""
        await self._ensure_started()
        self._recorder.start(session_id, metadata)
        if self._intake.full:
            await self._intake.wait_space()

    async def log_entry(
        self,
        session_id: str,
        message: str,
        level: int | str = logging.INFO,
        custom_fields: dict[str, Any] | None = None,
    ) -> None:
        """Log one entry in an open session; waits only when the queue is full."""
        if self._state != "running":
            await self._ensure_started()
        if self._recorder.log(session_id, message, level, custom_fields):
            await self._intake.wait_space()

    async def close_session(self, session_id: str, status: str = "closed") -> None:
        """Close a session: its close entry carries ``duration_s``, ``entries`` and ``status``."""
        await self._ensure_started()
        self._recorder.close(session_id, status)
        if self._intake.full:
            await self._intake.wait_space()

    def session(
        self, session_id: str, metadata: dict[str, Any] | None = None
    ) -> AsyncSessionHandle:
        """Return ``async with`` handle: starts the session, closes it (``error`` if it raised)."""
        return AsyncSessionHandle(self, session_id, metadata)

    async def save_logs(self, timeout: float | None = None) -> DeliveryReport:
        """Wait until every entry accepted so far is delivered or given up by every sink.

        Args:
            timeout: seconds to wait at most; on expiry the report shows what is still pending.

        Returns:
            A :class:`DeliveryReport` with the per-sink counters.
        """
        await self._ensure_started()
        flush = self._submit_flush()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(flush.future), timeout)
        except TimeoutError:
            return self._report()

    def _submit_flush(self) -> _Flush:
        flush = _Flush()
        self._intake.push(flush)
        return flush

    async def aclose(self, timeout: float | None = None) -> DeliveryReport:
        """Close open sessions (status ``interrupted``), drain every sink, stop; idempotent.

        Args:
            timeout: seconds for the drain (default ``close_timeout``); what a sink has not
                delivered by then is dead-lettered and reported.
        """
        if self._state in ("closing", "closed"):
            await self._closed.wait()
            assert self._final_report is not None
            return self._final_report
        if self._state == "new":
            self._state = "closed"
            self._recorder.closed = True
            self._closed.set()
            self._final_report = self._report()
            return self._final_report
        self._state = "closing"
        interrupted = self._recorder.interrupt_all()
        self._intake.push(_STOP)
        budget = self.close_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        assert self._writer is not None
        await asyncio.wait([self._writer], timeout=budget)
        if not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._dispatch(self._leftover_records())
            for lane in self._lanes:
                lane.put_stop()
        remaining = max(0.0, deadline - loop.time())
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=remaining)
        for lane, task in zip(self._lanes, self._tasks, strict=True):
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await lane.abandon(f"logger closed after {budget} s before delivery")
        for lane in self._lanes:
            await lane.close_sink(max(0.5, min(lane.sink.timeout or 5.0, deadline - loop.time())))
        report = self._report()
        if interrupted:
            report.interrupted_sessions = interrupted
        self._final_report = report
        self._state = "closed"
        self._closed.set()
        if not report.ok:
            print_error_summary(report, self._on_error)
        return report

    # -- introspection ------------------------------------------------------------------------
    def is_open(self, session_id: str) -> bool:
        """Whether a session with this id is open now (e.g. before using a client-chosen id)."""
        return self._recorder.is_open(session_id)

    def stats(self) -> dict[str, Any]:
        """Return counters: accepted entries, queue depth, open sessions, and per-sink stats."""
        gaps = self._intake.gaps
        return {
            "accepted": self._recorder.accepted,
            "dropped": gaps.dropped,
            "gap_entries": gaps.reported,
            "overflow": self._intake.overflow,
            "queued": len(self._intake),
            "open_sessions": len(self._recorder.open_sessions),
            "state": self._state,
            "sinks": {lane.name: _copy_stats(lane, gaps.dropped).as_dict() for lane in self._lanes},
        }

    def health(self) -> dict[str, Any]:
        """Return ``{"ok": bool, "sinks": {name: healthy}}``: whether every sink's last attempt
        succeeded (and, for network sinks, whether they are connected)."""
        sinks = {lane.name: lane.stats.healthy and lane.sink.healthy for lane in self._lanes}
        return {"ok": self._state == "running" and all(sinks.values()), "sinks": sinks}

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` has begun."""
        return self._state in ("closing", "closed")

    def _report(self) -> DeliveryReport:
        return DeliveryReport(
            accepted=self._recorder.accepted,
            dropped=self._intake.gaps.dropped,
            sinks={lane.name: _copy_stats(lane, self._intake.gaps.dropped) for lane in self._lanes},
            dead_letter_path=self._dead_letters.path,
        )

    # -- the writer ---------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        try:
            await self._drain_intake()
        except asyncio.CancelledError:
            if self._state == "running":
                # The app's loop is shutting down without aclose(): say what is lost.
                self._report_abandoned()
            raise

    def _report_abandoned(self) -> None:
        pending = len(self._intake) + sum(lane.stats.pending for lane in self._lanes)
        if pending:
            self._on_error(
                SinkError(
                    f"AsyncSessionLogger was cancelled without aclose(): {pending} entries were "
                    "not delivered (use `async with AsyncSessionLogger(...)` or await aclose())",
                    sink_name="*",
                )
            )

    async def _drain_intake(self) -> None:
        intake = self._intake
        while True:
            items = intake.take(self._batch_size)
            if not items:
                await intake.wait()
                continue
            records: list[Record] = []
            for item in items:
                if type(item) is tuple:  # a Record; markers are objects
                    records.append(item)
                    continue
                if records:
                    self._dispatch(records)
                    records = []
                if item is _STOP:
                    for lane in self._lanes:
                        lane.put_stop()
                    return
                self._barrier(item)
            if records:
                self._dispatch(records)
            for lane in self._lanes:
                if lane.congested:  # a "block" sink is behind: slow the callers, lose nothing
                    await lane.wait_space()
            await asyncio.sleep(0)

    def _dispatch(self, records: list[Record]) -> None:
        if not records:
            return
        builder = self._builder
        try:
            entries = builder.build_all(records)
        except Exception:  # defensive: one bad record must not take the batch down
            entries = [self._build_safely(r) for r in records]
        batch = Batch(entries, builder.encode(entries))
        for lane in self._lanes:
            lane.put(batch)

    def _build_safely(self, record: Record) -> dict[str, Any]:
        try:
            return self._builder.build(record)
        except Exception:
            entry = self._builder.build((*record[:6], None, record[7]))
            entry["build_error"] = traceback.format_exc(limit=1).strip().splitlines()[-1]
            return entry

    def _leftover_records(self) -> list[Record]:
        items = self._intake.take(len(self._intake))
        for item in items:
            if isinstance(item, _Flush) and not item.future.done():
                item.future.set_result(self._report())
        return [item for item in items if type(item) is tuple]

    def _barrier(self, flush: _Flush) -> None:
        futures = [lane.put_barrier() for lane in self._lanes]

        async def complete() -> None:
            await asyncio.gather(*futures)
            if not flush.future.done():
                flush.future.set_result(self._report())

        task = asyncio.get_running_loop().create_task(complete(), name="async_session_logger.flush")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # The sync facade uses these without going through a coroutine.
    @property
    def recorder(self) -> Recorder:
        """The thread-safe, non-blocking half of the verbs."""
        return self._recorder

    @property
    def intake(self) -> Intake:
        """The hand-off queue."""
        return self._intake

    def __repr__(self) -> str:
        names = ", ".join(lane.name for lane in self._lanes) or ", ".join(
            s.name for s in self.sinks
        )
        return f"<AsyncSessionLogger [{names}] {self._state}>"


def _copy_stats(lane: Lane, dropped: int) -> SinkStats:
    return dataclasses.replace(
        lane.stats,
        dropped=dropped,
        healthy=lane.stats.healthy and lane.sink.healthy,
        details=lane.sink.stats(),
    )


def print_error_summary(report: DeliveryReport, on_error: ErrorHandler) -> None:
    """Report, once at close, entries that did not reach every sink."""
    for stats in report.sinks.values():
        if stats.failed or stats.pending:
            on_error(
                SinkError(
                    f"sink {stats.name!r} closed with {stats.dead_lettered} entries "
                    f"dead-lettered to {report.dead_letter_path!r} and {stats.lost} lost",
                    sink_name=stats.name,
                )
            )
