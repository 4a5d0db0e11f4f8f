"""``FileSink``: JSON Lines appended with aiofiles, one write per batch and per file."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, Literal

import aiofiles

from .._errors import ConfigurationError
from .._threads import io_executor
from ._base import Batch, PartialWriteError, Sink

if TYPE_CHECKING:
    from aiofiles.threadpool.binary import AsyncFileIO

__all__ = ["DEFAULT_PATH", "FileSink"]

DEFAULT_PATH: Final = "log_{date}.jsonl"
_MAX_OPEN: Final = 64
# A direct write of this much to the page cache takes ~50 us; the sink yields between chunks.
_CHUNK: Final = 256 * 1024

WriteMode = Literal["auto", "direct", "thread"]


class FileSink(Sink):
    """Append entries as JSON Lines to a file chosen per entry by a path template.

    Args:
        path: file path; ``{date}`` becomes the entry's UTC date (``YYYY-MM-DD``) and
            ``{session_id}`` its session id, so one template can split files by day or session.
            Default: ``log_{date}.jsonl`` in the working directory.
        mkdir: create missing parent directories.
        write_mode: ``"thread"`` hands every write to a worker thread through aiofiles;
            ``"direct"`` writes from the event loop in 256 KiB chunks, yielding between them;
            ``"auto"`` (default) writes regular files directly and anything else (FIFOs,
            devices) through a thread. Opening and closing always go through aiofiles.
        **options: the lane options of :class:`Sink` (``name``, ``min_level``, ``timeout`` ...).

    Files are opened in append mode without Python buffering: each batch becomes one ``write``
    per file (per chunk in direct mode), appended by the OS with ``O_APPEND``.

    Why direct writes: a write of a few hundred KiB to the page cache costs tens of
    microseconds, while a thread hop needs the GIL back from the loop thread; in a loop kept
    busy by the application that hand-back was measured to starve for seconds (the CPython
    GIL convoy effect), so the sink's backlog grew without bound. On a network filesystem,
    where a write can block for long, choose ``write_mode="thread"``.
    """

    default_name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        mkdir: bool = True,
        write_mode: WriteMode = "auto",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if write_mode not in ("auto", "direct", "thread"):
            raise ConfigurationError(
                f"write_mode must be 'auto', 'direct' or 'thread', got {write_mode!r}"
            )
        self.write_mode = write_mode
        self.path = os.fspath(path)
        try:
            self.path.format(date="2000-01-01", session_id="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigurationError(
                f"path {self.path!r} may only use the placeholders {{date}} and {{session_id}}"
            ) from exc
        self.mkdir = mkdir
        self._per_date = "{date}" in self.path
        self._per_session = "{session_id}" in self.path
        self._files: OrderedDict[str, AsyncFileIO] = OrderedDict()
        self._direct: dict[str, bool] = {}
        self._torn: set[str] = set()

    def path_for(self, entry: dict[str, Any]) -> str:
        """Return the file an entry goes to."""
        if not (self._per_date or self._per_session):
            return self.path
        stamp = entry.get("timestamp")
        date = stamp[:10] if isinstance(stamp, str) else time.strftime("%Y-%m-%d", time.gmtime())
        return self.path.format(date=date, session_id=entry.get("session_id", "_unknown"))

    async def open(self) -> None:
        """Open the file now when its name does not depend on entries (errors surface early)."""
        if not self._per_session:
            await self._file(self.path_for({}))

    async def _file(self, path: str) -> AsyncFileIO:
        fh = self._files.get(path)
        if fh is not None:
            self._files.move_to_end(path)
            return fh
        if self.mkdir:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
        fh = await aiofiles.open(path, "ab", buffering=0, executor=io_executor())
        self._files[path] = fh
        if self.write_mode == "auto":
            self._direct[path] = stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
        else:
            self._direct[path] = self.write_mode == "direct"
        if len(self._files) > _MAX_OPEN:
            await self._forget(next(iter(self._files)))
        return fh

    async def write_batch(self, batch: Batch) -> None:
        """Append the batch, one write per file."""
        if not (self._per_date or self._per_session):
            await self._write(self.path, batch)
            return
        groups: dict[str, list[int]] = {}
        for i, entry in enumerate(batch.entries):
            groups.setdefault(self.path_for(entry), []).append(i)
        failed: list[int] = []
        first_error: BaseException | None = None
        for path, indices in groups.items():
            part = batch if len(groups) == 1 else batch.select(indices)
            try:
                await self._write(path, part)
            except PartialWriteError as exc:
                failed.extend(indices[i] for i in exc.failed)
                first_error = first_error or exc.cause
            except OSError as exc:
                failed.extend(indices)
                first_error = first_error or exc
        if first_error is not None:
            raise PartialWriteError(sorted(failed), first_error)

    async def _write(self, path: str, batch: Batch) -> None:
        fh = await self._file(path)
        # After a write that stopped mid-line, end that fragment so it cannot glue onto ours.
        prefix = b"\n" if path in self._torn else b""
        data = memoryview(prefix + batch.data if prefix else batch.data)
        done = 0
        direct = self._direct[path]
        fd = fh.fileno()
        try:
            while done < len(data):
                if direct:
                    done += os.write(fd, data[done : _chunk_end(data, done)])
                    if done < len(data):
                        await asyncio.sleep(0)
                else:
                    done += await fh.write(data[done:]) or 0
        except OSError as exc:
            await self._forget(path)
            written = done - len(prefix)
            if written <= 0:
                raise
            # Keep the entries whose whole line reached the file; the lane retries the rest.
            if batch.data[written - 1 : written] == b"\n":
                self._torn.discard(path)
            else:
                self._torn.add(path)
            complete = batch.data.count(b"\n", 0, written)
            raise PartialWriteError(range(complete, len(batch)), exc) from exc
        self._torn.discard(path)

    async def _forget(self, path: str) -> None:
        self._direct.pop(path, None)
        fh = self._files.pop(path, None)
        if fh is not None:
            try:
                await fh.close()
            except OSError:
                pass

    async def close(self) -> None:
        """Close every open file."""
        for path in list(self._files):
            await self._forget(path)

    def __repr__(self) -> str:
        return f"<FileSink {self.name!r} path={self.path!r}>"


def _chunk_end(data: memoryview, start: int) -> int:
    """Return where the chunk from ``start`` ends: after the last whole line within _CHUNK.

    Each O_APPEND write lands whole, so cutting only between lines keeps another process's
    writes from landing inside one of ours. A single line longer than _CHUNK goes whole.
    """
    end = start + _CHUNK
    if end >= len(data):
        return len(data)
    cut = bytes(data[start:end]).rfind(b"\n")
    if cut >= 0:
        return start + cut + 1
    nxt = bytes(data[end:]).find(b"\n")
    return len(data) if nxt < 0 else end + nxt + 1
