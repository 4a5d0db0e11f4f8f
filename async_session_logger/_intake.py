"""The bounded hand-off between callers (any thread) and the writer task.

Why not ``asyncio.Queue``: it is not thread-safe, so every put from another thread would need
``call_soon_threadsafe`` (about 6 µs, a wake-up of the loop per entry), and its ``get()`` costs a
coroutine step per item. Here callers append to a ``deque`` (atomic under the GIL) and only wake
the loop when the writer is asleep; the writer takes everything at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Coroutine, Generator
from itertools import repeat, starmap
from typing import Any, Final, Literal

from ._gaps import Gaps

__all__ = ["OVERFLOW_POLICIES", "Intake", "Overflow", "Room", "RoomWait"]

Overflow = Literal["block", "drop_newest", "drop_oldest"]
OVERFLOW_POLICIES: Final = ("block", "drop_newest", "drop_oldest")
_LOG: Final = 1  # _entry.LOG (not imported: _entry imports orjson, this module stays light)


class Room(asyncio.Future[None]):
    """What an async verb returns: a future that also passes for a coroutine.

    Pending, it is a producer's wait for room in a full intake (:meth:`Intake.room`); done, it
    says the entry is queued (one per loop serves every call). Like every verb's return value
    it must be accepted by ``asyncio.create_task()`` and ``run_coroutine_threadsafe()``:
    ``send`` steps it the way a coroutine awaiting the future would.
    """

    __slots__ = ()

    def send(self, value: Any) -> Any:
        if not self.done():
            self._asyncio_future_blocking = True
            return self
        self.result()  # a cancelled wait raises CancelledError here
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        raise typ if val is None else val

    def close(self) -> None:
        pass


Coroutine.register(Room)


def done_room(loop: asyncio.AbstractEventLoop) -> Room:
    """Return a completed :class:`Room` of ``loop`` (one serves every call on that loop)."""
    done = Room(loop=loop)
    done.set_result(None)
    return done


class RoomWait(Coroutine[Any, Any, None]):
    """What a verb returns when its entry filled the intake: a wait for room that begins
    when it is awaited, or stepped by a task (``create_task()``, ``wait_for()``,
    ``gather()``, ``run_coroutine_threadsafe()``).

    Only then does it take its :class:`Room` (a future in the intake's line of waiters; a
    cancelled wait cancels it, and its slot goes to the next). A caller that cannot wait
    drops it unawaited (the stdlib bridge on the loop thread, a result nobody keeps): then
    it cost this small object. A future taken at call time, as before, cost ~5,000
    instructions per entry past the bound, and each one counted as a waiting producer and
    took a freed slot's turn ahead of the tasks that did wait.
    """

    __slots__ = ("_intake", "_room")

    def __init__(self, intake: Intake) -> None:
        self._intake = intake
        self._room: Room | None = None

    def _taken(self) -> Room:
        room = self._room
        if room is None:
            room = self._room = self._intake.room()
        return room

    def __await__(self) -> Generator[Any, None, None]:
        return self._taken().__await__()

    def send(self, value: Any) -> Any:
        return self._taken().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._taken().throw(typ, val, tb)

    def close(self) -> None:
        pass


class Intake:
    """A bounded FIFO of records and markers with cheap cross-thread wake-ups.

    With ``overflow="block"`` a caller queues its record, then waits while ``maxsize`` items
    are queued (so the intake holds at most one item past ``maxsize`` per waiting caller: the
    record each one queued before it waited; see :meth:`room`). With a drop
    policy a full intake drops log entries instead (the newest or the oldest one) and notes
    them in :attr:`gaps`; ``take()`` hands the writer a ``gap`` record before the next record
    of the session. Lifecycle records are never dropped: they may take the intake one item
    past ``maxsize`` when nothing droppable is queued, and then their callers wait.
    """

    def __init__(self, maxsize: int, overflow: Overflow = "block", linger: float = 0.0) -> None:
        self.maxsize = maxsize
        self.overflow = overflow
        # Seconds a record that finds the writer asleep lets others gather before the writer
        # wakes (see wake()): a batch of one entry costs the writer and the sinks about as much
        # as one of hundreds (benchmarks/sessions.py --trickle: a task that logs and yields,
        # 77 us per entry without, 11 us with 2 ms).
        self.linger = linger
        self.drops = overflow != "block"
        # Callers wait while len >= limit.
        self.limit = maxsize + 1 if self.drops else maxsize
        self.reset()

    def reset(self) -> None:
        """Start empty with fresh locks (a forked child: the parent's queue is the parent's)."""
        if hasattr(self, "_buf"):
            self._buf.clear()  # the same object: the faces and the Recorder hold it
        else:
            self._buf: deque[Any] = deque()
        self.buf = self._buf  # the Recorder appends directly on its hot path
        # Markers (flush barriers, stop) queued now: a batch taken while there is none holds
        # records only, and the writer hands it on without a type test per item.
        self.markers = 0
        # Guards take() against drops (which delete from the middle) and marker pushes;
        # the Recorder's appends run under its own lock, which drops also hold.
        self.lock = threading.Lock()
        self.gaps = Gaps(self.overflow)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1
        # The writer's wait (see wait()): a bare future, resolved by _set() on the loop's
        # thread (an asyncio.Event costs a list of waiters and a context manager more).
        self._waiter: asyncio.Future[None] | None = None
        # Whether the writer waits for a wake-up: a plain attribute, read by every verb.
        self.sleeping = False
        # Whether the writer's wake-up is a timer ``linger`` seconds away (see wake()).
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None
        self._space_sync = threading.Event()
        self._sync_waiters = 0
        self._waiters_lock = threading.Lock()
        # Async producers that found the intake full: their entries are queued already, each
        # waits on a future of its own (loop thread only) until take() makes room.
        self.waiters: deque[Room] = deque()
        # What an async verb on the bound loop returns when its entry found room: awaiting a
        # done future runs in C (~310 instructions; a coroutine's frame or a Python-level
        # __await__ cost more). Set by bind(): the faces return it only on the bound loop.
        self.done: Room

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the writer runs on (called from that loop's thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._waiter = None  # a previous loop's wait can never be resolved
        self.sleeping = False
        self.lingering = False
        self._timer = None  # a previous loop's timer is dead with it
        self.waiters = deque()  # futures of a previous loop can never be resolved
        self.done = done_room(loop)

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def full(self) -> bool:
        """Whether callers should wait before adding more."""
        return len(self._buf) >= self.limit

    def push(self, item: Any) -> bool:
        """Append ``item``, wake the writer if it sleeps; return whether the intake is full.

        Callable from any thread. Lifecycle records come here under the Recorder's lock: with
        a drop policy and a full intake, a queued log entry makes room for them first.
        """
        buf = self._buf
        # `with`, not acquire() then `try`: a signal's exception (Ctrl-C) can come right after
        # acquire() returns, before the `try`, and the lock would stay held for ever.
        with self.lock:
            if type(item) is not tuple:
                self.markers += 1
            elif self.drops and len(buf) >= self.maxsize:
                self._drop_queued(newest=self.overflow == "drop_newest")
            buf.append(item)
        if self.sleeping or (self.lingering and type(item) is not tuple):
            self.wake(type(item) is not tuple)  # a marker (flush, stop) wakes it at once
        return len(buf) >= self.limit

    def overflow_log(self, record: tuple[Any, ...]) -> None:
        """Apply the drop policy to a log ``record`` arriving at a full intake.

        Call with the Recorder's lock held. ``drop_newest`` drops ``record``; ``drop_oldest``
        drops the oldest queued log entry and queues ``record`` (or drops ``record`` when no
        log entry is queued).
        """
        with self.lock:
            if self.overflow == "drop_oldest" and self._drop_queued(newest=False):
                self._buf.append(record)
            else:
                self.gaps.note(record)

    def _drop_queued(self, newest: bool) -> bool:
        # Under self.lock and the Recorder's lock: nothing else mutates the deque now.
        buf = self._buf
        last = len(buf) - 1
        # Iterate (O(1) a step; indexing a deque in the middle is O(n)) and stop at the first
        # log record: the deque is not touched while the iterator is live.
        found = -1
        for offset, item in enumerate(reversed(buf) if newest else buf):
            if type(item) is tuple and item[0] == _LOG:
                found = last - offset if newest else offset
                break
        if found < 0:
            return False
        item = buf[found]
        del buf[found]
        self.gaps.note(item)
        return True

    def wake(self, now: bool = False) -> None:
        """Wake the sleeping writer; call right after appending to ``buf`` (any thread).

        With ``linger``, the wake-up of a record is a timer ``linger`` seconds away: the
        records that come meanwhile go in the same batch, and the writer runs once for them
        (a wake-up that then waited for the linger cost a turn of the loop more, ~35,000
        instructions per batch). ``now`` (a marker, a producer waiting for room, a full
        intake) wakes it at once, also from a linger.
        """
        # The flag is cleared before waking, so concurrent pushers wake the loop once; a racing
        # extra wake-up is harmless, a missed one impossible (see wait()).
        self.sleeping = False
        if threading.get_ident() == self._loop_thread:
            self._rouse(now)
        elif self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._rouse, now)
            except RuntimeError:  # the loop is gone: close() will report the entry
                pass

    def _rouse(self, now: bool = False) -> None:
        # Loop thread: end the writer's wait now, or arm the linger's timer to end it.
        loop = self._loop
        if now or not self.linger or self._sync_waiters or self.full or loop is None:
            self._set()
        elif self._timer is None:
            try:
                self._timer = loop.call_later(self.linger, self._lingered)
            except RuntimeError:  # the loop is closed: nobody would run the writer anyway
                self._set()
                return
            self.lingering = True

    def _lingered(self) -> None:
        self._timer = None
        self._set()

    def _set(self) -> None:
        # Loop thread: end the writer's wait, if it waits.
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self, limit: int) -> list[Any]:
        """Pop up to ``limit`` items (writer side), with ``gap`` records where due."""
        return self.take_batch(limit)[0]

    def take_batch(self, limit: int) -> tuple[list[Any], bool]:
        """Like :meth:`take`, and say whether the items are all records (no marker)."""
        buf = self._buf
        with self.lock:
            count = min(len(buf), limit)
            # popleft called from C (no Python step per item): a fifth of the listcomp's cost
            items = list(starmap(buf.popleft, repeat((), count)))
            plain = True
            if self.markers:
                taken = sum(type(item) is not tuple for item in items)
                self.markers -= taken
                plain = not taken
            if self.gaps:
                items = self.gaps.insert(items)
        if self._sync_waiters and len(buf) < self.limit:
            self._space_sync.set()
        if self.waiters and len(buf) < self.limit:
            if threading.get_ident() == self._loop_thread:
                self.release(self.limit - len(buf))
            elif self._loop is not None:  # a close that gave up on the loop takes leftovers
                try:
                    self._loop.call_soon_threadsafe(self.release, len(self.waiters))
                except RuntimeError:  # the loop is closed: nobody can wait on it any more
                    pass
        return items, plain

    def room_wait(self) -> RoomWait:
        """Return what an async verb returns after queueing into a full intake: a
        :class:`RoomWait`, which takes its :meth:`room` when awaited."""
        return RoomWait(self)

    def room(self) -> Room:
        """Return what an async producer awaits after queueing into a full intake.

        Loop thread only. The producer's entry is queued already (so a cancelled wait loses
        nothing); the wait is the back-pressure: it ends, first come first served, as
        :meth:`take` frees slots, one waiter per slot.
        """
        room = Room(loop=self._loop)
        self.waiters.append(room)
        if self.lingering:
            self.wake(True)  # a full intake ends the writer's linger
        return room

    @property
    def waiting(self) -> int:
        """How many producers (tasks and threads) wait for room now."""
        return self._sync_waiters + sum(1 for room in self.waiters if not room.done())

    def release(self, count: int) -> None:
        """Wake up to ``count`` waiting producers, oldest first (loop thread only)."""
        waiters = self.waiters
        while count > 0 and waiters:
            room = waiters.popleft()
            if not room.done():  # a cancelled waiter's slot goes to the next one
                room.set_result(None)
                count -= 1

    async def wait(self) -> None:
        """Sleep until something is pushed, then for the linger (writer side).

        Queued records already (a producer in another thread, or what came during the last
        batch): the linger starts now. Producers do not wake the writer during a linger (each
        wake-up is a thread hop); a marker (flush, stop) or a producer that finds the intake
        full ends it at once.
        """
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.sleeping = True
        # Re-check after raising the flag: a push that saw the flag down has already appended.
        # A queued marker must not wait for a linger's timer (one a late wake-up armed, say).
        if self._buf:
            self.sleeping = False
            self._rouse(self.markers > 0)
        try:
            await waiter
        finally:
            self.lingering = False
            timer = self._timer
            if timer is not None:  # woken before the linger's end, or cancelled
                self._timer = None
                timer.cancel()

    def wait_space_sync(self, timeout: float = 0.05) -> None:
        """Block the calling thread until the intake has room (never call from the loop)."""
        with self._waiters_lock:
            self._sync_waiters += 1
        if self.lingering:
            self.wake(True)
        try:
            while len(self._buf) >= self.limit:
                self._space_sync.clear()
                if len(self._buf) < self.limit:
                    break
                # The timeout is a safety net against a missed set(), not the mechanism.
                self._space_sync.wait(timeout)
        finally:
            with self._waiters_lock:
                self._sync_waiters -= 1

    @property
    def in_loop_thread(self) -> bool:
        """Whether the caller runs on the writer's loop thread."""
        return threading.get_ident() == self._loop_thread
