"""``AsyncSessionLogger``: the async face of the engine, for code running on an event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Final, Self

import orjson

from ._config import DEFAULT_DEAD_LETTER_PATH, build_engine
from ._engine import Engine
from ._entry import DEFAULT_MASK_KEYS, Extra, Formatter
from ._errors import InvalidFieldsError
from ._handles import AsyncSessionHandle, SessionRef, parent_id_of
from ._intake import Overflow
from ._report import DeliveryReport, ErrorHandler
from ._writer import TURN_BATCH
from .sinks import Sink

__all__ = [
    "ORIGIN_KEYS",
    "AsyncSessionLogger",
    "ExcInfo",
    "Origin",
    "exception_extra",
    "exception_text",
    "record_extra",
]

ExcInfo = bool | BaseException | None
_get_running_loop = asyncio._get_running_loop  # None instead of raising: verbs work off-loop too


def exception_text(exc_info: ExcInfo) -> str | None:
    """The traceback text for ``exc_info`` (``True``: the exception being handled)."""
    if exc_info is None or exc_info is False:
        return None
    if exc_info is True:
        return traceback.format_exc() if sys.exc_info()[0] is not None else None
    return "".join(traceback.format_exception(exc_info))


def exception_extra(exc_info: ExcInfo) -> dict[str, Any] | None:
    """The entry's top-level ``exception`` key for ``exc_info``, or ``None``."""
    text = exception_text(exc_info)
    return None if text is None else {"exception": text}


# Top-level keys an integration may set on a log entry, saying where it came from: the stdlib
# logger's name, the source location, the stack at the call.
ORIGIN_KEYS: Final = frozenset({"logger", "source", "stack"})


def _check_origin(origin: object) -> Mapping[str, Any]:
    if type(origin) is not dict and not isinstance(origin, Mapping):
        raise InvalidFieldsError(f"origin must be a mapping, not {type(origin).__name__}")
    if not origin.keys() <= ORIGIN_KEYS:
        unknown = set(origin) - ORIGIN_KEYS
        raise InvalidFieldsError(
            f"origin keys must be among {sorted(ORIGIN_KEYS)}, got {sorted(map(str, unknown))}"
        )
    return origin


class Origin(Mapping[str, Any]):
    """A read-only ``origin`` for :meth:`~AsyncSessionLogger.log_record`, encoded once.

    Many entries share an origin (every record of one stdlib call site has the same logger
    name and source location), so the stdlib bridge keeps one ``Origin`` per call site: an
    entry then carries its JSON text, and neither the call nor the writer builds or encodes
    the dicts again. Checked like a plain ``origin`` dict when made.

    Raises:
        InvalidFieldsError: as ``log_record(origin=...)`` would.
    """

    __slots__ = ("_items", "json")

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(_check_origin(items))
        # The text only when it says exactly what the dict does (orjson's defaults would turn
        # a datetime into a string, a NaN into null): otherwise the entry takes the dict path.
        json: str | None
        try:
            json = orjson.dumps(self._items).decode()
            decoded = orjson.loads(json)
            if decoded == self._items:
                self._items = decoded  # nested values of its own: the text stays their truth
            else:
                json = None
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            json = None
        self.json = json if json is not None and len(json) > 2 else None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Origin({self._items!r})"


def record_extra(exception: str | None, origin: Mapping[str, Any] | None) -> Extra:
    """Check ``origin`` and return the top-level keys of an entry from another logging system.

    Raises:
        InvalidFieldsError: ``origin`` is not a mapping, or has a key not in ``ORIGIN_KEYS``
            (it must never overwrite the schema's own keys).
    """
    if type(origin) is Origin and exception is None and origin.json is not None:
        return origin.json  # checked when made
    extra: dict[str, Any] = {}
    if origin is not None:
        extra.update(_check_origin(origin))
    if exception is not None:
        extra["exception"] = str(exception)
    return extra or None


class _Done(Coroutine[Any, Any, None]):
    """A coroutine that is already complete: what a verb returns when its entry is queued.

    A real ``Coroutine`` (so ``asyncio.create_task(...)`` and ``run_coroutine_threadsafe``
    accept it), stateless, so one object serves every call; dropping it unawaited loses
    nothing and warns about nothing. On the hot path a completed :class:`Room` does the same
    job faster.
    """

    __slots__ = ()

    def send(self, value: Any) -> Any:
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        raise typ if val is None else val

    def close(self) -> None:
        pass

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]  # an iterator that is done


_DONE = _Done()


class _Deferred(Coroutine[Any, Any, None]):
    """The rest of a verb called before the logger ran on this loop: start it, wait for room.

    The verb's entry is queued already (at call time): awaiting this starts the logger on the
    running loop and then, if the queue is full, waits for room like the hot path does.
    """

    __slots__ = ("_coro", "_engine", "_may_wait")

    def __init__(self, engine: Engine, may_wait: bool) -> None:
        self._engine = engine
        self._may_wait = may_wait
        self._coro: Coroutine[Any, Any, None] | None = None

    def _inner(self) -> Coroutine[Any, Any, None]:
        if self._coro is None:
            self._coro = self._finish()
        return self._coro

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._inner().throw(typ if val is None else val)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self._inner().__await__()

    async def _finish(self) -> None:
        engine = self._engine
        if not engine.running or engine.loop is not asyncio.get_running_loop():
            await engine.start()
        if self._may_wait and engine.intake.full:
            await engine.intake.room()


class AsyncSessionLogger:
    """Session logger for asyncio code: verbs are awaited, none blocks the event loop.

    Construction does no I/O. ``async with`` (or ``await start()``, or the first verb) opens the
    sinks and starts the writer on the running loop; ``aclose()`` drains and stops. A verb
    queues its entry when it is *called*; awaiting it only waits for room when the queue is
    full (and for the start on first use), so a verb called without ``await`` loses nothing.
    When the loop the logger runs on closes without ``aclose()`` (a second ``asyncio.run``,
    pytest-asyncio's per-test loops), the next loop that uses it takes over and delivers what
    was queued; at interpreter exit an exit hook drains whatever is left.

    Args:
        method: ``"file"``, ``"stdout"``, ``"custom"``, ``"mqtt"``, ``"smtp"`` or a list of them
            (default ``"file"`` unless ``sinks`` is given).
        custom_formatter: ``fmt(entry: dict) -> dict`` applied to every entry before encoding.
        sinks: sink objects, in addition to those named by ``method``.
        max_queue: entries waiting for the writer before the ``overflow`` policy applies
            (default 2,000 with ``overflow="block"``, 10,000 with a drop policy: there a
            full queue costs entries, so the default makes room for a longer burst).
        overflow: what a full queue does to a new log entry: ``"block"`` (default) queues
            it and makes the caller wait for room (``await``; first come first served; a
            cancelled wait loses nothing), so nothing is lost; ``"drop_newest"`` drops
            it; ``"drop_oldest"`` drops the oldest queued log entry to make room. Drops are
            counted (``stats()["dropped"]``, the report) and a ``gap`` entry in the session's
            stream says how many and which seqs. Start and close entries are never dropped.
        batch_size: most entries the writer encodes before it yields to the loop. While
            the queue has room it takes at most 256 a turn (~0.4 ms: the loop's other tasks
            are not held up for long); a full queue, whose callers wait, is taken
            ``batch_size`` at a time.
        linger: seconds an entry that finds the writer idle (or follows a batch of fewer
            than 64 entries) lets more gather before the writer runs, so that a trickle of
            entries is written in batches (a flush, a close or a full queue ends the wait at
            once); ``0``: never wait.
        mask_keys: key substrings whose values are masked in metadata and custom fields
            (``None`` turns masking off).
        on_error: called with a :class:`SinkError` once per sink incident (default: stderr).
        dead_letter_path: JSON Lines file for entries a sink gave up on (``None``: count only).
        close_timeout: seconds without progress after which ``aclose()`` (and ``save_logs()``
            without a timeout) stop waiting for the sinks; a sink that keeps delivering is
            waited for, up to 6 x ``close_timeout`` in all.
        max_message_chars: longest message accepted (``None``: no limit).
        buffer_level: hold a session's entries at or below this level (``"DEBUG"``) and write
            them only if the session fails (it logs ERROR, or closes ``error`` or
            ``interrupted``); on a clean close they are discarded and counted in the close
            entry's ``discarded``. Per session: ``start_session(..., buffer_level=)``.
        buffer_max: most entries held per session; the oldest are evicted (counted).
        idle_timeout: close a session with no activity for this many seconds (``timeout``).
        max_open_sessions: when a new session would exceed it, close the least recently
            active one (``evicted``). Entries for a session the logger closed on its own are
            counted in ``stats()["late_entries"]``, never raised.
        **options: per-method options: ``path=``, ``custom_handler=``, ``file={...}``,
            ``stdout={...}``, ``custom={...}``, ``mqtt={...}``, ``smtp={...}``.
    """

    def __init__(
        self,
        method: str | Sequence[str] | None = None,
        custom_formatter: Formatter | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
        max_queue: int | None = None,
        overflow: Overflow = "block",
        batch_size: int = 1_000,
        linger: float = 0.002,
        mask_keys: Iterable[str] | None = DEFAULT_MASK_KEYS,
        on_error: ErrorHandler | None = None,
        dead_letter_path: str | os.PathLike[str] | None = DEFAULT_DEAD_LETTER_PATH,
        close_timeout: float = 10.0,
        max_message_chars: int | None = 1_000_000,
        buffer_level: int | str | None = None,
        buffer_max: int = 1_000,
        idle_timeout: float | None = None,
        max_open_sessions: int | None = None,
        **options: Any,
    ) -> None:
        self._engine = build_engine(
            method,
            custom_formatter,
            sinks=sinks,
            max_queue=max_queue,
            overflow=overflow,
            batch_size=batch_size,
            linger=linger,
            mask_keys=mask_keys,
            on_error=on_error,
            dead_letter_path=dead_letter_path,
            close_timeout=close_timeout,
            max_message_chars=max_message_chars,
            buffer_level=buffer_level,
            buffer_max=buffer_max,
            idle_timeout=idle_timeout,
            max_open_sessions=max_open_sessions,
            **options,
        )
        self.sinks: list[Sink] = self._engine.sinks
        self.close_timeout = close_timeout
        # The writer runs on the application's loop: while the queue has room, each of its
        # turns takes at most TURN_BATCH entries (loop lag), a full queue batch_size.
        self._engine.writer.turn_batch = min(batch_size, TURN_BATCH)
        # The hot path's references, looked up once.
        self._intake = self._engine.intake
        # Called as self._recorder.log(): a bound method kept in an attribute is a lookup 3.11
        # cannot specialise (~400 instructions an entry).
        self._recorder = self._engine.recorder

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every sink and start the writer on the running loop (idempotent).

        Raises:
            LoggerClosedError: the logger was closed.
            WrongLoopError: the logger runs on another event loop that is still running.
            Exception: whatever a sink's ``open()`` raised (the logger is then closed).
        """
        await self._engine.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- verbs --------------------------------------------------------------------------------
    def start_session(
        self,
        session_id: str,
        metadata: dict[str, Any] | None = None,
        *,
        parent_id: str | None = None,
        buffer_level: int | str | None = None,
    ) -> Awaitable[None]:
        """Start a session and queue its start entry (with ``metadata``); await for room.

        ``parent_id`` (a session id, or another process's :meth:`token`) makes it a child:
        its start entry carries ``parent_session_id``. ``buffer_level`` overrides the
        logger's for this session (``"NOTSET"``: hold nothing).
        """
        engine = self._engine
        loop = _get_running_loop()
        if engine.live_loop is loop:  # as log_entry's: queued now, then room if it filled up
            self._recorder.start(session_id, metadata, parent_id, buffer_level)
            return self._intake.room_wait() if self._intake.full else self._intake.done
        prepared = engine.recorder.prepare_start(session_id, metadata, parent_id, buffer_level)
        return self._queue(engine, engine.recorder.commit_start, prepared, droppable=False)

    def annotate(self, session_id: str, **fields: Any) -> None:
        """Merge ``fields`` into the session's close-entry ``summary`` (masked like custom
        fields); no I/O, nothing to await."""
        self._engine.recorder.annotate(session_id, fields)

    def token(self, session_id: str) -> str:
        """Return a continuation token of an open session: another process passes it as
        ``start_session(child_id, parent_id=token)`` to open a child of it."""
        return self._engine.recorder.token(session_id)

    def log_entry(
        self,
        session_id: str,
        message: str,
        level: int | str = logging.INFO,
        custom_fields: dict[str, Any] | None = None,
        exc_info: ExcInfo = None,
    ) -> Awaitable[None]:
        """Queue one entry of an open session; awaiting waits only when the queue is full.

        ``exc_info=True`` adds the traceback being handled (an exception object: its
        traceback) as the entry's ``exception``.
        """
        if self._engine.live_loop is _get_running_loop():
            # Running on this loop: queued now, in call order; a queue this entry filled makes
            # the caller wait for room after that (the back-pressure), as the sync face's do.
            if exc_info:
                extra = exception_extra(exc_info)
                full = self._recorder.log(session_id, message, level, custom_fields, extra)
            else:
                full = self._recorder.log(session_id, message, level, custom_fields)
            if full:
                return self._intake.room_wait()
            return self._intake.done
        engine = self._engine
        extra = exception_extra(exc_info) if exc_info else None
        prepared = engine.recorder.prepare_log(session_id, message, level, custom_fields, extra)
        return self._queue(engine, engine.recorder.commit_log, prepared, droppable=True)

    def log_record(
        self,
        session_id: str,
        message: str,
        level: int | str,
        custom_fields: dict[str, Any] | None = None,
        *,
        exception: str | None = None,
        origin: Mapping[str, Any] | None = None,
    ) -> Awaitable[None]:
        """Queue an entry that comes from another logging system (the stdlib bridge's verb).

        Like :meth:`log_entry`, plus ``exception`` (a traceback already formatted) and
        ``origin``: top-level keys that say where the entry came from (``logger``,
        ``source``, ``stack``; see :data:`ORIGIN_KEYS`).
        """
        engine = self._engine
        extra = record_extra(exception, origin)
        loop = _get_running_loop()
        if engine.live_loop is loop:
            # as log_entry's
            if self._recorder.log(session_id, message, level, custom_fields, extra):
                return self._intake.room_wait()
            return self._intake.done
        prepared = engine.recorder.prepare_log(session_id, message, level, custom_fields, extra)
        if loop is not None and engine.other_loop_alive(loop):
            # A record from a thread that runs a loop of its own (a library's): nobody can
            # await here for this logger's loop, so queue it now without waiting for room.
            engine.recorder.commit_log(prepared)
            return _DONE
        return self._queue(engine, engine.recorder.commit_log, prepared, droppable=True)

    def close_session(self, session_id: str, status: str = "closed") -> Awaitable[None]:
        """Close a session: its close entry carries ``duration_s``, ``entries`` and ``status``."""
        engine = self._engine
        loop = _get_running_loop()
        if engine.live_loop is loop:  # as start_session's
            self._recorder.close(session_id, status)
            return self._intake.room_wait() if self._intake.full else self._intake.done
        sid = engine.recorder.prepare_close(session_id, status)
        return self._queue(engine, lambda s: engine.recorder.close(s, status), sid, False)

    def _queue(
        self, engine: Engine, commit: Callable[[Any], None], prepared: Any, droppable: bool
    ) -> Awaitable[None]:
        loop = _get_running_loop()
        intake = engine.intake
        if loop is not None:
            engine.check_loop(loop)
        else:
            # No loop in this thread (a worker thread, e.g. a plain `def` route): wait here
            # for room like the sync face, then queue.
            if engine.running and not (droppable and intake.drops) and intake.full:
                intake.wait_space_sync()
            commit(prepared)
            # Awaited on a loop (run_coroutine_threadsafe), the rest starts the logger there.
            return _DONE if engine.running else _Deferred(engine, may_wait=False)
        commit(prepared)  # queued now; awaiting only starts the logger or waits for room
        may_wait = not (droppable and intake.drops)
        if engine.live_loop is not loop:
            return _Deferred(engine, may_wait)
        if may_wait and intake.full:
            return intake.room_wait()
        return intake.done

    def session(
        self,
        session_id: str,
        metadata: dict[str, Any] | None = None,
        *,
        parent: SessionRef | None = None,
        buffer_level: int | str | None = None,
    ) -> AsyncSessionHandle:
        """Return an ``async with`` handle: starts the session, closes it (``error`` if it
        raised); its level methods queue at call time like the logger's verbs. ``parent``
        (a handle, a session id or a token) makes it a child session."""
        return AsyncSessionHandle(
            self, session_id, metadata, parent=parent_id_of(parent), buffer_level=buffer_level
        )

    async def save_logs(self, timeout: float | None = None) -> DeliveryReport:
        """Wait until every entry accepted so far is delivered or given up by every sink.

        Args:
            timeout: seconds to wait at most. Without it, give up after ``close_timeout``
                seconds in which no sink made progress; the report shows what is pending.
        """
        return await self._engine.flush(timeout)

    async def aclose(self, timeout: float | None = None) -> DeliveryReport:
        """Close open sessions (status ``interrupted``), drain every sink, stop; idempotent.

        Args:
            timeout: a hard limit in seconds for the drain. Without it the drain goes on while
                the sinks make progress and gives up after ``close_timeout`` seconds without
                any; what is not delivered then is dead-lettered and reported.
        """
        return await self._engine.stop(timeout)

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the logger begins to close, before it interrupts the
        sessions still open: the moment to close a long-lived session with its own status
        (the stdlib bridge closes its per-process session there). Errors are reported."""
        self._engine.closing_hooks.append(callback)

    # -- introspection ------------------------------------------------------------------------
    def is_open(self, session_id: str) -> bool:
        """Whether a session with this id is open now (e.g. before using a client-chosen id)."""
        return self._engine.recorder.is_open(session_id)

    def stats(self) -> dict[str, Any]:
        """Return counters: accepted entries, queue depth, open sessions, and per-sink stats."""
        return self._engine.stats()

    def health(self) -> dict[str, Any]:
        """Return ``{"ok": bool, "sinks": {name: healthy}}``: whether every sink's last attempt
        succeeded (and, for network sinks, whether they are connected)."""
        return self._engine.health()

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` has begun."""
        return self._engine.state in ("closing", "closed")

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sinks)
        return f"<AsyncSessionLogger [{names}] {self._engine.state}>"
