"""The writer: drain the intake in batches, build and encode entries, fan out to the lanes."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Final

from ._entry import EntryBuilder, Record
from ._intake import Intake
from ._lane import Lane
from ._report import DeliveryReport
from ._tasks import TaskOwner
from .sinks import Batch

__all__ = ["STOP", "TURN_BATCH", "Flush", "Writer"]


# A take of fewer entries than this drained the queue: the writer lingers before the next.
SMALL_BATCH: Final = 64
# The most a writer that shares its loop with the application takes in one turn while the
# queue has room: ~0.4 ms of encoding, so no turn of the writer holds the loop for long. A
# full queue (producers wait on it, or are about to) is taken batch_size at a time.
TURN_BATCH: Final = 256


class Flush:
    """A flush barrier in the intake: resolved once every lane wrote what came before it."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        # A concurrent future: it outlives the event loop it was created on (see Engine).
        self.future: concurrent.futures.Future[DeliveryReport] = concurrent.futures.Future()


class _Stop:
    __slots__ = ()


STOP: Final = _Stop()


class Writer:
    """Take up to ``batch_size`` records at a time and hand one encoded batch to every lane."""

    def __init__(
        self,
        intake: Intake,
        builder: EntryBuilder,
        lanes: Sequence[Lane],
        batch_size: int,
        report: Callable[[], DeliveryReport],
    ) -> None:
        self.intake = intake
        self.builder = builder
        self.lanes = lanes
        self.batch_size = batch_size
        # Set by a face whose writer runs on the application's loop (AsyncSessionLogger):
        # the most taken in one turn while the queue has room (None: batch_size).
        self.turn_batch: int | None = None
        self._report = report

    async def run(self, owner: TaskOwner, current: Callable[[], bool]) -> None:
        """Drain until the stop marker, then pass the stop on to every lane.

        ``current()`` says whether this run still serves the engine's binding: a writer whose
        loop was stopped (the engine moved on to another loop) must never take more.
        """
        try:
            await self._run(owner, current)
        finally:
            # Stopped, cancelled or moved to another loop: nobody waits for room any more.
            self.intake.release(len(self.intake.waiters))

    async def _run(self, owner: TaskOwner, current: Callable[[], bool]) -> None:
        intake = self.intake
        while True:
            turn = self.turn_batch
            limit = self.batch_size if turn is None or intake.full else turn
            items, plain = intake.take_batch(limit)
            if not items:
                await intake.wait()  # and the linger: see Intake.wake()
                if not current():
                    return
                continue
            if plain:  # records only (no flush or stop among them): the usual batch
                self.dispatch(items)
            else:
                records: list[Record] = []
                for item in items:
                    if type(item) is tuple:  # a Record; markers are objects
                        records.append(item)
                        continue
                    if records:
                        self.dispatch(records)
                        records = []
                    if item is STOP:
                        for lane in self.lanes:
                            lane.put_stop()
                        return
                    self._barrier(item, owner)
                if records:
                    self.dispatch(records)
            for lane in self.lanes:
                if lane.congested:  # a "block" sink is behind: slow the callers, lose nothing
                    await lane.wait_space()
            if intake.linger and len(items) < SMALL_BATCH:
                await intake.wait()  # drained: the next record and its linger bring the next
            else:
                await asyncio.sleep(0)
            if not current():
                return

    def dispatch(self, records: list[Record]) -> None:
        """Build, format, mask and encode ``records`` once; queue the batch on every lane.

        Without a formatter, ``data`` is encoded straight from the records and the dicts are
        built only if a sink asks for them (a file sink never does).
        """
        if not records:
            return
        builder = self.builder
        if builder.formatter is None:
            batch = Batch.deferred(
                builder.build_later(records),
                len(records),
                builder.encode_records(records),
                builder.heads_later(records),
                builder.kinds_later(records),
            )
        else:
            entries = builder.build_batch(records)
            batch = Batch(entries, builder.encode(entries))
        for lane in self.lanes:
            lane.put(batch)

    def leftovers(self) -> list[Record]:
        """Take what is still queued (the writer was stopped early); resolve its barriers."""
        items = self.intake.take(len(self.intake))
        for item in items:
            if isinstance(item, Flush) and not item.future.done():
                item.future.set_result(self._report())
        return [item for item in items if type(item) is tuple]

    def _barrier(self, flush: Flush, owner: TaskOwner) -> None:
        futures = [lane.put_barrier() for lane in self.lanes]

        async def complete() -> None:
            await asyncio.gather(*futures)
            if not flush.future.done():
                flush.future.set_result(self._report())

        owner.spawn(complete(), "flush")
