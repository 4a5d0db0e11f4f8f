"""``CustomSink``: the seed's ``custom_handler(message: str)``, plain or async."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._context import mark_thread_internal
from .._errors import ConfigurationError
from ._base import Batch, PartialWriteError, Sink

__all__ = ["CustomHandler", "CustomSink"]

CustomHandler = Callable[[str], Any] | Callable[[str], Awaitable[Any]]


class CustomSink(Sink):
    """Call ``handler(message)`` once per entry with the entry's JSON line (a str).

    Async handlers are awaited in order on the loop. Plain handlers run in a dedicated daemon
    thread, a batch per hop, so a slow handler never blocks the event loop and a hung one can
    neither block the other sinks nor keep the process from exiting. An exception raised for one
    entry fails only that entry (it is retried, then dead-lettered). (Where no thread can be
    started, as on Python 3.12+ during the exit drain, a plain handler is called on the loop.)
    """

    default_name = "custom"
    default_overflow = "dead_letter"
    default_timeout = 10.0

    def __init__(self, handler: CustomHandler, **options: Any) -> None:
        if not callable(handler):
            raise ConfigurationError(f"custom_handler must be callable, got {handler!r}")
        options.setdefault("name", getattr(handler, "__name__", None) or self.default_name)
        if options["name"] == "<lambda>":
            options["name"] = self.default_name
        super().__init__(**options)
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - objects with async __call__
        )
        self._jobs: queue.SimpleQueue[tuple[list[bytes], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._idle: asyncio.Future[Any] | None = None

    async def write_batch(self, batch: Batch) -> None:
        """Hand each entry's line to the handler; raise for the entries it failed on."""
        lines = batch.lines()
        if self.is_async:
            failed, error = await self._run_async(lines)
        else:
            failed, error = await self._run_in_thread(lines)
        if error is not None:
            raise PartialWriteError(failed, error)

    async def _run_async(self, lines: list[bytes]) -> tuple[list[int], BaseException | None]:
        failed: list[int] = []
        error: BaseException | None = None
        task = asyncio.current_task()
        for i, line in enumerate(lines):
            try:
                await self.handler(line.decode("utf-8"))
            except _HANDLER_ERRORS as exc:
                failed.append(i)
                error = error or exc
            except asyncio.CancelledError as exc:
                if task is None or task.cancelling():
                    raise  # the lane is being cancelled (close deadline, loop shutdown)
                # The handler raised CancelledError by itself: that entry failed, the lane
                # lives on.
                failed.append(i)
                error = error or exc
            if i % 256 == 255:
                # A handler that never suspends would otherwise hold the loop for a whole batch.
                await asyncio.sleep(0)
        return failed, error

    async def _run_in_thread(self, lines: list[bytes]) -> tuple[list[int], BaseException | None]:
        if self._idle is not None and not self._idle.done():
            # The previous call is still running (it timed out): wait for it, under the lane's
            # timeout, rather than queueing behind a hung handler.
            await asyncio.shield(self._idle)
        if self._thread is None:
            thread = threading.Thread(
                target=self._worker, name=f"async_session_logger.custom[{self.name}]", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                # Python 3.12+ starts no thread once the interpreter is shutting down, when
                # the exit drain runs: the handler is called from here rather than not at all.
                return self._call_each(lines)
            self._thread = thread
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[list[int], BaseException | None]] = loop.create_future()
        self._idle = future
        self._jobs.put((lines, future))
        return await asyncio.shield(future)

    def _worker(self) -> None:
        mark_thread_internal()  # what the handler logs through stdlib is not fed back
        while True:
            job = self._jobs.get()
            if job is None:
                return
            lines, future = job
            outcome = self._call_each(lines)
            loop = future.get_loop()
            try:
                loop.call_soon_threadsafe(_resolve, future, outcome)
            except RuntimeError:  # loop closed while the handler ran
                return

    def _call_each(self, lines: list[bytes]) -> tuple[list[int], BaseException | None]:
        failed: list[int] = []
        error: BaseException | None = None
        for i, line in enumerate(lines):
            try:
                self.handler(line.decode("utf-8"))
            except _HANDLER_ERRORS as exc:
                failed.append(i)
                error = error or exc
        return failed, error

    def owns_current_thread(self) -> bool:
        """Whether the caller is this sink's handler thread."""
        thread = self._thread
        return thread is not None and threading.current_thread() is thread

    def reset(self) -> None:
        """Start with a new job queue; a worker of the old one is told to end."""
        if self._thread is not None:
            self._jobs.put(None)  # ends a live worker; a forked child has none
            self._thread = None
        self._jobs = queue.SimpleQueue()
        self._idle = None

    async def close(self) -> None:
        """Stop the worker thread (a hung handler is left behind as a daemon thread)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def __repr__(self) -> str:
        return f"<CustomSink {self.name!r} handler={self.handler!r}>"


# A handler that raises SystemExit or KeyboardInterrupt has failed like any other: uncaught,
# either would kill the logger's loop thread (and every sink with it).
_HANDLER_ERRORS: Final = (Exception, SystemExit, KeyboardInterrupt)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
