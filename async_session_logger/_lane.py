"""One lane per sink: its own queue and task, so a slow or dead sink never delays the others."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any, Final

from ._deadletter import DeadLetters
from ._errors import SinkError
from ._report import ErrorHandler, SinkStats
from ._tasks import TaskOwner
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
        self._owner = TaskOwner()
        self._gen = 0
        self._stopping = False
        self._incident_failures = 0
        self._incident_dead = 0
        self._inflight: Batch | None = None
        # Entries queued or in flight here (the overflow bound); stats.pending also counts
        # entries whose dead-letter write has not finished, until its outcome is known.
        self._backlog = 0
        self.bind(self._owner)
        sink.attach(self._report, self._given_up)

    def bind(self, owner: TaskOwner) -> int:
        """Start a new binding (a new event loop); return its generation for :meth:`run`.

        A batch a previous binding had in flight when its loop stopped goes back to the front
        of the queue: it is delivered again (at least once, never lost); pending barriers of
        the old loop are dropped (nobody can wait on them any more).
        """
        self._owner = owner
        self._gen += 1
        # The delivery watchdog (see _write_in_time); a previous loop's timer is dead.
        watchdog: asyncio.TimerHandle | None = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.cancel()
        self._watchdog: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # loop time the write in flight must end by
        self._timed_out = False  # the watchdog cancelled the lane task for that write
        self._task: asyncio.Task[Any] | None = None  # the task delivering (the lane's)
        # The lane task's wait for work: a bare future, set by _wake() (an asyncio.Event costs
        # a list of waiters and a context manager more, twice per batch).
        self._waiter: asyncio.Future[None] | None = None
        self._space = asyncio.Event()
        self._space.set()
        self._stopping = False
        self._requeue_inflight()
        self._queue = deque(item for item in self._queue if not isinstance(item, _Barrier))
        return self._gen

    def after_fork(self) -> None:
        """In a forked child: forget the parent's queue and counters (the parent delivers them)."""
        self._queue.clear()
        self._inflight = None
        self._backlog = 0
        self.stats = SinkStats(self.sink.name)
        self._incident_failures = 0
        self._incident_dead = 0
        self._owner = TaskOwner()

    def _requeue_inflight(self) -> None:
        if self._inflight is not None:
            self._queue.appendleft(self._inflight)
            self._inflight = None

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
        self._backlog += len(batch)
        if self._backlog > self.sink.max_pending:
            if self.sink.overflow == "block":
                self._space.clear()
            else:
                self._shed()
        self._wake()

    def put_barrier(self) -> asyncio.Future[None]:
        """Return a future that resolves once everything queued so far is written or failed."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Barrier(future))
        self._wake()
        return future

    def put_stop(self) -> None:
        """Ask the lane to finish what is queued and close its sink."""
        self._queue.append(None)
        self._wake()

    def _wake(self) -> None:
        # Wake the lane task if it waits for work (the loop's thread: the writer feeds lanes).
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

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
        while self._backlog > self.sink.max_pending and self._queue:
            head = self._queue[0]
            if not isinstance(head, Batch):
                break
            self._queue.popleft()
            lifecycle = [i for i, (_, e, _) in enumerate(head.heads()) if e in _LIFECYCLE]
            if lifecycle:
                kept.append(head.select(lifecycle))
                keep = set(lifecycle)
                head = head.select([i for i in range(len(head)) if i not in keep])
            shed.append(head)
            self._backlog -= len(head)
        if kept:
            self._queue.appendleft(Batch.concat(kept))
        if shed:
            batch = Batch.concat(shed)
            if len(batch):
                self._spawn_dead_letter(
                    batch, f"overflow: more than {self.sink.max_pending} entries pending"
                )

    def _spawn_dead_letter(self, batch: Batch, reason: str) -> None:
        async def shed() -> None:
            await self._dead_letter(batch, reason)
            self.stats.pending -= len(batch)

        self._owner.spawn(shed(), f"dead_letter[{self.name}]")

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.sink.name

    # -- draining (lane task) ---------------------------------------------------------------
    async def run(self, gen: int) -> None:
        """Deliver batches until the stop marker (the engine closes the sink afterwards).

        ``gen`` is the binding this task serves: a task of an older binding (its loop stopped,
        the engine moved to another loop) that ever resumes stops without touching anything.
        """
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    self._waiter = waiter = loop.create_future()
                    await waiter
                    if gen != self._gen:
                        return
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
                self._inflight = self._take()
                await self._deliver(self._inflight, gen)
                if gen != self._gen:
                    return  # re-queued by a newer binding, which delivers it (again)
                rest = self._inflight  # what a partial write left: delivered or dead-lettered
                self._inflight = None
                self._settle(len(rest) if rest is not None else 0)
        except asyncio.CancelledError:
            if gen == self._gen:
                # The loop is shutting down under us: keep the batch for the next binding.
                self._requeue_inflight()
            raise
        finally:
            if gen == self._gen:
                self._space.set()
                if self._watchdog is not None:  # no timer of ours outlives the lane task
                    self._watchdog.cancel()
                    self._watchdog = None

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

    def _settle(self, count: int) -> None:
        # ``count`` entries of this lane are delivered, dead-lettered or lost: no longer pending.
        self.stats.pending -= count
        self._backlog -= count
        if self._backlog <= self.sink.max_pending:
            self._space.set()

    async def _deliver(self, batch: Batch, gen: int) -> None:
        attempt = 0
        while True:
            try:
                await self._write_in_time(batch)
            except PartialWriteError as exc:
                written = len(batch) - len(exc.failed)
                self.stats.delivered += written
                batch = batch.select(exc.failed)
                if gen == self._gen:
                    # In flight now: only the rest. A close that gives up on it (abandon())
                    # or a new loop (bind()) takes these, not the entries already written.
                    self._inflight = batch
                    self._settle(written)
                error: BaseException = exc.cause
            except TimeoutError as exc:
                error = TimeoutError(f"write_batch took longer than {self.sink.timeout} s")
                error.__cause__ = exc
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the lane itself is being cancelled
                # The sink (e.g. an async handler) raised CancelledError by itself: a failure
                # like any other, not a reason for the lane to die.
                error = exc
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

    async def _write_in_time(self, batch: Batch) -> None:
        """``sink.write_batch(batch)``, failed with ``TimeoutError`` past ``sink.timeout``.

        What ``asyncio.timeout()`` does, with one timer per lane instead of one per batch
        (~33,000 instructions a batch: a tenth of what a web request's four entries cost when
        each request is its own batch). A delivery sets its deadline; the watchdog timer is
        armed only when none is. When it fires it re-arms for the delivery in flight, stops
        when there is none, and cancels the lane task when that delivery is past its deadline
        (the cancellation becomes the ``TimeoutError``, as in ``asyncio.timeout()``).
        """
        timeout = self.sink.timeout
        if timeout is None:
            await self.sink.write_batch(batch)
            return
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()  # the task the watchdog would cancel
        self._deadline = deadline = loop.time() + timeout
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)
        try:
            await self.sink.write_batch(batch)
        except asyncio.CancelledError as exc:
            if self._timed_out:
                self._timed_out = False
                task = asyncio.current_task()
                if task is not None and task.uncancel() == 0:  # ours alone: a timeout
                    raise TimeoutError(f"write_batch took longer than {timeout} s") from exc
            raise  # the lane itself is being cancelled
        finally:
            self._deadline = None
            if self._timed_out:  # the sink swallowed our cancellation: take it back
                self._timed_out = False
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()

    def _watch(self) -> None:
        # The watchdog timer (see _write_in_time).
        self._watchdog = None
        deadline, task = self._deadline, self._task
        if deadline is None or task is None or task.done():
            return  # no delivery in flight: the next one arms the watchdog again
        loop = task.get_loop()
        if deadline - loop.time() > 0.001:  # a later delivery than the one that armed it
            self._watchdog = loop.call_at(deadline, self._watch)
            return
        self._timed_out = True
        task.cancel()

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

    async def _dead_letter(self, batch: Batch, reason: str, timeout: float | None = None) -> None:
        if await self._dead_letters.write(self.name, reason, batch, timeout):
            self.stats.dead_lettered += len(batch)
            self._incident_dead += len(batch)
            return
        self.stats.lost += len(batch)
        report = SinkError(
            f"sink {self.name!r} gave up on {len(batch)} entries and the dead-letter file "
            f"{self._dead_letters.path!r} could not keep them: they are lost"
            + (f" ({self._dead_letters.last_error})" if self._dead_letters.last_error else ""),
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

    async def abandon(self, reason: str, timeout: float) -> None:
        """Dead-letter whatever is still queued (the lane ran out of time at close).

        The dead-letter write gets at most ``timeout`` seconds (a hung filesystem must not
        hold close() past its budget): entries it could not keep in time are counted lost.
        """
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
            self._backlog -= len(batch)
            await self._dead_letter(batch, reason, timeout)
            self.stats.pending -= len(batch)  # only now: the outcome is counted
