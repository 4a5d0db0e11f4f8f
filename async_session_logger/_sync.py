"""``SessionLogger``: the seed's synchronous API over one async core on a daemon loop thread."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import signal
import threading
import time
from collections.abc import Coroutine
from types import FrameType, TracebackType
from typing import Any, Final, Self, TypeVar

from ._core import AsyncSessionLogger
from ._entry import Formatter
from ._errors import ConfigurationError, LoggerClosedError, SinkError, WrongThreadError
from ._handles import SessionHandle
from ._recorder import Recorder
from ._report import DeliveryReport
from ._threads import DaemonExecutor

__all__ = ["SessionLogger"]

T = TypeVar("T")

# How long close() waits past its budget for the loop thread before it stops waiting: the
# core's aclose() keeps close_timeout itself, so this only ends a loop that is blocked (a sink
# or an async handler making a blocking call on the loop thread) or gone.
CLOSE_GRACE: Final = 2.0


class _LoopThread:
    """An event loop in a daemon thread, with a start-up handshake (as anyio's portal)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        # Daemon threads for run_in_executor(None, ...): usable during interpreter exit.
        self.loop.set_default_executor(DaemonExecutor(8, "async_session_logger.loop-executor"))
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    @property
    def in_thread(self) -> bool:
        # Identity, not get_ident(): idents are reused once a thread ends, so a worker thread
        # started after the loop thread stopped could otherwise pass for it.
        return threading.current_thread() is self._thread

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result in the calling thread.

        Raises:
            WrongThreadError: called from the loop thread itself.
            LoggerClosedError: the loop thread has stopped (e.g. killed by a ``SystemExit``
                raised in an async handler), before or while waiting.
            TimeoutError: ``timeout`` expired (the coroutine keeps running).
        """
        if self.in_thread:
            coro.close()
            raise WrongThreadError(
                "a blocking SessionLogger verb was called from the logger's own event-loop "
                "thread (e.g. from an async custom handler); it would deadlock"
            )
        if not self._thread.is_alive() and self._started.is_set():
            coro.close()
            raise LoggerClosedError("the logger's event-loop thread has stopped")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError as exc:  # the loop closed since the check above
            coro.close()
            raise LoggerClosedError("the logger's event-loop thread has stopped") from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # In slices, so that a loop thread that dies without resolving the future (its
            # last callbacks never run) cannot leave the caller waiting forever.
            left = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
            try:
                return future.result(left)
            except concurrent.futures.CancelledError as exc:  # the dying loop cancelled it
                raise LoggerClosedError("the logger's event-loop thread has stopped") from exc
            except TimeoutError:
                if not self._thread.is_alive():
                    future.cancel()
                    raise LoggerClosedError("the logger's event-loop thread has stopped") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.in_thread:
            self._thread.join(timeout)


_RECORDER_CODE: Final = frozenset(
    f.__code__ for f in vars(Recorder).values() if hasattr(f, "__code__")
)


def _inside_recorder(frame: FrameType | None) -> bool:
    """Whether a method of Recorder is on the stack of ``frame`` (its short critical section)."""
    while frame is not None:
        if frame.f_code in _RECORDER_CODE:
            return True
        frame = frame.f_back
    return False


class SessionLogger:
    """The seed's API for scripts and threads: plain calls, delivered in the background.

    Every verb delegates to one :class:`AsyncSessionLogger` running on a daemon event-loop
    thread that this object owns. ``log_entry`` and friends return as soon as the entry is queued
    (with the default ``overflow="block"`` they wait only when ``max_queue`` entries are
    pending; a drop policy never waits); ``save_logs()`` is a flush barrier.
    Safe to call from any number of threads. A script that never calls ``close()`` loses
    nothing: an atexit hook drains the logger (within ``close_timeout``).

    Args:
        method: ``"file"`` (default), ``"stdout"``, ``"custom"``, ``"mqtt"``, ``"smtp"``, or a list.
        custom_formatter: ``fmt(entry: dict) -> dict`` applied to each entry before encoding.
        handle_sigterm: make SIGTERM drain the logger like a normal exit. Python's default
            SIGTERM action kills the process at once, without the exit hook, so whatever was
            still queued is lost and open sessions get no close entry. With ``True`` the
            logger installs a SIGTERM handler (main thread only) that calls the handler that
            was installed before it, if any; if there was none it raises
            ``SystemExit(128 + SIGTERM)`` (exit status 143), so ``finally`` blocks and the
            exit hook run: open sessions are closed ``interrupted`` and the sinks drained
            within ``close_timeout``. A SIGTERM during ``close()`` waits for its drain, then
            takes effect; a second one during a drain kills at once. A
            SIGTERM the process ignores (``SIG_IGN``) stays ignored. ``close()`` puts the
            previous handler back.
        **kwargs: every keyword of :class:`AsyncSessionLogger` (``custom_handler=``, ``path=``,
            ``sinks=``, ``max_queue=``, ``on_error=``, ...).

    Raises:
        ConfigurationError: invalid options (``handle_sigterm=True`` outside the main thread).
        OSError: a sink could not be opened (e.g. the log file is not writable).
    """

    def __init__(
        self,
        method: str | list[str] | None = "file",
        custom_formatter: Formatter | None = None,
        *,
        handle_sigterm: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("sinks") and method == "file" and "path" not in kwargs:
            method = None  # sinks= alone means exactly those sinks
        if handle_sigterm and threading.current_thread() is not threading.main_thread():
            raise ConfigurationError(
                "handle_sigterm=True needs the logger to be created in the main thread "
                "(Python runs signal handlers there only)"
            )
        self._core = AsyncSessionLogger(method, custom_formatter, **kwargs)
        self._recorder: Recorder = self._core.recorder
        self._intake = self._core.intake
        self._portal = _LoopThread("async_session_logger.loop")
        self._portal.start()
        try:
            self._portal.call(self._core.start())
        except BaseException:
            self._portal.stop()
            raise
        self._close_lock = threading.Lock()
        self._report: DeliveryReport | None = None
        # A strong reference on purpose: a logger the script dropped without close() still has
        # entries in flight on its thread, and the exit hook must drain them.
        atexit.register(self._close_at_exit)
        self._sigterm_previous: Any = None
        self._closing = False
        self._term_during_close = False
        if handle_sigterm:
            self._install_sigterm()

    # -- the seed's API -----------------------------------------------------------------------
    def start_session(self, session_id: str, metadata: dict[str, Any] | None = None) -> None:
        """Start a session; its start entry carries ``metadata``."""
        self._recorder.start(session_id, metadata)
        if self._intake.full:
            self.wait_for_space()

    def log_entry(
        self,
        session_id: str,
        message: str,
        level: int | str = logging.INFO,
        custom_fields: dict[str, Any] | None = None,
    ) -> None:
        """Log one entry in an open session."""
        if self._recorder.log(session_id, message, level, custom_fields):
            self.wait_for_space()

    def close_session(self, session_id: str, status: str = "closed") -> None:
        """Close a session; its close entry carries ``duration_s``, ``entries``, ``status``."""
        self._recorder.close(session_id, status)
        if self._intake.full:
            self.wait_for_space()

    def save_logs(self, timeout: float | None = None) -> DeliveryReport:
        """Block until every entry logged so far is delivered (or given up) by every sink.

        Returns:
            The per-sink :class:`DeliveryReport`.

        Raises:
            WrongThreadError: called from the logger's own loop thread.
        """
        if self.closed:
            if self._report is not None:
                return self._report
            raise LoggerClosedError("the logger is closed")
        return self._portal.call(self._core.save_logs(timeout))

    # -- extras -------------------------------------------------------------------------------
    def session(self, session_id: str, metadata: dict[str, Any] | None = None) -> SessionHandle:
        """Return a ``with`` handle that starts and closes the session."""
        return SessionHandle(self, session_id, metadata)

    def close(self, timeout: float | None = None) -> DeliveryReport:
        """Close open sessions (``interrupted``), drain the sinks, stop the thread; idempotent.

        Returns within ``timeout`` (default ``close_timeout``) plus a grace of 2 s even when
        the loop thread is blocked (a sink or an async handler making a blocking call) or has
        died: the entries it could not deliver are then reported to ``on_error``.

        Raises:
            WrongThreadError: called from the logger's own loop thread.
        """
        if self._portal.in_thread:
            raise WrongThreadError(
                "SessionLogger.close() was called from the logger's own event-loop thread "
                "(e.g. from an async custom handler); it would deadlock"
            )
        with self._close_lock:
            if self._report is not None:
                return self._report
            atexit.unregister(self._close_at_exit)
            # The SIGTERM handler stays during the drain: a SIGTERM now waits for it (see
            # _on_sigterm); a second one kills.
            self._closing = True
            budget = (self._core.close_timeout if timeout is None else timeout) + CLOSE_GRACE
            join = 5.0
            try:
                self._report = self._portal.call(self._core.aclose(timeout), budget)
            except TimeoutError:
                join = 0.0  # the loop is stuck: its daemon thread is left behind
                self._report = self._abandon(
                    f"its event loop did not finish closing within {budget:g} s (a sink or an "
                    "async handler blocks the loop thread?)"
                )
            except LoggerClosedError as exc:
                self._report = self._abandon(str(exc))
            finally:
                self._portal.stop(join)
                self._restore_sigterm()
            if self._term_during_close:
                # Drained: now let the SIGTERM do what it would have done.
                signal.raise_signal(signal.SIGTERM)
            return self._report

    def _abandon(self, why: str) -> DeliveryReport:
        """Report, without the loop, what close() could not deliver; return a final report."""
        self._recorder.refuse_more()
        report = self._core._report()  # counters only: safe to read from this thread
        pending = ", ".join(f"{s.name} {s.pending}" for s in report.sinks.values())
        error = SinkError(
            f"SessionLogger.close() gave up: {why}. Not delivered: {len(self._intake)} "
            f"entries still queued for every sink, and per sink pending: {pending}",
            sink_name="*",
        )
        try:
            self._core._on_error(error)
        except Exception:  # the error handler must not turn close() into a crash
            pass
        return report

    def is_open(self, session_id: str) -> bool:
        """Whether a session with this id is open now."""
        return self._recorder.is_open(session_id)

    def stats(self) -> dict[str, Any]:
        """Counters of the logger and of each sink (see ``AsyncSessionLogger.stats``)."""
        return self._core.stats()

    def health(self) -> dict[str, Any]:
        """Whether every sink's last attempt succeeded."""
        return self._core.health()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has begun."""
        return self._closing or self._core.closed

    @property
    def recorder(self) -> Recorder:
        """The non-blocking, thread-safe half of the verbs."""
        return self._recorder

    def wait_for_space(self) -> None:
        """Wait while the queue is full (returns at once on the loop thread: it would deadlock)."""
        if not self._portal.in_thread:
            self._intake.wait_space_sync()

    def _close_at_exit(self) -> None:
        if not self.closed:
            self.close()

    # -- SIGTERM (opt-in) -----------------------------------------------------------------------
    def _install_sigterm(self) -> None:
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return  # the process ignores SIGTERM on purpose: keep it that way
        self._sigterm_previous = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._closing:
            # close() is draining: let it finish (it re-raises the signal after), and let a
            # second SIGTERM kill at once.
            self._term_during_close = True
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return
        if _inside_recorder(frame):
            # The main thread is half-way through a verb (its entry's seq taken, the entry not
            # yet queued): raising now, here or in the application's handler, would leave a
            # hole. Deliver the signal again in a moment from another thread (raise_signal()
            # would rerun this handler at once, still inside the verb); a verb takes
            # microseconds.
            retry = threading.Timer(0.001, os.kill, (os.getpid(), signum))
            retry.daemon = True
            retry.start()
            return
        previous = self._sigterm_previous
        if callable(previous):
            previous(signum, frame)  # the application's own handler decides what happens
            return
        # Python's default would kill the process now, skipping the exit hook. Exit normally
        # instead (status 128 + signum, as shells report a death by signal); a second SIGTERM
        # while the exit hook drains kills at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    def _restore_sigterm(self) -> None:
        if self._sigterm_previous is None or threading.current_thread() is not (
            threading.main_thread()
        ):
            return  # not installed, or not restorable from here (the handler still chains)
        current = signal.getsignal(signal.SIGTERM)
        # SIG_DFL: ours stood aside for a SIGTERM during the drain, which is re-raised next.
        if current == self._on_sigterm or (self._term_during_close and current == signal.SIG_DFL):
            signal.signal(signal.SIGTERM, self._sigterm_previous)
            self._sigterm_previous = None
        # else another handler was installed on top of ours and may still chain to it

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._core).replace("AsyncSessionLogger", "SessionLogger", 1)
