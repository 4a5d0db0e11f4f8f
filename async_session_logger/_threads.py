"""A daemon-thread executor for blocking I/O that keeps working during interpreter exit.

``ThreadPoolExecutor`` refuses new work once ``threading._shutdown`` has run, which is before
``atexit`` handlers: the atexit drain of a script that forgot ``close()`` would then fail to write
its files. These threads are daemons, so a hung write can never keep the process alive either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from ._context import mark_thread_internal

__all__ = ["DaemonExecutor", "Worker", "WorkerBusyError", "io_executor", "run_blocking"]

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """Run callables on up to ``max_workers`` daemon threads, started on demand.

    A ``ThreadPoolExecutor`` subclass only because ``loop.set_default_executor`` accepts
    nothing else (the sync facade's loop uses one, so that aiomqtt's connect and getaddrinfo
    keep working during the exit drain); none of the parent's machinery is used.
    """

    def __init__(self, max_workers: int = 4, name: str = "async_session_logger.io") -> None:
        super().__init__(max_workers=1)  # sets the parent's attributes; no thread is started
        self._max_workers = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._daemons: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)``."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        inline = False
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            self._jobs.put((future, fn, args, kwargs))
            if self._idle == 0 and len(self._daemons) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}[{len(self._daemons)}]", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:
                    # Python 3.12+ starts no thread once the interpreter is shutting down,
                    # when the exit drain runs: with no thread of ours alive, the caller's
                    # thread does the work (a dead letter written late beats one lost).
                    inline = not any(daemon.is_alive() for daemon in self._daemons)
                else:
                    self._daemons.append(thread)
        if inline:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    _run(job)
        return future

    def _work(self) -> None:
        mark_thread_internal()
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            _run(job)
            del job

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers after the queued jobs."""
        with self._lock:
            self._closed = True
            for _ in self._daemons:
                self._jobs.put(None)
        if wait:
            for thread in self._daemons:
                thread.join()


def _run(job: _Job) -> None:
    future, fn, args, kwargs = job
    if future.set_running_or_notify_cancel():
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)


_executor: DaemonExecutor | None = None
_executor_lock = threading.Lock()


def io_executor() -> DaemonExecutor:
    """Return the process-wide executor for blocking file and stream I/O."""
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = DaemonExecutor()
    return _executor


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` on the I/O executor and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(io_executor(), lambda: fn(*args, **kwargs))


class WorkerBusyError(OSError):
    """A :class:`Worker`'s earlier call has not returned: the new one was not started."""


class Worker:
    """One daemon thread of a sink's own (or the dead-letter file's) for its blocking I/O.

    A call that never returns (a pipe whose reader stalls, a hung mount) holds this thread
    only: the owner's next calls fail at once (see :meth:`run`), so its lane retries and
    dead-letters, while every other sink and the dead-letter file keep their own threads. On
    the shared :func:`io_executor` such calls once took all four threads, one per retry: the
    other sinks stopped and the dead letters were lost. Its owner calls it one call at a time
    (a lane delivers in sequence).

    The thread starts on the first call; :meth:`stop` lets it end (after a call in progress
    returns); a forked child starts a thread of its own.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: DaemonExecutor | None = None
        self._pid = 0
        self._running: concurrent.futures.Future[Any] | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this worker's thread and await its result.

        Raises:
            WorkerBusyError: (an ``OSError``, ``EBUSY``) at once while an earlier call still
                runs, and ``fn`` is not called. Its caller gave up
                on it (a lane's ``timeout``): it is stuck in a stalled pipe or a hung mount,
                and a call queued behind it would only time out in turn.
        """
        executor = self._executor
        if executor is None or self._pid != os.getpid():
            executor = self._executor = DaemonExecutor(max_workers=1, name=self.name)
            self._pid = os.getpid()
            self._running = None
        running = self._running
        if running is not None and not running.done():
            raise WorkerBusyError(
                errno.EBUSY,
                f"an earlier call on the thread {self.name!r} has not returned "
                "(a stalled reader or a hung filesystem?)",
            )
        future = self._running = executor.submit(fn, *args)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        """Let the thread end once it is idle; the next :meth:`run` starts another."""
        executor, self._executor = self._executor, None
        if executor is not None and self._pid == os.getpid():  # a parent's: nothing to stop
            executor.shutdown(wait=False)


def _forget_executor() -> None:
    # A forked child has none of the parent's worker threads, but the copied executor would
    # count them as idle and never start one: its jobs would wait forever.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_executor)
