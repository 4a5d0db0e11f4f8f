"""One lane per sink: its own queue and task, so a slow or dead sink never delays the others."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Final

from ._deadletter import DeadLetters
from ._errors import SinkError
from ._report import ErrorHandler, SinkStats
from .sinks._base import _LIFECYCLE, Batch, PartialWriteError, Sink

__all__ = ["Lane"]

# A lane hands its sink everything pending at once (up to the sink's max_batch entries): a sink
# that is slower per call than the producers gets larger batches instead of a growing backlog.
BACKOFF_INITIAL: Final = 0.05
BACKOFF_MAX: Final = 5.0


class _Barrier:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future


class Lane:
    """Feed one sink in order, with timeout, retries, dead letters and stats."""

    def __init__(self, sink: Sink, dead_letters: DeadLetters, on_error: ErrorHandler) -> None:
        self.sink = sink
        self.stats = SinkStats(sink.name)
        self._dead_letters = dead_letters
        self._on_error = on_error
        self._queue: deque[Batch | _Barrier | None] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._stopping = False
        self._incident_failures = 0
        self._incident_dead = 0
        self._inflight: Batch | None = None
        sink.attach(self._report, self._given_up)

    # -- feeding (writer side) --------------------------------------------------------------
    def put(self, batch: Batch) -> None:
        """Queue ``batch`` for this sink (filtered by its ``min_level``)."""
        if self.sink.min_level:
            kept = batch.at_least(self.sink.min_level)
            self.stats.filtered += len(batch) - len(kept)
            batch = kept
        if not len(batch):
            return
        self._queue.append(batch)
        self.stats.pending += len(batch)
        if self.stats.pending > self.sink.max_pending:
            if self.sink.overflow == "block":
                self._space.clear()
            else:
                self._shed()
        self._wake.set()

    def put_barrier(self) -> asyncio.Future[None]:
        """Return a future that resolves once everything queued so far is written or failed."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Barrier(future))
        self._wake.set()
        return future

    def put_stop(self) -> None:
        """Ask the lane to finish what is queued and close its sink."""
        self._queue.append(None)
        self._wake.set()

    async def wait_space(self) -> None:
        """Wait while a ``block``-overflow sink has more than ``max_pending`` entries waiting."""
        await self._space.wait()

    @property
    def congested(self) -> bool:
        """Whether this lane wants the writer to wait."""
        return not self._space.is_set()

    def _shed(self) -> None:
        # dead_letter overflow: move the oldest log entries out until the lane is within its
        # bound. Start and close entries stay queued (DESIGN §4: never dropped by overflow).
        shed: list[Batch] = []
        kept: list[Batch] = []
        while self.stats.pending > self.sink.max_pending and self._queue:
            head = self._queue[0]
            if not isinstance(head, Batch):
                break
            self._queue.popleft()
            lifecycle = [i for i, e in enumerate(head.entries) if e.get("event") in _LIFECYCLE]
            if lifecycle:
                kept.append(head.select(lifecycle))
                keep = set(lifecycle)
                head = head.select([i for i in range(len(head)) if i not in keep])
            shed.append(head)
            self.stats.pending -= len(head)
        if kept:
            self._queue.appendleft(Batch.concat(kept))
        if shed:
            batch = Batch.concat(shed)
            if len(batch):
                self._spawn_dead_letter(
                    batch, f"overflow: more than {self.sink.max_pending} entries pending"
                )

    def _spawn_dead_letter(self, batch: Batch, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._dead_letter(batch, reason), name=f"async_session_logger.dead_letter[{self.name}]"
        )
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.sink.name

    # -- draining (lane task) ---------------------------------------------------------------
    async def run(self) -> None:
        """Deliver batches until the stop marker (the core closes the sink afterwards)."""
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                head = self._queue[0]
                if head is None:
                    self._queue.popleft()
                    break
                if isinstance(head, _Barrier):
                    self._queue.popleft()
                    if not head.future.done():
                        head.future.set_result(None)
                    continue
                batch = self._inflight = self._take()
                await self._deliver(batch)
                self._inflight = None
                self.stats.pending -= len(batch)
                if self.stats.pending <= self.sink.max_pending:
                    self._space.set()
        finally:
            self._space.set()

    def _take(self) -> Batch:
        batches: list[Batch] = []
        size = 0
        while self._queue and size < self.sink.max_batch:
            head = self._queue[0]
            if not isinstance(head, Batch):
                break
            batches.append(head)
            size += len(head)
            self._queue.popleft()
        return Batch.concat(batches)

    async def _deliver(self, batch: Batch) -> None:
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.sink.timeout):
                    await self.sink.write_batch(batch)
            except PartialWriteError as exc:
                self.stats.delivered += len(batch) - len(exc.failed)
                batch = batch.select(exc.failed)
                error: BaseException = exc.cause
            except TimeoutError as exc:
                error = TimeoutError(f"write_batch took longer than {self.sink.timeout} s")
                error.__cause__ = exc
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                # A sink raising SystemExit has failed; uncaught it would kill the loop thread.
                error = exc
            else:
                self.stats.delivered += len(batch)
                self._recovered()
                return
            self._failed(error, attempt)
            if attempt >= self.sink.retries or self._stopping:
                await self._dead_letter(batch, f"{type(error).__name__}: {error}")
                return
            attempt += 1
            self.stats.retried += len(batch)
            delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (attempt - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _failed(self, error: BaseException, attempt: int) -> None:
        self.stats.failures += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        self.stats.healthy = False
        if self._incident_failures == 0:
            self.stats.incidents += 1
            report = SinkError(
                f"sink {self.name!r} failed; retrying up to {self.sink.retries} times, then "
                "dead-lettering (further failures of this incident are counted, not printed)",
                sink_name=self.name,
            )
            report.__cause__ = error
            self._report(report)
        self._incident_failures += 1

    def _recovered(self) -> None:
        if self._incident_failures:
            self._report(
                SinkError(
                    f"sink {self.name!r} recovered after {self._incident_failures} failed "
                    f"attempts; {self._incident_dead} entries dead-lettered meanwhile",
                    sink_name=self.name,
                )
            )
            self._incident_failures = 0
            self._incident_dead = 0
        self.stats.healthy = True

    async def _dead_letter(self, batch: Batch, reason: str) -> None:
        if await self._dead_letters.write(self.name, reason, batch):
            self.stats.dead_lettered += len(batch)
            self._incident_dead += len(batch)
            return
        self.stats.lost += len(batch)
        report = SinkError(
            f"sink {self.name!r} gave up on {len(batch)} entries and the dead-letter file "
            f"{self._dead_letters.path!r} could not keep them: they are lost",
            sink_name=self.name,
        )
        self._report(report)

    async def _given_up(self, batch: Batch, reason: str) -> bool:
        # Sink.dead_letter: entries accepted by an earlier write_batch (counted delivered then).
        self.stats.delivered -= len(batch)
        before = self.stats.dead_lettered
        await self._dead_letter(batch, reason)
        return self.stats.dead_lettered > before

    def _report(self, error: SinkError) -> None:
        try:
            self._on_error(error)
        except Exception:  # the error handler must not kill the lane
            pass

    async def close_sink(self, timeout: float | None) -> None:
        """Close the sink, reporting (not raising) a failure or a timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self.sink.close()
        except Exception as exc:
            report = SinkError(f"sink {self.name!r} failed to close", sink_name=self.name)
            report.__cause__ = exc
            self._report(report)

    async def abandon(self, reason: str) -> None:
        """Dead-letter whatever is still queued (the lane ran out of time at close)."""
        self._stopping = True
        leftovers = [item for item in self._queue if isinstance(item, Batch)]
        if self._inflight is not None:
            leftovers.insert(0, self._inflight)
            self._inflight = None
        for item in self._queue:
            if isinstance(item, _Barrier) and not item.future.done():
                item.future.set_result(None)
        self._queue.clear()
        if leftovers:
            batch = Batch.concat(leftovers)
            self.stats.pending -= len(batch)
            await self._dead_letter(batch, reason)


_BACKGROUND: set[asyncio.Task[None]] = set()
