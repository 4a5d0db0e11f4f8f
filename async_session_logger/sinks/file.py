"""``FileSink``: JSON Lines appended per batch, with rotation, retention, gzip, fsync and reopen."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import time
from collections.abc import Callable
from typing import Any, Final, Literal

from .._errors import ConfigurationError, InvalidSessionIdError
from .._threads import Worker
from .._validate import check_session_id
from . import _flock, _rotation
from ._base import Batch, PartialWriteError, Sink
from ._file_upkeep import (
    FsyncMode,
    Housekeeper,
    RotateEvery,
    RotationPolicy,
    Syncer,
    line_cut,
    parse_fsync,
    sink_reporter,
)
from ._flock import LOCK_WAIT_S
from ._live_files import LiveFile, LiveFiles, NoReaderError

__all__ = ["DEFAULT_PATH", "FileSink"]

DEFAULT_PATH: Final = "log_{date}.jsonl"
# A direct write of this much to the page cache takes ~50 us. The sink writes chunks back to
# back for up to _SLICE_S, then yields: the loop's lag stays ~1 ms, and in a loop busy with many
# tasks (one turn of the lane per pass over all of them) a turn still writes megabytes.
_CHUNK: Final = 256 * 1024
_SLICE_S: Final = 0.001

WriteMode = Literal["auto", "direct", "thread"]
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}\Z", re.ASCII)


async def _writable(fd: int) -> None:
    """Wait until a non-blocking ``fd`` (a FIFO, a socket, a device) takes more bytes."""
    loop = asyncio.get_running_loop()
    room: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not room.done():
            room.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await room
    finally:
        loop.remove_writer(fd)


class FileSink(Sink):
    """Append entries as JSON Lines to a file chosen per entry by a path template.

    Args:
        path: file path; ``{date}`` becomes the entry's UTC date (``YYYY-MM-DD``) and
            ``{session_id}`` its session id, so one template can split files by day or session.
            Default: ``log_{date}.jsonl`` in the working directory.
        mkdir: create missing parent directories.
        write_mode: ``"direct"`` writes from the event loop in 256 KiB chunks, yielding
            every ~1 ms; a FIFO, socket or device is written non-blocking, the sink waiting
            on the loop (never in a thread) while its reader is behind. ``"thread"`` hands
            every write (and the ``reopen`` stat) to the sink's thread, blocking there.
            ``"auto"`` (default) is ``"thread"`` for a file on a network or FUSE filesystem
            (NFS, SMB, sshfs...: a write can wait for a server that does not answer, and on
            the loop it would stop the whole application) and ``"direct"`` for any other.
            Opening and closing always go through the sink's thread; a FIFO with no reader
            fails at once (the lane retries, reports and dead-letters as for any failed
            write).
        rotate_bytes: before a batch would take a file past this size, rename the file to
            ``<stem>.<UTC stamp>.<ext>`` and start a new one. A batch larger than this is cut
            between lines; a single line larger than this still goes whole into a file.
        rotate_every: rotate at each UTC ``"hourly"`` or ``"daily"`` boundary, or every N
            seconds counted from the epoch (aligned to UTC too when N divides a day).
        keep: how many rotated files of each live file to keep (the newest); None: all.
        max_age: delete rotated files rotated longer ago than this (seconds or a timedelta).
        compress: ``"gzip"`` compresses each rotated file to ``.gz`` on a worker thread.
        fsync: ``"never"`` (default: the OS writes back in its own time), ``"batch"`` (each
            batch is flushed to the disk before it counts as delivered) or N seconds (flushed
            in the background at most every N seconds, and at close).
        reopen: check before each batch (one ``stat``) that the path still names the open
            file, and open the path again if the file was deleted or renamed (logrotate,
            ``rm``). Always on while rotating.
        **options: the lane options of :class:`Sink` (``name``, ``min_level``, ``timeout`` ...).

    Files are opened in append mode without Python buffering: each batch becomes one ``write``
    per file (per chunk in direct mode), appended by the OS with ``O_APPEND``. Rotation, its
    cross-process lock and its naming are described in ``docs/files.md``.

    Why direct writes: a write of a few hundred KiB to the page cache costs tens of
    microseconds, while a thread hop needs the GIL back from the loop thread; in a loop kept
    busy by the application that hand-back was measured to starve for seconds (the CPython
    GIL convoy effect), so the sink's backlog grew without bound. On a network or FUSE
    filesystem, where a write can block for as long as a server takes to answer, ``"auto"``
    writes on the sink's thread instead.
    """

    default_name = "file"

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        mkdir: bool = True,
        write_mode: WriteMode = "auto",
        rotate_bytes: int | None = None,
        rotate_every: RotateEvery | None = None,
        keep: int | None = None,
        max_age: float | dt.timedelta | None = None,
        compress: Literal["gzip"] | None = None,
        fsync: FsyncMode = "never",
        reopen: bool = True,
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
        self.rotation = RotationPolicy(rotate_bytes, rotate_every, keep, max_age, compress)
        self.reopen = reopen or self.rotation.enabled
        self._fsync = parse_fsync(fsync)
        # Seconds since the epoch, for rotation times and stamps (tests set their own clock).
        self._clock: Callable[[], float] = time.time
        # The sink's own thread for its blocking file calls: a hung mount or a stalled reader
        # holds it, not the threads of the other sinks and the dead-letter file.
        self._worker = Worker(f"async_session_logger.{self.name}")
        self._build()
        self._per_date = "{date}" in self.path
        self._per_session = "{session_id}" in self.path

    def _build(self) -> None:
        # The helpers hold asyncio locks and tasks: made anew by reset() for a new loop.
        report = sink_reporter(self.name, self.report)
        self._syncer = Syncer(
            self._fsync, report, self.name, Worker(f"async_session_logger.fsync[{self.name}]")
        )
        self._housekeeper = Housekeeper(self.rotation, report, lambda: self._clock())
        self._files = LiveFiles(
            name=self.name,
            write_mode=self.write_mode,
            mkdir=self.mkdir,
            reopen=self.reopen,
            policy=self.rotation,
            housekeeper=self._housekeeper,
            syncer=self._syncer,
            report=report,
            clock=lambda: self._clock(),
            # Within the lane's timeout, so a peer holding a lock fails the rotation, not
            # the batch.
            lock_wait=min(LOCK_WAIT_S, self.timeout / 3) if self.timeout else LOCK_WAIT_S,
            # Directories below the first placeholder are filled in from entries: a link
            # planted at a predictable one (logs/2026-11-25) must not be followed either.
            trusted=os.path.dirname(self.path[: self.path.index("{")])
            if "{" in self.path
            else None,
            worker=self._worker,
        )

    def reset(self) -> None:
        """Close descriptors left open (a forked child's, a stopped loop's) and start anew."""
        self._files.drop()
        self._worker.stop()
        self._syncer.stop()
        self._build()

    def path_for(self, entry: dict[str, Any]) -> str:
        """Return the file an entry goes to.

        Raises:
            InvalidSessionIdError: the path holds ``{session_id}`` and the entry's id (as a
                formatter or a dead letter left it) is not a safe file name: ``..``, ``/``...
        """
        if not (self._per_date or self._per_session):
            return self.path
        # The entry as formatted: a formatter may have rewritten both keys, so neither is
        # trusted to stay inside the directory.
        stamp = entry.get("timestamp")
        date = stamp[:10] if isinstance(stamp, str) else ""
        if not _DATE.match(date):
            date = time.strftime("%Y-%m-%d", time.gmtime())
        session_id = entry.get("session_id", "_unknown")
        if self._per_session:
            try:
                check_session_id(session_id)
            except InvalidSessionIdError as exc:
                raise InvalidSessionIdError(
                    f"sink {self.name!r} will not put this entry in a file named after its "
                    f"session id: {exc}",
                    session_id=exc.session_id,
                ) from exc
        return self.path.format(date=date, session_id=session_id)

    @staticmethod
    def rotated_files(path: str | os.PathLike[str]) -> list[str]:
        """Return the rotated files of the live file ``path``, oldest first (``.gz`` included).

        Pass them and ``path`` itself to ``read_entries`` to read everything in order.
        """
        return _rotation.Siblings(os.fspath(path)).files()

    async def open(self) -> None:
        """Open the file now when its name does not depend on entries (errors surface early)."""
        if not self._per_session:
            path = self.path_for({})
            try:
                await self._files.get(path)
            except OSError as exc:
                # A planted symlink is an attack on the file, not a configuration mistake: it
                # must not stop the application, nor a FIFO whose reader has not come yet.
                # The lane retries, reports and dead-letters.
                if not (_rotation.is_refused_link(exc) or isinstance(exc, NoReaderError)):
                    self._worker.stop()  # the logger fails to start: close() never comes
                    raise
            # Apply retention and finish compressions a previous run left, in the background.
            self._housekeeper.after_rotation(path, None, self.name)

    async def write_batch(self, batch: Batch) -> None:
        """Append the batch, one write per file (rotating first if a file is due)."""
        if not (self._per_date or self._per_session):
            await self._write(self.path, batch)
            return
        groups: dict[str, list[int]] = {}
        failed: list[int] = []
        first_error: BaseException | None = None
        for i, entry in enumerate(batch.entries):
            try:
                path = self.path_for(entry)
            except InvalidSessionIdError as exc:
                # Only this entry fails (the lane dead-letters it); the rest is written.
                failed.append(i)
                first_error = first_error or exc
                continue
            groups.setdefault(path, []).append(i)
        for path, indices in groups.items():
            part = batch if len(groups) == 1 and not failed else batch.select(indices)
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
        data = batch.data
        view = memoryview(data)
        done = 0  # bytes of data that reached a file
        synced = 0  # with fsync="batch": bytes of data flushed to the disk
        try:
            while done < len(data):
                end = self.rotation.piece_end(data, done)
                live, locked = await self._files.ready(path, end - done)
                try:
                    if path in self._files.torn:
                        # A write stopped mid-line: end that fragment so ours cannot glue onto it.
                        await self._put(live, memoryview(b"\n"))
                        self._files.torn.discard(path)
                    piece = view[:end]
                    slice_end = time.perf_counter() + _SLICE_S
                    while done < end:
                        if live.threaded:  # one thread hop for the whole piece
                            done += await self._put(live, piece[done:])
                            continue
                        # Chunks end between lines: each O_APPEND write lands whole, so another
                        # process's writes never land inside one of our lines.
                        try:
                            done += os.write(
                                live.fd, piece[done : line_cut(data, done, _CHUNK, end)]
                            )
                        except BlockingIOError:  # a FIFO or device whose reader is behind
                            await _writable(live.fd)
                            slice_end = time.perf_counter() + _SLICE_S
                            continue
                        if done < end and time.perf_counter() >= slice_end:
                            await asyncio.sleep(0)
                            slice_end = time.perf_counter() + _SLICE_S
                finally:
                    if locked:
                        _flock.unlock(live.fd)
                if self._syncer.every_batch:
                    await self._syncer.sync(live.fd)
                    synced = done
                else:
                    self._syncer.written(live.fd)
        except asyncio.CancelledError:  # the lane's timeout, or close: the file stays open
            if done and data[done - 1 : done] != b"\n":
                self._files.torn.add(path)  # the next write ends the fragment first
            raise
        except OSError as exc:
            await self._files.forget(path)
            if done and data[done - 1 : done] != b"\n":
                self._files.torn.add(path)
            # Keep the entries whose whole line reached the file (and the disk, if synced per
            # batch); the lane retries the rest. Lines written but not flushed come twice then.
            kept = synced if self._syncer.every_batch else done
            if kept <= 0:
                raise
            complete = data.count(b"\n", 0, kept)
            raise PartialWriteError(range(complete, len(batch)), exc) from exc

    async def _put(self, live: LiveFile, data: memoryview) -> int:
        if live.threaded:
            return await self._worker.run(live.fh.write, data) or 0
        while True:
            try:
                return os.write(live.fd, data)
            except BlockingIOError:
                await _writable(live.fd)

    async def close(self) -> None:
        """Flush (per ``fsync``) and close every file; wait for compressions under way."""
        await self._syncer.close()
        await self._files.close()
        await self._housekeeper.wait()
        self._worker.stop()
        self._syncer.stop()

    def stats(self) -> dict[str, Any]:
        """Counters of rotations, reopens, compressed and expired files, and fsync calls."""
        counters = {**self._files.counters, **self._housekeeper.counters}
        return {**counters, "fsyncs": self._syncer.count}

    def __repr__(self) -> str:
        return f"<FileSink {self.name!r} path={self.path!r}>"
