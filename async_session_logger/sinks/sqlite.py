"""``SqliteSink``: entries straight into a queryable SQLite store file (stdlib ``sqlite3``)."""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, TypeVar

from .._context import mark_thread_internal
from ..store.schema import StoreError, StoreVersionError
from ..store.sqlite import SqliteStore, check_not_link
from ._base import Batch, PartialWriteError, Sink

__all__ = ["SqliteSink"]

T = TypeVar("T")
_Job = tuple[Callable[[], Any], asyncio.Future[Any]]
# How long a fork waits for a sink's transaction in progress to end (then it goes ahead).
_FORK_WAIT: Final = 10.0
_live: weakref.WeakSet[SqliteSink] = weakref.WeakSet()
_held: list[SqliteSink] = []


def _before_fork() -> None:
    """Let no transaction be in progress at a fork (see ``SqliteSink._idle``)."""
    for sink in list(_live):
        if sink._idle.acquire(timeout=_FORK_WAIT):
            _held.append(sink)


def _after_fork() -> None:
    # In the child too: the lock was copied held, by a thread the child does not have.
    while _held:
        _held.pop()._idle.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class SqliteSink(Sink):
    """Store every entry in an SQLite file: the ``entries`` and ``sessions`` tables.

    Args:
        path: the database file; created with the schema when missing, migrated when older.
        busy_timeout: seconds a batch waits for another process's write lock.
        synchronous: SQLite's ``synchronous`` pragma (``NORMAL``: durable in WAL mode except
            for the last batches before a power loss; ``FULL``: each batch is on the disk).
        mkdir: create missing parent directories.
        **options: the lane options of :class:`Sink` (``name``, ``min_level``, ``timeout`` ...).

    The file is opened in WAL mode, so readers (the CLI) never block the writer. Every call
    runs on the sink's own daemon thread: one transaction per batch, the event loop never
    waits on the disk. Writes are idempotent: a retried or replayed batch adds nothing twice.
    A symlink at the path, or a file that is not a database, fails the batches (retried,
    reported, dead-lettered) without stopping the application; a store made by a newer
    version of the library is refused at start-up (:class:`StoreVersionError`).
    """

    default_name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        mkdir: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.mkdir = mkdir
        self._store: SqliteStore | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Connections a forked child inherited: never closed there (the parent's to close).
        self._inherited: list[SqliteStore] = []
        # Held by the thread while it works on the database, and by a fork around it: a child
        # forked in the middle of a transaction would inherit SQLite's in-process record of
        # that transaction's locks, which no thread of the child ever releases, and its own new
        # connection to the file would wait on them and fail with "database is locked".
        self._idle = threading.Lock()
        _live.add(self)

    # -- the thread ---------------------------------------------------------------------------
    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"async_session_logger.sqlite[{self.name}]", daemon=True
            )
            self._thread.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        # Shielded: a lane timeout must not leave the thread's result unobserved.
        return await asyncio.shield(future)

    def _work(self) -> None:
        mark_thread_internal()  # what sqlite3 might log through stdlib is not fed back
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            try:
                with self._idle:
                    result: Any = fn()
            except BaseException as exc:  # delivered to the caller, never kills the thread
                _settle(future, None, exc)
            else:
                _settle(future, result, None)
            del job, fn, future

    def owns_current_thread(self) -> bool:
        """Whether the caller is this sink's database thread."""
        thread = self._thread
        return thread is not None and threading.current_thread() is thread

    # -- the store ----------------------------------------------------------------------------
    def _connect(self) -> SqliteStore:
        if self._store is None:
            if self.mkdir:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._store = SqliteStore(
                self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous
            )
        return self._store

    def _write(self, lines: list[bytes]) -> list[int]:
        try:
            check_not_link(self.path)  # again per batch: a link may be planted later
            return self._connect().write(lines)
        except sqlite3.DatabaseError as exc:
            # Reopen for the retry: the file may have been replaced or repaired meanwhile.
            self._drop()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(f"{self.path} is not an SQLite database ({exc})") from exc
            raise
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            finally:
                self._store = None

    async def open(self) -> None:
        """Open (create, migrate) the store; refuse one made by a newer library version.

        Raises:
            StoreVersionError: the file was made by a newer version of the library.
            OSError, sqlite3.Error: the file cannot be opened (a missing directory with
                ``mkdir=False``, no permission).
        """
        try:
            await self._call(self._connect)
        except StoreVersionError:
            raise
        except (StoreError, OSError) as exc:
            # A planted link or a damaged file is not a configuration mistake: it must not
            # stop the application. Each batch tries again, fails, and is dead-lettered.
            if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
                raise  # a missing directory, no permission: the caller can fix it

    async def write_batch(self, batch: Batch) -> None:
        """Store the batch in one transaction (entries no store can key fail alone)."""
        lines = batch.lines()
        failed = await self._call(lambda: self._write(lines))
        if failed:
            raise PartialWriteError(
                failed, StoreError("entry is not a schema-v1 entry (no session_id, seq or event)")
            )

    async def close(self) -> None:
        """Close the connection and end the thread."""
        if self._thread is not None:
            await self._call(self._drop)
            self._jobs.put(None)
            self._thread = None

    def reset(self) -> None:
        """Forget the thread and connection (a forked child's copy is left unclosed)."""
        if self._store is not None:
            self._inherited.append(self._store)
            self._store = None
        if self._thread is not None:
            self._jobs.put(None)  # ends a live worker; a forked child has none
            self._thread = None
        self._jobs = queue.SimpleQueue()

    def __repr__(self) -> str:
        return f"<SqliteSink {self.name!r} path={self.path!r}>"


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        future.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:  # the loop closed while the job ran
        pass
