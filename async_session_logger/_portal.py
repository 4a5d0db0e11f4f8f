"""An event loop in a daemon thread for synchronous callers (as anyio's blocking portal)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._context import internal_context, mark_thread_internal
from ._errors import LoggerClosedError, WrongThreadError
from ._threads import DaemonExecutor

__all__ = ["Portal", "close_loop", "private_loop"]

T = TypeVar("T")


def private_loop() -> asyncio.AbstractEventLoop:
    """A new event loop whose default executor is a :class:`DaemonExecutor`.

    So that ``run_in_executor(None, ...)`` (aiomqtt's connect, ``getaddrinfo``) keeps working
    during interpreter exit, when the standard executors refuse work.
    """
    loop = asyncio.new_event_loop()
    loop.set_default_executor(DaemonExecutor(8, "async_session_logger.loop-executor"))
    return loop


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks ``loop`` still runs, wait for them and its async generators; close it."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class Portal:
    """Run coroutines on a private event loop in a daemon thread and wait for their results.

    The loop is a :func:`private_loop`.
    """

    def __init__(self, name: str) -> None:
        self.loop = private_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        try:
            self._thread.start()
        except BaseException:  # 3.12+ at interpreter shutdown: "can't create new thread"
            self.loop.close()
            raise
        self._started.wait()

    def _run(self) -> None:
        mark_thread_internal()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            close_loop(self.loop)

    @property
    def in_thread(self) -> bool:
        """Whether the caller runs on the portal's loop thread."""
        # Identity, not get_ident(): idents are reused once a thread ends.
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return its future.

        Raises:
            WrongThreadError: called from the loop thread itself (waiting would deadlock).
            LoggerClosedError: the loop thread has stopped.
        """
        if self.in_thread:
            coro.close()
            raise WrongThreadError(
                "a blocking SessionLogger verb was called from the logger's own event-loop "
                "thread (e.g. from an async custom handler); it would deadlock"
            )
        if not self._thread.is_alive():
            coro.close()
            raise LoggerClosedError("the logger's event-loop thread has stopped")
        try:
            # Scheduled from a fresh internal context, not the caller's: the task (and the
            # sinks' tasks it starts) must not run in the caller's current session.
            return internal_context().run(asyncio.run_coroutine_threadsafe, coro, self.loop)
        except RuntimeError as exc:  # the loop closed since the check above
            coro.close()
            raise LoggerClosedError("the logger's event-loop thread has stopped") from exc

    def wait(self, future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
        """Wait for ``future`` in the calling thread.

        Raises:
            LoggerClosedError: the loop thread stopped without resolving it.
            TimeoutError: ``timeout`` expired (the coroutine keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # In slices, so that a loop thread that dies without resolving the future cannot
            # leave the caller waiting forever.
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

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (see :meth:`submit`, :meth:`wait`)."""
        return self.wait(self.submit(coro), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread (at most ``timeout`` seconds)."""
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.in_thread:
            self._thread.join(timeout)
