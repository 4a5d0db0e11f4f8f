"""``FileSink``: JSON Lines appended with aiofiles, one write per batch and per file."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

import aiofiles

from .._errors import ConfigurationError
from .._threads import io_executor
from ._base import Batch, PartialWriteError, Sink

if TYPE_CHECKING:
    from aiofiles.threadpool.binary import AsyncFileIO

__all__ = ["DEFAULT_PATH", "FileSink"]

DEFAULT_PATH: Final = "log_{date}.jsonl"
_MAX_OPEN: Final = 64


class FileSink(Sink):
    """Append entries as JSON Lines to a file chosen per entry by a path template.

    Args:
        path: file path; ``{date}`` becomes the entry's UTC date (``YYYY-MM-DD``) and
            ``{session_id}`` its session id, so one template can split files by day or session.
            Default: ``log_{date}.jsonl`` in the working directory.
        mkdir: create missing parent directories.
        **options: the lane options of :class:`Sink` (``name``, ``min_level``, ``timeout`` ...).

    Files are opened in append mode without Python buffering: each batch becomes one ``write``
    per file, appended atomically by the OS with ``O_APPEND``.
    """

    default_name = "file"

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_PATH, *, mkdir: bool = True, **options: Any
    ) -> None:
        super().__init__(**options)
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
        if len(self._files) > _MAX_OPEN:
            _, oldest = self._files.popitem(last=False)
            await oldest.close()
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
        try:
            while done < len(data):
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
