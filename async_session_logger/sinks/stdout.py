"""``StdoutSink``: one JSON line per entry on standard output (or another stream)."""

from __future__ import annotations

import sys
from typing import IO, Any

from .._threads import Worker
from ._base import Batch, Sink

__all__ = ["StdoutSink"]


class StdoutSink(Sink):
    """Write each entry as one JSON line to ``stream`` (default: ``sys.stdout`` at write time).

    The write runs in a thread of the sink's own, so a slow terminal or a full pipe never
    stalls the loop, and a pipe whose reader stalls for good (a paused ``| less``, a blocking
    container log driver) holds that thread only: the lane's ``timeout`` fails the write and
    its retries, the entries are dead-lettered, and the other sinks go on.
    """

    default_name = "stdout"

    def __init__(self, stream: IO[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.stream = stream
        self._worker = Worker(f"async_session_logger.{self.name}")

    async def write_batch(self, batch: Batch) -> None:
        """Write the batch's lines and flush."""
        await self._worker.run(self._write, batch.data)

    async def close(self) -> None:
        """Let the sink's thread end."""
        self._worker.stop()

    def reset(self) -> None:
        """Let the thread end (a new loop or a forked child starts another on first write)."""
        self._worker.stop()

    def _write(self, data: bytes) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            stream.flush()  # keep order with text the program printed before
            binary.write(data)
            binary.flush()
        else:
            stream.write(data.decode("utf-8"))
            stream.flush()
