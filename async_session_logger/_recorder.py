"""The I/O-free half of every verb: validate, snapshot, number, hand off. Thread-safe."""

from __future__ import annotations

import itertools
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from time import time_ns
from typing import Any, Final, NoReturn

from ._encode import describe
from ._entry import CLOSE, LOG, START, EntryBuilder, Extra, Masker
from ._errors import (
    ConfigurationError,
    DuplicateSessionError,
    EntryTooLargeError,
    InvalidMessageError,
    LoggerClosedError,
    SessionClosedError,
    UnknownSessionError,
)
from ._intake import Intake
from ._session import CLOSE_LEVELS, FAILED, STATUSES, SessionState, make_token, parent_from
from ._trace import trace_fields
from ._validate import LEVELS_BY_NAME, check_fields, check_session_id, resolve_level

__all__ = ["STATUSES", "TAPS", "Recorder", "Tap"]

Hold = int  # a levelno: entries at or below it are held (buffer_level); -1 holds nothing

_RECENTLY_CLOSED: Final = 10_000
# Statuses the logger gives sessions itself: a late entry for such a session is counted, not
# raised (the request that owned it may still be running).
_CLOSED_BY_LOGGER: Final = frozenset({"timeout", "evicted"})
_OTEL: Final = "opentelemetry.trace"
_modules = sys.modules

# Observers of every record handed off by any recorder, at call time (testing.capture_sessions):
# called as tap(recorder, record) under the recorder's lock, so in seq order.
Tap = Callable[["Recorder", Any], None]
TAPS: list[Tap] = []


class Recorder:
    """Session registry and record hand-off shared by the async core and the sync facade.

    Every verb runs in the caller's thread and never blocks: it raises programmer errors at the
    call site, builds a :class:`Record` snapshot under one lock (so a session's seqs reach the
    intake in order, and nothing can follow its close entry), and pushes it to the intake.
    """

    def __init__(
        self,
        intake: Intake,
        *,
        max_message_chars: int | None,
        buffer_level: int | str | None = None,
        buffer_max: int = 1_000,
        idle_timeout: float | None = None,
        max_open_sessions: int | None = None,
    ) -> None:
        if max_message_chars is not None and max_message_chars < 1:
            raise ConfigurationError("max_message_chars must be >= 1 or None")
        if buffer_max < 1:
            raise ConfigurationError("buffer_max must be >= 1")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigurationError("idle_timeout must be > 0 seconds or None")
        if max_open_sessions is not None and max_open_sessions < 1:
            raise ConfigurationError("max_open_sessions must be >= 1 or None")
        self.hold_at = _hold_level(buffer_level)
        self.buffer_max = buffer_max
        self.idle_timeout = idle_timeout
        self.max_open_sessions = max_open_sessions
        # Recency order of the open sessions, kept only when something needs it.
        self.tracking = idle_timeout is not None or max_open_sessions is not None
        # Counters for stats(): held entries now and in all, discarded, evicted from a buffer;
        # sessions closed for idleness or evicted; entries for sessions the logger closed.
        self.held_now = 0
        self.discarded = 0
        self.buffer_evicted = 0
        self.timed_out = 0
        self.evicted_sessions = 0
        self.late_entries = 0
        self.intake = intake
        # The engine's entry builder (formatter, masking): capture_sessions() builds the
        # entries it shows at call time with its own copy of it.
        self.builder: EntryBuilder | None = None
        # Takes the custom fields' call-time snapshot (the engine's masker, from use_builder()).
        # Called as self._masker.snapshot(): a bound method kept in an attribute is a lookup
        # the interpreter cannot specialise, ~400 instructions an entry.
        self._masker = Masker(None)
        # No limit: the largest size (one comparison a verb, no `and` with a test for None).
        self.max_message_chars = max_message_chars or sys.maxsize
        self.accepted = 0
        self.closed = False
        self._lock = threading.RLock()  # see log(): why an RLock
        self._open: dict[str, SessionState] = OrderedDict() if self.tracking else {}
        self._runs = itertools.count()
        # id -> the status it closed with; bounded (the larger of 10,000 and the open bound).
        self._recently_closed: OrderedDict[str, str] = OrderedDict()
        self._closed_bound = max(_RECENTLY_CLOSED, max_open_sessions or 0)
        # Sessions a parent process had open when this process forked from it: id -> parent pid.
        self._inherited: dict[str, int] = {}

    def use_builder(self, builder: EntryBuilder) -> None:
        """Take the engine's builder: its masker snapshots custom fields at call time."""
        self.builder = builder
        self._masker = builder.masker

    def after_fork(self, parent_pid: int) -> None:
        """In a forked child: fresh lock and counters; the parent's open sessions stay its own.

        A child that logged into a session the parent opened would hand out the same seqs as
        the parent: such a call raises :class:`UnknownSessionError` saying so.
        """
        self._lock = threading.RLock()  # see log(): why an RLock
        self._inherited = dict.fromkeys(self._open, parent_pid)
        self._open = OrderedDict() if self.tracking else {}
        self.accepted = 0
        self.held_now = 0

    # -- verbs --------------------------------------------------------------------------------
    def start(
        self,
        session_id: object,
        metadata: object,
        parent_id: object = None,
        buffer_level: int | str | None = None,
    ) -> str:
        """Register a session and hand off its start entry; return the checked id."""
        prepared = self.prepare_start(session_id, metadata, parent_id, buffer_level)
        self.commit_start(prepared)
        return prepared[0]

    def log(
        self,
        session_id: str,
        message: object,
        level: object,
        custom_fields: object,
        extra: Extra = None,
    ) -> bool:
        """Hand off one log entry of an open session; return whether the intake is now full.

        ``extra`` holds top-level keys the faces add (``exception``, ``logger``, ``source``);
        ``trace_id``/``span_id`` join it when an OpenTelemetry span is current.

        The hot path: :meth:`prepare_log` and :meth:`commit_log` written out in one body,
        since two extra calls would cost about a tenth of the verb. Keep the three in step.
        """
        if type(level) is int and level >= 0:
            levelno = level
        elif type(level) is str and level in LEVELS_BY_NAME:  # "INFO": skip the call
            levelno = LEVELS_BY_NAME[level]
        else:
            levelno = resolve_level(level)
        text = message if type(message) is str else _to_str(message)
        if len(text) > self.max_message_chars:
            raise EntryTooLargeError(
                f"message is {len(text)} characters long, the limit is "
                f"{self.max_message_chars} (max_message_chars)",
                limit=self.max_message_chars,
            )
        fields: Any = None
        if custom_fields is not None:
            # The call-time snapshot; check_fields() explains anything but a dict.
            fields = (
                self._masker.snapshot(custom_fields)
                if type(custom_fields) is dict
                else check_fields(custom_fields, "custom_fields")
            )
        if _OTEL in _modules:
            extra = trace_fields(_modules[_OTEL], extra)
        if extra is not None:
            fields = (fields, extra)
        intake = self.intake
        buf = intake.buf
        lock = self._lock
        # acquire() inside the `try`, on an RLock, with a release that may find it not held:
        # half the instructions of `with` (whose __enter__/__exit__ lookups and argument
        # tuples cost ~900 an entry, measured) and as safe under Ctrl-C. KeyboardInterrupt
        # can be raised right after acquire() returns (the `finally` releases) or inside an
        # acquire() that waits (not acquired: release() raises RuntimeError, ignored; an
        # RLock knows its owner, so it never releases another thread's hold). `acquire()`
        # then `try` left the lock held for ever (tests/faults/test_interrupts.py).
        try:
            lock.acquire()
            try:
                session = self._open.get(session_id)
            except TypeError:  # unhashable: certainly not a session id
                session = None
            if session is None:
                return self._late(session_id)
            now = time_ns()
            if levelno <= session.hold_at:
                self._hold(session, (now, levelno, text, fields))
                return False
            if levelno >= 40:
                session.errors += 1
                if session.hold_at >= 0:  # the session failed: its held entries go first
                    self._release(session_id, session)
            if self.tracking:
                session.last_ns = now
                self._open.move_to_end(session_id)  # type: ignore[attr-defined]
            seq = session.seq = session.seq + 1
            if levelno != 20:  # INFO's count is seq less the others' (close_fields())
                levels = session.levels
                levels[levelno] = levels.get(levelno, 0) + 1
            self.accepted += 1
            record = (LOG, session_id, seq, now, levelno, text, fields, session.run)
            if TAPS:
                _tap(self, record)
            if intake.drops and len(buf) >= intake.maxsize:
                intake.overflow_log(record)  # a drop policy: never wait
                return False
            buf.append(record)
            if intake.sleeping:
                intake.wake()
        finally:
            try:
                lock.release()
            except RuntimeError:  # interrupted while waiting in acquire(): not ours
                pass
        return len(buf) >= intake.limit

    def prepare_start(
        self,
        session_id: object,
        metadata: object,
        parent_id: object = None,
        buffer_level: int | str | None = None,
    ) -> tuple[str, Any, str | None, str | None, int]:
        """Check a start now (errors at the call site); :meth:`commit_start` hands it off later.

        ``parent_id`` is a session id or a continuation token (:meth:`token`);
        ``buffer_level`` overrides the logger's for this session (``0``/``"NOTSET"``: off).
        """
        sid = check_session_id(session_id)
        fields: Any = check_fields(metadata, "metadata")
        parent, root = (None, None) if parent_id is None else parent_from(parent_id)
        hold_at = self.hold_at if buffer_level is None else _hold_level(buffer_level)
        extra: Extra = None if parent is None else {"parent_session_id": parent}
        if _OTEL in _modules:
            extra = trace_fields(_modules[_OTEL], extra)
        if extra is not None:
            fields = (fields, extra)
        if self.closed:
            self._check_open()
        if sid in self._open:
            raise DuplicateSessionError(
                f"session {sid!r} is already open; close it first", session_id=sid
            )
        return sid, fields, parent, root, hold_at

    def commit_start(self, prepared: tuple[str, Any, str | None, str | None, int]) -> None:
        """Hand off a start checked by :meth:`prepare_start` (re-checked under the lock)."""
        sid, fields, parent, root, hold_at = prepared
        now = time_ns()
        lock = self._lock
        try:  # see log(): acquire() inside the `try`, and why
            lock.acquire()
            if self.closed:
                self._check_open()
            if sid in self._open:
                raise DuplicateSessionError(
                    f"session {sid!r} is already open; close it first", session_id=sid
                )
            bound = self.max_open_sessions
            if bound is not None:
                while len(self._open) >= bound:  # the least recently active one makes room
                    old_id, old = self._open.popitem(last=False)  # type: ignore[call-arg]
                    self.evicted_sessions += 1
                    self._push_close(old_id, old, "evicted")
            if parent is not None and root is None:
                known = self._open.get(parent)
                root = known.root if known is not None else parent
            session = SessionState(now, next(self._runs), hold_at, parent, root or sid)
            self._open[sid] = session
            if sid in self._recently_closed:
                del self._recently_closed[sid]
            if self._inherited:
                self._inherited.pop(sid, None)
            self.accepted += 1
            record = (START, sid, 0, now, 20, "Session started", fields, session.run)
            if TAPS:
                _tap(self, record)
            self._hand_off(record)
        finally:
            try:
                lock.release()
            except RuntimeError:  # interrupted while waiting in acquire()
                pass

    def prepare_log(
        self,
        session_id: str,
        message: object,
        level: object,
        custom_fields: object,
        extra: Extra = None,
    ) -> tuple[str, str, int, Any]:
        """Check a log entry now; :meth:`commit_log` numbers and hands it off later."""
        levelno = level if type(level) is int and level >= 0 else resolve_level(level)
        text = message if type(message) is str else _to_str(message)
        if len(text) > self.max_message_chars:
            raise EntryTooLargeError(
                f"message is {len(text)} characters long, the limit is "
                f"{self.max_message_chars} (max_message_chars)",
                limit=self.max_message_chars,
            )
        fields: Any = None
        if custom_fields is not None:
            fields = (
                self._masker.snapshot(custom_fields)
                if type(custom_fields) is dict
                else check_fields(custom_fields, "custom_fields")
            )
        if _OTEL in _modules:
            extra = trace_fields(_modules[_OTEL], extra)
        if extra is not None:
            fields = (fields, extra)
        if not self.is_open(session_id) and not self._closed_by_logger(session_id):
            self._missing(session_id)
        return session_id, text, levelno, fields

    def commit_log(self, prepared: tuple[str, str, int, Any]) -> None:
        """Number and hand off an entry checked by :meth:`prepare_log`."""
        session_id, text, levelno, fields = prepared
        intake = self.intake
        lock = self._lock
        try:  # see log(): acquire() inside the `try`, and why
            lock.acquire()
            session = self._open.get(session_id)
            if session is None:
                self._late(session_id)
                return
            now = time_ns()
            if levelno <= session.hold_at:
                self._hold(session, (now, levelno, text, fields))
                return
            if levelno >= 40:
                session.errors += 1
                if session.hold_at >= 0:
                    self._release(session_id, session)
            if self.tracking:
                session.last_ns = now
                self._open.move_to_end(session_id)  # type: ignore[attr-defined]
            seq = session.seq = session.seq + 1
            if levelno != 20:  # INFO's count is seq less the others' (close_fields())
                levels = session.levels
                levels[levelno] = levels.get(levelno, 0) + 1
            self.accepted += 1
            record = (LOG, session_id, seq, now, levelno, text, fields, session.run)
            if TAPS:
                _tap(self, record)
            if intake.drops and len(intake.buf) >= intake.maxsize:
                intake.overflow_log(record)
                return
            intake.buf.append(record)
            if intake.sleeping:
                intake.wake()
        finally:
            try:
                lock.release()
            except RuntimeError:  # interrupted while waiting in acquire()
                pass

    def prepare_close(self, session_id: str, status: str = "closed") -> str:
        """Check a close now; :meth:`close` hands it off later."""
        if status not in STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(STATUSES)}")
        if not self.is_open(session_id) and not self._closed_by_logger(session_id):
            self._missing(session_id)
        return session_id

    def close(self, session_id: str, status: str = "closed") -> None:
        """Hand off the close entry of an open session and forget the session."""
        if status not in STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(STATUSES)}")
        lock = self._lock
        try:  # see log(): acquire() inside the `try`, and why
            lock.acquire()
            try:
                session = self._open.pop(session_id, None)
            except TypeError:
                session = None
            if session is None:
                if self._closed_by_logger(session_id):
                    return  # the logger closed it already (idle, evicted): nothing to close
                self._missing(session_id)
            self._push_close(session_id, session, status)
        finally:
            try:
                lock.release()
            except RuntimeError:  # interrupted while waiting in acquire()
                pass

    def annotate(self, session_id: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the session's close-entry ``summary`` (call-time snapshot)."""
        snapshot = check_fields(fields, "annotate() fields")
        with self._lock:
            try:
                session = self._open.get(session_id)
            except TypeError:
                session = None
            if session is None:
                self._late(session_id, count=False)
                return
            if snapshot:
                if session.summary is None:
                    session.summary = {}
                session.summary.update(snapshot)
            if self.tracking:
                session.last_ns = time_ns()
                self._open.move_to_end(session_id)  # type: ignore[attr-defined]

    def token(self, session_id: str) -> str:
        """Return the continuation token of an open session (see ``parent_id=``)."""
        with self._lock:
            session = self._open.get(session_id)
            if session is None:
                self._missing(session_id)
            return make_token(session_id, session.root)

    def close_idle(self, now_ns: int) -> int:
        """Close the sessions idle for ``idle_timeout`` seconds (status ``timeout``)."""
        if self.idle_timeout is None:
            return 0
        cutoff = now_ns - int(self.idle_timeout * 1e9)
        closed = 0
        with self._lock:
            open_ = self._open
            while open_:
                sid = next(iter(open_))  # the least recently active (recency order)
                session = open_[sid]
                if session.last_ns > cutoff:
                    break
                del open_[sid]
                self.timed_out += 1
                self._push_close(sid, session, "timeout")
                closed += 1
        return closed

    def interrupt_all(self) -> int:
        """Close every open session with status ``interrupted``; return how many; stop intake."""
        with self._lock:
            self.closed = True
            count = len(self._open)
            for sid, session in list(self._open.items()):
                self._push_close(sid, session, "interrupted")  # held entries are written
            self._open.clear()
        return count

    def refuse_more(self) -> None:
        """Make every later verb raise LoggerClosedError (a close that gave up on the loop)."""
        with self._lock:
            self.closed = True
            self._open.clear()  # verbs on them now find no session, then the closed logger

    # -- helpers ------------------------------------------------------------------------------
    def _push_close(self, session_id: str, session: SessionState, status: str) -> None:
        # Under the lock: nothing of this session can be handed off after its close entry.
        if session.held:
            if status in FAILED:
                self._release(session_id, session)
            else:
                self.held_now -= len(session.held)
                self.discarded += len(session.held)
                session.evicted += len(session.held)
                session.held = None
        fields: Any = session.close_fields(status, session.evicted)
        self._recently_closed[session_id] = status
        self._recently_closed.move_to_end(session_id)
        if len(self._recently_closed) > self._closed_bound:
            self._recently_closed.popitem(last=False)
        if _OTEL in _modules:
            fields = trace_fields(_modules[_OTEL], fields)
        self.accepted += 1
        record = (
            CLOSE,
            session_id,
            session.seq + 1,
            time_ns(),
            CLOSE_LEVELS.get(status, 20),
            "Session closed",
            fields,
            session.run,
        )
        if TAPS:
            _tap(self, record)
        self._hand_off(record)

    def _hand_off(self, record: tuple[Any, ...]) -> None:
        # Under the lock: queue a start or close record. Appended as log() appends (a drop
        # policy's push() first makes room by dropping a queued log entry: never this one).
        intake = self.intake
        if intake.drops:
            intake.push(record)
            return
        intake.buf.append(record)
        if intake.sleeping:
            intake.wake()

    def _hold(self, session: SessionState, entry: tuple[int, int, str, Any]) -> None:
        # Under the lock: keep an entry at or below buffer_level until the session fails.
        if session.hold(entry, self.buffer_max):
            self.buffer_evicted += 1
            self.discarded += 1
        else:
            self.held_now += 1

    def _release(self, session_id: str, session: SessionState) -> None:
        # Under the lock: the session failed; write what it held, each with the next seq (in
        # call order, call-time timestamps), before the entry that made it fail.
        held = session.take_held()
        self.held_now -= len(held)
        levels = session.levels
        intake = self.intake
        for stamp, levelno, text, fields in held:
            seq = session.seq = session.seq + 1
            if levelno != 20:
                levels[levelno] = levels.get(levelno, 0) + 1
            self.accepted += 1
            record = (LOG, session_id, seq, stamp, levelno, text, fields, session.run)
            if TAPS:
                _tap(self, record)
            if intake.drops and len(intake.buf) >= intake.maxsize:
                intake.overflow_log(record)
            else:
                intake.buf.append(record)  # past the bound: held entries are bounded per session
        if held and intake.sleeping:
            intake.wake()

    def _closed_by_logger(self, session_id: Any) -> bool:
        try:
            return self._recently_closed.get(session_id) in _CLOSED_BY_LOGGER
        except TypeError:
            return False

    def _late(self, session_id: object, count: bool = True) -> bool:
        # Under the lock: a verb for a session that is not open. The logger closed it on its
        # own (idle_timeout, max_open_sessions): counted, not raised into the request that
        # still holds it. Anything else is the caller's error.
        if self._closed_by_logger(session_id):
            if count:
                self.late_entries += 1
            return False
        self._missing(session_id)

    def _check_open(self) -> None:
        if self.closed:
            raise LoggerClosedError("the logger is closed")

    def _missing(self, session_id: object) -> NoReturn:
        self._check_open()
        sid = check_session_id(session_id)
        parent = self._inherited.get(sid)
        if parent is not None:
            raise UnknownSessionError(
                f"session {sid!r} was started by the parent process (pid {parent}) before this "
                "process forked from it; a forked process logs into sessions it starts itself",
                session_id=sid,
            )
        if sid in self._recently_closed:
            raise SessionClosedError(f"session {sid!r} is already closed", session_id=sid)
        raise UnknownSessionError(
            f"session {sid!r} was never started; call start_session({sid!r}) first",
            session_id=sid,
        )

    @property
    def open_sessions(self) -> list[str]:
        """Ids of the sessions open now."""
        with self._lock:
            return list(self._open)

    def is_open(self, session_id: str) -> bool:
        """Whether a session with this id is open now."""
        try:
            return session_id in self._open
        except TypeError:  # unhashable: not an id
            return False

    def has_errors(self, session_id: str) -> bool:
        """Whether an open session logged ERROR or worse."""
        session = self._open.get(session_id)
        return bool(session and session.errors)


def _hold_level(level: int | str | None) -> int:
    # buffer_level -> the highest levelno held; None, 0 and "NOTSET" hold nothing.
    if level is None:
        return -1
    levelno = resolve_level(level)
    return levelno if levelno > 0 else -1


def _tap(recorder: Recorder, record: Any) -> None:
    for tap in tuple(TAPS):  # a tap removed meanwhile must not make the loop skip one
        try:
            tap(recorder, record)
        except Exception:  # an observer never breaks a verb
            pass


def _to_str(message: object) -> str:
    try:
        return str(message)
    except Exception as exc:
        raise InvalidMessageError(
            f"message could not be converted to str: {describe(exc)}"
        ) from exc
