"""The dead-letter file: entries a sink gave up on, with the sink's name and the reason."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any, Final

import orjson

from ._entry import format_timestamp
from ._oswrite import write_all
from ._threads import Worker
from .sinks._base import Batch

__all__ = ["DeadLetters", "read_dead_letters"]


# A dead-letter append that takes longer than this is given up (a hung network mount must not
# hold the lane, or close(), forever); its entries are counted lost and reported.
WRITE_TIMEOUT: Final = 5.0


class DeadLetters:
    """Append dead letters as JSON Lines: ``{"sink", "reason", "failed_at", "entry"}``.

    The file is created on the first dead letter only. Writes run in a worker thread (one
    append per batch), are serialized, and are bounded in time: while a write that timed out
    is still stuck in its thread, later writes fail at once instead of piling up behind it.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.last_error: str | None = None
        self._stuck: asyncio.Future[None] | None = None
        # A thread of its own: a sink's I/O stuck in the shared threads cannot starve it.
        self._worker = Worker("async_session_logger.dead-letters")
        self.bind()

    def bind(self) -> None:
        """Make the lock anew for a new event loop (or a forked child)."""
        self._lock = asyncio.Lock()
        self._stuck = None

    def stop(self) -> None:
        """Let the writing thread end (the logger closed; a later write starts another)."""
        self._worker.stop()

    async def write(
        self, sink_name: str, reason: str, batch: Batch, timeout: float | None = None
    ) -> bool:
        """Append the batch's entries; return False when they could not be kept.

        Args:
            timeout: seconds the append may take (default ``WRITE_TIMEOUT``).
        """
        if self.path is None or not len(batch):
            return False
        if self._stuck is not None:
            if not self._stuck.done():
                self.last_error = "an earlier dead-letter write is still stuck in the filesystem"
                return False
            self._stuck = None
        head = orjson.dumps(
            {"sink": sink_name, "reason": reason, "failed_at": format_timestamp(time.time_ns())}
        )[:-1]
        prefix = head + b',"entry":'
        data = b"".join(prefix + line + b"}\n" for line in batch.lines())
        limit = WRITE_TIMEOUT if timeout is None else max(0.05, timeout)
        async with self._lock:
            job = asyncio.ensure_future(self._worker.run(_append, self.path, data))
            try:
                await asyncio.wait_for(asyncio.shield(job), limit)
            except TimeoutError:
                self._stuck = job
                job.add_done_callback(_consume)
                self.last_error = (
                    f"the dead-letter write did not finish within {limit:g} s (a hung "
                    "filesystem?); if it ever finishes, these entries appear in the file too"
                )
                return False
            except OSError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
        return True


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" at exit


def _append(path: str, data: bytes) -> None:
    """Append ``data`` whole, or leave the file as it was and raise.

    All or nothing because the lane counts a failed batch as lost: letters left behind by a
    write that ran out of space part-way would be counted lost and yet be in the file.
    """
    # O_NOFOLLOW: a link planted at the predictable dead_letters.jsonl must not be written
    # through (the library often runs as root); the entries are then counted lost, reported.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        start = os.fstat(fd).st_size
        done, error = write_all(fd, data)
        if error is not None:
            # Undo only our own bytes: if another writer appended since, leave the file alone.
            if done and os.fstat(fd).st_size == start + done:
                os.ftruncate(fd, start)
            raise error
    finally:
        os.close(fd)


def read_dead_letters(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield each dead letter of ``path`` (``sink``, ``reason``, ``failed_at``, ``entry``)."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line after a crash
