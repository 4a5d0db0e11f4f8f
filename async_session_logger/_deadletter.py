"""The dead-letter file: entries a sink gave up on, with the sink's name and the reason."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import orjson

from ._entry import format_timestamp
from ._oswrite import write_all
from ._threads import run_blocking
from .sinks._base import Batch

__all__ = ["DeadLetters", "read_dead_letters"]


class DeadLetters:
    """Append dead letters as JSON Lines: ``{"sink", "reason", "failed_at", "entry"}``.

    The file is created on the first dead letter only. Writes run in a worker thread (one
    append per batch) and are serialized.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._lock = asyncio.Lock()

    async def write(self, sink_name: str, reason: str, batch: Batch) -> bool:
        """Append the batch's entries; return False when they could not be kept."""
        if self.path is None or not len(batch):
            return False
        head = orjson.dumps(
            {"sink": sink_name, "reason": reason, "failed_at": format_timestamp(time.time_ns())}
        )[:-1]
        prefix = head + b',"entry":'
        data = b"".join(prefix + line + b"}\n" for line in batch.lines())
        async with self._lock:
            try:
                await run_blocking(_append, self.path, data)
            except OSError:
                return False
        return True


def _append(path: str, data: bytes) -> None:
    """Append ``data`` whole, or leave the file as it was and raise.

    All or nothing because the lane counts a failed batch as lost: letters left behind by a
    write that ran out of space part-way would be counted lost and yet be in the file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
