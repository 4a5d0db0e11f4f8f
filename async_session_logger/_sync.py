"""``SessionLogger``: the seed's synchronous API over one async core on a daemon loop thread."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from ._core import AsyncSessionLogger
from ._entry import Formatter
from ._errors import LoggerClosedError, WrongThreadError
from ._handles import SessionHandle
from ._recorder import Recorder
from ._report import DeliveryReport
from ._threads import DaemonExecutor

__all__ = ["SessionLogger"]

T = TypeVar("T")


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
        return threading.get_ident() == self._thread.ident

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result in the calling thread."""
        if self.in_thread:
            coro.close()
            raise WrongThreadError(
                "a blocking SessionLogger verb was called from the logger's own event-loop "
                "thread (e.g. from an async custom handler); it would deadlock"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.in_thread:
            self._thread.join(timeout)


class SessionLogger:
    """The seed's API for scripts and threads: plain calls, delivered in the background.

    Every verb delegates to one :class:`AsyncSessionLogger` running on a daemon event-loop
    thread that this object owns. ``log_entry`` and friends return as soon as the entry is queued
    (they wait only when ``max_queue`` entries are pending); ``save_logs()`` is a flush barrier.
    Safe to call from any number of threads. A script that never calls ``close()`` loses
    nothing: an atexit hook drains the logger (within ``close_timeout``).

    Args:
        method: ``"file"`` (default), ``"stdout"``, ``"custom"``, ``"mqtt"``, ``"smtp"``, or a list.
        custom_formatter: ``fmt(entry: dict) -> dict`` applied to each entry before encoding.
        **kwargs: every keyword of :class:`AsyncSessionLogger` (``custom_handler=``, ``path=``,
            ``sinks=``, ``max_queue=``, ``on_error=``, ...).

    Raises:
        ConfigurationError: invalid options.
        OSError: a sink could not be opened (e.g. the log file is not writable).
    """

    def __init__(
        self,
        method: str | list[str] | None = "file",
        custom_formatter: Formatter | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("sinks") and method == "file" and "path" not in kwargs:
            method = None  # sinks= alone means exactly those sinks
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
        if self._core.closed:
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
            try:
                self._report = self._portal.call(self._core.aclose(timeout))
            finally:
                self._portal.stop()
            return self._report

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
        return self._core.closed

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
