"""FileSink's policies and background work: when to rotate, fsync, gzip and retention.

Blocking calls run on worker threads; failures are reported through the sink's ``report``
(``on_error``): never raised into the application, never fatal to the lane.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from typing import Final, Literal

from .._errors import ConfigurationError, SinkError
from .._threads import Worker
from . import _rotation

__all__ = ["Housekeeper", "RotationPolicy", "Syncer", "parse_fsync"]

RotateEvery = Literal["hourly", "daily"] | float
FsyncMode = Literal["never", "batch"] | float
Reporter = Callable[[str, BaseException | None], None]

# After a failed rename the sink keeps appending to the current file and tries again this late.
ROTATE_RETRY_S: Final = 5.0


def _positive(name: str, value: object, *, integer: bool = False) -> float:
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class RotationPolicy:
    """When a live file is replaced by a new one, and what happens to the rotated files."""

    def __init__(
        self,
        rotate_bytes: int | None,
        rotate_every: RotateEvery | None,
        keep: int | None,
        max_age: float | dt.timedelta | None,
        compress: Literal["gzip"] | None,
    ) -> None:
        if rotate_bytes is not None:
            _positive("rotate_bytes", rotate_bytes, integer=True)
        self.max_bytes = rotate_bytes
        if rotate_every is None or isinstance(rotate_every, str):
            if rotate_every is not None and rotate_every not in _rotation.PERIODS:
                raise ConfigurationError(
                    f"rotate_every must be 'hourly', 'daily' or seconds, got {rotate_every!r}"
                )
            self.interval = None if rotate_every is None else _rotation.PERIODS[rotate_every]
        else:
            self.interval = _positive("rotate_every", rotate_every)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise ConfigurationError(f"keep must be an int >= 0, got {keep!r}")
        self.keep = keep
        if isinstance(max_age, dt.timedelta):
            max_age = max_age.total_seconds()
        self.max_age_us = None
        if max_age is not None:
            self.max_age_us = int(_positive("max_age", max_age) * 1_000_000)
        if compress not in (None, "gzip"):
            raise ConfigurationError(f"compress must be None or 'gzip', got {compress!r}")
        self.compress = compress == "gzip"
        self.enabled = self.max_bytes is not None or self.interval is not None
        self.upkeep = self.compress or keep is not None or max_age is not None
        if self.upkeep and not self.enabled:
            raise ConfigurationError(
                "keep, max_age and compress apply to rotated files: set rotate_bytes or "
                "rotate_every too"
            )

    def first_period_end(self, now: float, size: int, mtime: float) -> float:
        """Return when a file just opened is due: a non-empty file counts from its last write."""
        if self.interval is None:
            return float("inf")
        return _rotation.period_end(mtime if size else now, self.interval)

    def piece_end(self, data: bytes, start: int) -> int:
        """Return where the part of ``data`` that goes into one file ends (after a newline).

        All the rest when it fits within ``rotate_bytes``; otherwise the whole lines that fit,
        or one line alone if even that one is larger.
        """
        if self.max_bytes is None:
            return len(data)
        return line_cut(data, start, self.max_bytes, len(data))


def line_cut(data: bytes, start: int, limit: int, stop: int) -> int:
    """Return where a part of ``data[start:stop]`` of at most ``limit`` bytes ends.

    ``stop`` when the rest fits; else just after the last newline within ``limit`` bytes; else
    (one line longer than ``limit``) just after that line. Rotation cuts files with it, direct
    writes their chunks: both only ever cut between lines.
    """
    if stop - start <= limit:
        return stop
    cut = data.rfind(b"\n", start, start + limit)
    if cut < 0:
        cut = data.find(b"\n", start + limit, stop)
    return stop if cut < 0 else cut + 1


class Housekeeper:
    """Compress and expire rotated files on the rotation thread, one job after the other."""

    def __init__(
        self, policy: RotationPolicy, report: Reporter, clock: Callable[[], float]
    ) -> None:
        self.policy = policy
        self._report = report
        self._clock = clock
        self._jobs: set[asyncio.Task[None]] = set()
        self._failed: set[str] = set()
        self._strangers: set[str] = set()
        self._one_at_a_time = asyncio.Lock()
        self.counters = {"compressed": 0, "expired": 0}

    def after_rotation(self, path: str, rotated: str | None, name: str) -> None:
        """Start the upkeep of ``path``'s rotated files (``rotated``: the one just made)."""
        if not self.policy.upkeep:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(path, rotated), name=f"async_session_logger.rotation[{name}]"
        )
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run(self, path: str, rotated: str | None) -> None:
        try:
            async with self._one_at_a_time:  # a job's listing must not race the next job's
                await self._upkeep(path, rotated)
        except Exception as exc:  # never let a background job die unseen
            self._report(f"upkeep of the rotated files of {path!r} failed", exc)

    async def _upkeep(self, path: str, rotated: str | None) -> None:
        policy = self.policy
        loop = asyncio.get_running_loop()
        pool = _rotation.executor()
        try:
            strangers = await loop.run_in_executor(pool, _rotation.Siblings(path).strangers)
        except OSError:  # an unreadable directory: the steps below report it
            strangers = []
        for name in strangers:
            if name not in self._strangers:  # once per name, not at every rotation
                self._strangers.add(name)
                self._report(
                    f"{name!r} has a rotated file's name but is a symlink or no regular file: "
                    "left alone (not read, compressed or deleted)",
                    None,
                )
        if policy.compress and rotated is not None and rotated not in self._failed:
            await self._compress(rotated)
        if policy.keep is not None or policy.max_age_us is not None:
            now_us = int(self._clock() * 1_000_000)
            try:
                deleted, errors = await loop.run_in_executor(
                    pool, _rotation.expire, path, policy.keep, policy.max_age_us, now_us
                )
            except OSError as exc:
                deleted, errors = [], [exc]
            self.counters["expired"] += len(deleted)
            if errors:
                self._report(
                    f"could not delete {len(errors)} expired rotated file(s) of {path!r}",
                    errors[0],
                )
        if policy.compress:
            # Plain rotated files a crash or an earlier failure left behind.
            try:
                leftovers = await loop.run_in_executor(pool, _rotation.uncompressed, path)
            except OSError as exc:
                self._report(f"could not list the rotated files of {path!r}", exc)
                return
            for plain in leftovers:
                if plain not in self._failed:  # reported once; the next run tries again
                    await self._compress(plain)

    async def _compress(self, plain: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(_rotation.executor(), _rotation.compress, plain)
        except OSError as exc:
            self._failed.add(plain)
            self._report(f"could not compress {plain!r}; it stays uncompressed", exc)
            return
        if done is not None:
            self.counters["compressed"] += 1

    async def wait(self) -> None:
        """Wait for the jobs started so far (at close)."""
        while self._jobs:
            # wait(), not gather(): a close cut short must not cancel a compression halfway.
            await asyncio.wait(list(self._jobs))


def parse_fsync(fsync: object) -> str | float:
    """Return ``"never"``, ``"batch"`` or a positive number of seconds."""
    if fsync in ("never", "batch"):
        return str(fsync)
    if isinstance(fsync, bool) or not isinstance(fsync, int | float) or not fsync > 0:
        raise ConfigurationError(f"fsync must be 'never', 'batch' or seconds > 0, got {fsync!r}")
    return float(fsync)


class Syncer:
    """Push written data to the disk: after each batch, or at most every N seconds.

    One fsync at a time, on a thread of the sink's own (``worker``): an fsync that never
    returns (a hung NFS server) holds that thread only, and the next ones wait for it until
    their callers' time runs out. Each retry's fsync once took one more of the threads that
    every sink shared, until a healthy sink's fsyncs waited too.
    """

    def __init__(self, mode: str | float, report: Reporter, name: str, worker: Worker) -> None:
        self.mode = mode
        self.every_batch = mode == "batch"
        self.interval = mode if isinstance(mode, float) else None
        self._report = report
        self._name = name
        self._worker = worker
        self._one_at_a_time = asyncio.Lock()
        self._inflight: asyncio.Future[None] | None = None
        self._dirty: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._last = float("-inf")
        self.count = 0

    async def sync(self, fd: int) -> None:
        """Flush ``fd`` now on the sink's fsync thread (raises the OS error)."""
        async with self._one_at_a_time:  # the interval's flush, a close's, a batch's
            previous = self._inflight
            if previous is not None and not previous.done():
                # An fsync whose caller gave up on it (a timeout, a close that stopped the
                # interval's flush) still runs: wait for it, within this caller's own time
                # limit, rather than fail (it may only be slow). Not cancelled with us.
                await asyncio.wait([previous])
            # A duplicate descriptor: should the sink close or reopen the file meanwhile (a
            # timeout, a rotation), the thread still syncs the right file, never a recycled
            # number.
            dup = os.dup(fd)
            self.count += 1
            # Shielded: a cancelled caller must not cancel the job before it runs (and closes
            # dup).
            # (Never refused as busy: the fsync before it has returned, waited for above.)
            job = asyncio.ensure_future(self._worker.run(_rotation.sync_and_close, dup))
            self._inflight = job
            await asyncio.shield(job)

    def written(self, fd: int) -> None:
        """Note a write to ``fd``; with an interval, schedule a flush within it."""
        if self.interval is None:
            return
        self._dirty.add(fd)
        if self._task is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._last + self.interval - loop.time())
            self._task = loop.create_task(
                self._later(delay), name=f"async_session_logger.fsync[{self._name}]"
            )

    async def release(self, fd: int) -> None:
        """Flush ``fd`` if it has unsynced writes (before the sink closes it)."""
        if fd not in self._dirty:
            return
        self._dirty.discard(fd)
        try:
            await self.sync(fd)
        except OSError as exc:
            self._report("could not fsync a file before closing it", exc)

    async def _later(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            self._last = asyncio.get_running_loop().time()
            for fd in list(self._dirty):
                if fd not in self._dirty:  # the sink released (synced and closed) it meanwhile
                    continue
                self._dirty.discard(fd)
                try:
                    await self.sync(fd)
                except asyncio.CancelledError:
                    self._dirty.add(fd)  # closing: release() flushes it again, and waits
                    raise
                except OSError as exc:
                    self._report("could not fsync the log file", exc)
        finally:
            self._task = None
        if self._dirty:  # written while this flush ran: flush again within the interval
            self.written(next(iter(self._dirty)))

    async def close(self) -> None:
        """Stop the timer (the sink releases every file itself)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def stop(self) -> None:
        """Let the fsync thread end (after a call in progress returns)."""
        self._worker.stop()


def sink_reporter(sink_name: str, report: Callable[[SinkError], None]) -> Reporter:
    """Return ``report(message, cause)`` that wraps the message into a ``SinkError``."""

    def reporter(message: str, cause: BaseException | None) -> None:
        error = SinkError(f"sink {sink_name!r}: {message}", sink_name=sink_name)
        error.__cause__ = cause
        report(error)

    return reporter
