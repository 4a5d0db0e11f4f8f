"""``StdoutSink``: one JSON line per entry on standard output (or another stream)."""

from __future__ import annotations

import sys
from typing import IO, Any

from .._threads import run_blocking
from ._base import Batch, Sink

__all__ = ["StdoutSink"]


class StdoutSink(Sink):
    """Write each entry as one JSON line to ``stream`` (default: ``sys.stdout`` at write time).

    The write runs in a worker thread so a slow terminal or a full pipe never stalls the loop.
    """

    default_name = "stdout"

    def __init__(self, stream: IO[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.stream = stream

    async def write_batch(self, batch: Batch) -> None:
        """Write the batch's lines and flush."""
        await run_blocking(self._write, batch.data)

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
