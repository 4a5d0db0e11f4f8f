"""The one engine under both faces: recorder, intake, writer, lanes, dead letters, tasks.

The engine binds to one event loop at a time. Both faces drive it through this small API:
``start()`` (bind to the running loop: first use, a new loop after the old one closed, or a
forked child), ``flush()``, ``stop()``, ``abandon()`` (a stuck loop), ``close_at_exit()``, and
the recorder's verbs, which run in the caller's thread.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from ._context import spawn_internal
from ._deadletter import DeadLetters
from ._encode import describe
from ._entry import EntryBuilder
from ._errors import LoggerClosedError, SinkError, WrongLoopError
from ._intake import Intake, Overflow
from ._lane import Lane
from ._portal import Portal, close_loop, private_loop
from ._recorder import Recorder
from ._report import DeliveryReport, ErrorHandler, SinkStats, print_error
from ._tasks import TaskOwner
from ._writer import STOP, Flush, Writer
from .sinks import Sink

if TYPE_CHECKING:
    import multiprocessing.util

__all__ = ["CAP_FACTOR", "Engine"]

# States. DETACHED: the loop the engine ran on shut down without stop(); everything queued is
# kept, and the next start() (a new loop, or the exit hook) delivers it.
NEW: Final = "new"
STARTING: Final = "starting"
RUNNING: Final = "running"
DETACHED: Final = "detached"
CLOSING: Final = "closing"
CLOSED: Final = "closed"

# A drain (stop, or a flush without a timeout) gives up after close_timeout seconds in which no
# sink made progress, and in any case after CAP_FACTOR * close_timeout seconds.
CAP_FACTOR: Final = 6
# How long the exit hook and a sync face wait past the cap for a loop that does not answer.
GRACE: Final = 2.0

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
# What live_loop holds while the engine does not run: no running loop (nor None) is ever it.
_NOT_RUNNING: Final[Any] = object()


class Engine:
    """Everything both faces share; see the module docstring for its API."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        builder: EntryBuilder,
        *,
        max_queue: int,
        overflow: Overflow,
        batch_size: int,
        linger: float,
        dead_letter_path: str | os.PathLike[str] | None,
        on_error: ErrorHandler | None,
        close_timeout: float,
        sessions: dict[str, Any],
    ) -> None:
        self.sinks = list(sinks)
        self.intake = Intake(max_queue, overflow, linger)
        # max_message_chars, buffer_level, buffer_max, idle_timeout, max_open_sessions.
        self.recorder = Recorder(self.intake, **sessions)
        self.recorder.use_builder(builder)
        self.dead_letters = DeadLetters(dead_letter_path)
        self.on_error: ErrorHandler = on_error or print_error
        self.close_timeout = close_timeout
        self.lanes = [Lane(s, self.dead_letters, self.report_error) for s in self.sinks]
        self.writer = Writer(self.intake, builder, self.lanes, batch_size, self.report)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.state = NEW
        # Called at interpreter exit and by multiprocessing's exit (os._exit children); a face
        # may replace it with its own close. A strong reference on purpose: a logger the
        # program dropped without closing still has entries in flight.
        self.exit_hook: Callable[[], None] = self.close_at_exit
        # Called when a close begins, before open sessions are interrupted (faces' on_close).
        self.closing_hooks: list[Callable[[], object]] = []
        self._owner = TaskOwner()
        self._gen = 0
        self._writer_task: asyncio.Task[None] | None = None
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._idle_task: asyncio.Task[None] | None = None
        self._progress_at = 0.0
        self._starting: asyncio.Future[None] | None = None
        self._final: concurrent.futures.Future[DeliveryReport] = concurrent.futures.Future()
        self._pid = os.getpid()
        self._hooked_pid = 0
        self._finalizer: multiprocessing.util.Finalize | None = None
        _ENGINES.add(self)

    # -- binding ------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """new, starting, running, detached, closing or closed."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        # The async face's hot path compares this with the running loop: one identity test
        # says "running, and on this loop".
        self.live_loop = self.loop if value == RUNNING else _NOT_RUNNING

    @property
    def running(self) -> bool:
        """Whether the writer runs (on :attr:`loop`)."""
        return self.state == RUNNING

    def other_loop_alive(self, loop: asyncio.AbstractEventLoop | None) -> bool:
        """Whether the engine is bound to a loop other than ``loop`` that still runs."""
        bound = self.loop
        return (
            bound is not None
            and bound is not loop
            and self.state in (STARTING, RUNNING, CLOSING)
            and not bound.is_closed()
            and bound.is_running()
        )

    def check_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Raise :class:`WrongLoopError` if bound to another loop that still runs."""
        if self.other_loop_alive(loop):
            raise WrongLoopError(
                "this logger runs on another event loop that is still running (one logger "
                "serves one loop at a time; after that loop closes, the next one takes over)"
            )

    async def start(self) -> None:
        """Bind to the running loop: open the sinks and start the writer and lanes.

        Concurrent callers share one start. After the previous loop closed (a second
        ``asyncio.run``, pytest-asyncio's per-test loops) or in a forked child, this binds
        anew and delivers everything still queued.

        Raises:
            LoggerClosedError: the logger was closed.
            WrongLoopError: the logger runs on another loop that still runs.
            Exception: whatever a sink's ``open()`` raised (the logger is then closed).
        """
        loop = asyncio.get_running_loop()
        while True:
            if self.state in (CLOSING, CLOSED):
                raise LoggerClosedError("the logger is closed")
            if self.loop is loop:
                if self.state == RUNNING:
                    return
                if self.state == STARTING and self._starting is not None:
                    await asyncio.shield(self._starting)
                    continue
            self.check_loop(loop)
            break
        await self._bind(loop)

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        rebind = self.loop is not None
        self.state = STARTING
        self.loop = loop
        starting = self._starting = loop.create_future()
        owner = self._owner = TaskOwner()  # a previous loop's tasks are gone with it
        self._gen += 1
        self.intake.bind(loop)
        self.dead_letters.bind()
        gens = [lane.bind(owner) for lane in self.lanes]
        opened: list[Lane] = []
        try:
            for lane in self.lanes:
                if rebind:
                    lane.sink.reset()
                # In an internal context: the tasks a sink starts (an MQTT client's) are the
                # logger's own, not the caller's (see _context).
                await spawn_internal(lane.sink.open(), f"async_session_logger.open[{lane.name}]")
                opened.append(lane)
        except BaseException as exc:
            await self._failed_start(opened, exc)
            starting.set_exception(exc)
            starting.exception()  # retrieved: the callers that wait get it raised
            raise
        self._lane_tasks = [
            owner.spawn(lane.run(gen), f"lane[{lane.name}]")
            for lane, gen in zip(self.lanes, gens, strict=True)
        ]
        self._writer_task = owner.spawn(self._write(self._gen), "writer")
        if self.recorder.idle_timeout is not None:
            self._idle_task = owner.spawn(self._close_idle(self.recorder.idle_timeout), "idle")
        self.state = RUNNING
        self._hook()
        starting.set_result(None)

    async def _failed_start(self, opened: list[Lane], exc: BaseException) -> None:
        # Entries accepted before the start (verbs queue at call time) are not silently lost:
        # they are dead-lettered like any entry a sink could not take, and reported.
        self.recorder.refuse_more()
        self.state = CLOSING
        for lane in opened:
            await lane.close_sink(lane.sink.timeout)
        self.writer.dispatch(self.writer.leftovers())
        why = f"the logger failed to start: {type(exc).__name__}: {exc}"
        for lane in self.lanes:
            lane.put_stop()
            await lane.abandon(why, 2.0)
        self._finish(self.report())

    async def _write(self, gen: int) -> None:
        try:
            await self.writer.run(self._owner, lambda: gen == self._gen)
        except asyncio.CancelledError:
            if gen == self._gen and self.state == RUNNING:
                await self._detach()
            raise

    async def _detach(self) -> None:
        # The loop is shutting down (asyncio.run's end cancels every task) without stop():
        # keep what is queued, close the sinks while the loop still runs; the next start() on
        # a new loop, or the exit hook, delivers the rest.
        self.state = DETACHED
        for lane in self.lanes:
            await lane.close_sink(1.0)

    # -- flush and stop -----------------------------------------------------------------------
    async def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Wait until every entry accepted so far is delivered or given up by every sink.

        Without ``timeout``, give up after ``close_timeout`` seconds in which no sink made
        progress (and after ``CAP_FACTOR * close_timeout`` in all); the report then says
        what is still pending.
        """
        await self.start()
        flush = Flush()
        self.intake.push(flush)
        waiter = asyncio.wrap_future(flush.future)
        loop = asyncio.get_running_loop()
        if timeout is not None:
            await asyncio.wait([waiter], timeout=timeout)
        else:
            await self._wait_progress([waiter], loop.time() + self.close_timeout * CAP_FACTOR)
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        return self.report()

    async def stop(self, timeout: float | None = None) -> DeliveryReport:
        """Close open sessions (``interrupted``), drain every sink, close them; idempotent.

        Args:
            timeout: a hard limit in seconds. Without it the drain goes on while the sinks
                make progress, and gives up after ``close_timeout`` seconds without any (and
                after ``CAP_FACTOR * close_timeout`` in all); what is left then is
                dead-lettered and reported.
        """
        if self.state in (CLOSING, CLOSED):
            return await asyncio.wrap_future(self._final)
        if self.state == NEW and not len(self.intake):
            self.recorder.refuse_more()
            self._finish(self.report())
            return self._final.result()
        await self.start()
        if self.state in (CLOSING, CLOSED):
            return await asyncio.wrap_future(self._final)
        self.state = CLOSING
        loop = asyncio.get_running_loop()
        budget = self.close_timeout if timeout is None else timeout
        cap = loop.time() + (budget if timeout is not None else budget * CAP_FACTOR)
        self._progress_at = loop.time()
        if self._idle_task is not None:
            self._idle_task.cancel()  # the drain waits for every task it owns
        self._run_closing_hooks()
        interrupted = self.recorder.interrupt_all()
        self.intake.push(STOP)
        writer = self._writer_task
        assert writer is not None
        if not await self._wait_progress([writer], cap, timeout is not None):
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.writer.dispatch(self.writer.leftovers())
            for lane in self.lanes:
                lane.put_stop()
        await self._wait_progress(self._lane_tasks, cap, timeout is not None)
        for lane, task in zip(self.lanes, self._lane_tasks, strict=True):
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                left = max(0.05, cap - loop.time())
                await lane.abandon(f"logger closed after {budget:g} s before delivery", left)
        rest = [t for t in self._owner.tasks if not t.done()]
        if rest:  # overflow dead-letter writes, flush barriers
            await asyncio.wait(rest, timeout=max(0.05, cap - loop.time()))
            await self._owner.cancel_all()
        # Closing a sink shows no progress to measure: it gets what is left of the budget.
        until = cap if timeout is not None else min(cap, self._progress_at + budget)
        for lane in self.lanes:
            limit = lane.sink.timeout or 5.0
            await lane.close_sink(max(0.5, min(limit, until - loop.time())))
        report = self.report()
        report.interrupted_sessions = interrupted
        self._finish(report)
        if not report.ok:
            print_error_summary(report, self.report_error)
        return report

    async def _close_idle(self, idle_timeout: float) -> None:
        # Sweeps a few times per idle_timeout (at most once a second): a session closes
        # between idle_timeout and about 1.25 x idle_timeout after its last activity.
        interval = min(max(idle_timeout / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(interval)
            self.recorder.close_idle(time.time_ns())

    def _run_closing_hooks(self) -> None:
        hooks, self.closing_hooks = self.closing_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception as exc:
                self.report_error(
                    SinkError(f"an on_close callback failed: {describe(exc)}", sink_name="*")
                )

    async def _wait_progress(
        self, waitables: Iterable[asyncio.Future[Any]], cap: float, hard: bool = False
    ) -> bool:
        """Wait for ``waitables`` while the sinks progress; return whether they all finished."""
        loop = asyncio.get_running_loop()
        pending = {w for w in waitables if not w.done()}
        last = self._progress()
        last_at = loop.time()
        while pending:
            now = loop.time()
            limit = cap if hard else min(cap, last_at + self.close_timeout)
            if now >= limit:
                return False
            _, pending = await asyncio.wait(pending, timeout=min(0.25, limit - now))
            progress = self._progress()
            if progress != last:
                last, last_at = progress, loop.time()
                self._progress_at = last_at
        return True

    def wait_in_thread(
        self, future: concurrent.futures.Future[DeliveryReport], timeout: float | None
    ) -> DeliveryReport:
        """Wait for a drain from another thread; raise TimeoutError when it stalls.

        A stuck loop thread makes no progress at all: give up after ``close_timeout`` plus a
        grace without any (or after ``timeout`` plus the grace, when one is given).
        """
        start = time.monotonic()
        last, last_at = self._progress(), start
        while True:
            try:
                return future.result(0.1)
            except concurrent.futures.TimeoutError:
                pass
            now = time.monotonic()
            progress = self._progress()
            if progress != last:
                last, last_at = progress, now
            if timeout is not None and now - start >= timeout + GRACE:
                raise TimeoutError(f"the drain did not finish within {timeout + GRACE:g} s")
            if timeout is None and now - last_at >= self.close_timeout + GRACE:
                raise TimeoutError(
                    f"the drain made no progress for {self.close_timeout + GRACE:g} s"
                )

    def _progress(self) -> tuple[int, int]:
        done = sum(s.delivered + s.dead_lettered + s.lost for s in (x.stats for x in self.lanes))
        return len(self.intake), done

    def _finish(self, report: DeliveryReport) -> None:
        self.state = CLOSED
        self._unhook()
        self.dead_letters.stop()
        if not self._final.done():
            self._final.set_result(report)

    @property
    def final_report(self) -> DeliveryReport | None:
        """The report of the finished close, if it finished."""
        return self._final.result() if self._final.done() else None

    def abandon(self, why: str) -> DeliveryReport:
        """Close without the loop (it is stuck or gone): refuse more, report what is undelivered.

        Counters only, so safe from any thread.
        """
        self.recorder.refuse_more()
        report = self.report()
        pending = ", ".join(f"{s.name} {s.pending}" for s in report.sinks.values())
        self.report_error(
            SinkError(
                f"{why}. Not delivered: {len(self.intake)} entries "
                f"still queued for every sink, and per sink pending: {pending}",
                sink_name="*",
            )
        )
        self._finish(report)
        return report

    # -- exit and fork ------------------------------------------------------------------------
    def _hook(self) -> None:
        if self._hooked_pid == os.getpid():
            return
        self._hooked_pid = os.getpid()
        atexit.register(self.exit_hook)
        # multiprocessing runs its finalizers in children that end with os._exit() (fork and
        # forkserver workers), where atexit does not run. Imported here, at the first start,
        # not with the package: it costs ~8 ms of import time.
        import multiprocessing.util

        self._finalizer = multiprocessing.util.Finalize(None, self.exit_hook, exitpriority=100)

    def _unhook(self) -> None:
        if self._hooked_pid:
            atexit.unregister(self.exit_hook)
            if self._finalizer is not None:
                self._finalizer.cancel()
                self._finalizer = None
            self._hooked_pid = 0

    def close_at_exit(self) -> None:
        """Drain at interpreter exit wherever the loop is: running, stopped, closed, or none."""
        if self.state in (CLOSING, CLOSED):
            return
        if self.state == NEW and not len(self.intake):
            self._finish(self.report())
            return
        loop = self.loop
        cap = self.close_timeout * CAP_FACTOR + GRACE
        try:
            if loop is not None and not loop.is_closed() and loop.is_running():
                self.wait_in_thread(asyncio.run_coroutine_threadsafe(self.stop(), loop), None)
                return
            if loop is not None and not loop.is_closed() and self.state != DETACHED:
                # The program stopped its loop without closing it (or us): run it to drain.
                loop.run_until_complete(asyncio.wait_for(self.stop(), cap))
                return
        except TimeoutError as exc:
            self.abandon(f"AsyncSessionLogger's exit drain gave up: {exc}")
            return
        except RuntimeError:
            pass  # that loop cannot be run from here: drain on a private one
        try:
            portal = Portal("async_session_logger.exit")
        except RuntimeError:
            # Python 3.12+ starts no thread once the interpreter is shutting down: drain on a
            # private loop in this thread, bounded by the cap instead of watched from here.
            self._drain_here(cap)
            return
        try:
            self.wait_in_thread(portal.submit(self.stop()), None)
        except (TimeoutError, LoggerClosedError) as exc:
            self.abandon(f"AsyncSessionLogger's exit drain gave up: {exc}")
        finally:
            portal.stop(0.5)

    def _drain_here(self, cap: float) -> None:
        loop = private_loop()
        budget = cap + GRACE
        overdue: list[bool] = []

        def stop_loop() -> None:
            overdue.append(True)
            loop.stop()

        try:
            # Without threads, a call that blocks (a plain handler that hangs, a file on a
            # hung mount) runs on this loop, where wait_for() cannot end it: an alarm does,
            # raising in the blocked call and stopping the loop.
            with _alarm(budget, stop_loop):
                try:
                    loop.run_until_complete(asyncio.wait_for(self.stop(), cap))
                except TimeoutError:
                    self.abandon(
                        f"AsyncSessionLogger's exit drain gave up: it did not finish in {cap:g} s"
                    )
                except (RuntimeError, DrainOverdue):
                    if not overdue:
                        raise
                    self.abandon(
                        "AsyncSessionLogger's exit drain gave up: a call blocked its loop past "
                        f"the drain's budget of {budget:g} s"
                    )
                finally:
                    for task in (*self._lane_tasks, self._writer_task):
                        if task is not None and task.done() and not task.cancelled():
                            task.exception()  # retrieved: the alarm's, in a blocked call
                    close_loop(loop)
        except DrainOverdue:
            loop.close()  # the alarm again, during the clean-up: the process is exiting anyway

    def after_fork(self) -> None:
        """In a forked child: the parent's queue stays the parent's; start afresh when used."""
        parent = self._pid
        self._pid = os.getpid()
        self.intake.reset()
        self.recorder.after_fork(parent)
        for lane in self.lanes:
            lane.after_fork()
        for sink in self.sinks:
            try:
                sink.reset()
            except Exception:  # a sink's reset must not break the child
                pass
        self.dead_letters.bind()
        self._owner = TaskOwner()
        self._writer_task = None
        self._lane_tasks = []
        self._starting = None
        self.loop = None
        self._hooked_pid = 0
        self._finalizer = None
        if self.state in (CLOSING, CLOSED):
            self.state = CLOSED
        else:
            self.state = NEW
            self._final = concurrent.futures.Future()

    # -- introspection ------------------------------------------------------------------------
    def in_sink_thread(self) -> bool:
        """Whether the caller runs in one of this logger's sink threads (a plain handler)."""
        return any(sink.owns_current_thread() for sink in self.sinks)

    def report_error(self, error: SinkError) -> None:
        """Hand ``error`` to ``on_error``; an error handler that raises is ignored."""
        try:
            self.on_error(error)
        except Exception:
            pass

    def report(self) -> DeliveryReport:
        """The counters now, as a :class:`DeliveryReport` (safe from any thread)."""
        dropped = self.intake.gaps.dropped
        return DeliveryReport(
            accepted=self.recorder.accepted,
            dropped=dropped,
            sinks={lane.name: _copy_stats(lane, dropped) for lane in self.lanes},
            dead_letter_path=self.dead_letters.path,
        )

    def stats(self) -> dict[str, Any]:
        """Counters: accepted entries, queue depth, open sessions, and per-sink stats."""
        gaps = self.intake.gaps
        recorder = self.recorder
        return {
            "accepted": self.recorder.accepted,
            "dropped": gaps.dropped,
            "gap_entries": gaps.reported,
            "overflow": self.intake.overflow,
            "queued": len(self.intake),
            "waiting": self.intake.waiting,
            "open_sessions": len(self.recorder.open_sessions),
            "held": recorder.held_now,
            "discarded": recorder.discarded,
            "buffer_evicted": recorder.buffer_evicted,
            "timed_out": recorder.timed_out,
            "evicted_sessions": recorder.evicted_sessions,
            "late_entries": recorder.late_entries,
            "state": self.state,
            "sinks": {lane.name: _copy_stats(lane, gaps.dropped).as_dict() for lane in self.lanes},
        }

    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "sinks": {name: healthy}}``."""
        sinks = {lane.name: lane.stats.healthy and lane.sink.healthy for lane in self.lanes}
        return {"ok": self.state == RUNNING and all(sinks.values()), "sinks": sinks}


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
                    f"dead-lettered to {report.dead_letter_path!r} and {stats.lost} lost"
                    + (f"; {stats.pending} not delivered" if stats.pending else ""),
                    sink_name=stats.name,
                )
            )


class DrainOverdue(BaseException):
    """The exit drain ran past its budget (raised by an alarm in the blocked call).

    A ``BaseException``: a handler's ``except Exception`` must not swallow it.
    """


@contextlib.contextmanager
def _alarm(seconds: float, on_fire: Callable[[], None]) -> Iterator[None]:
    """After ``seconds`` (then every 0.5 s), call ``on_fire`` and raise :class:`DrainOverdue`
    in this thread, the main thread (elsewhere: no alarm)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def overdue(signum: int, frame: object) -> None:
        on_fire()
        raise DrainOverdue(f"the drain did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, overdue)
    if previous is None:  # installed from C: not restorable from Python
        previous = signal.SIG_DFL
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _after_fork_in_child() -> None:
    for engine in list(_ENGINES):
        engine.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
