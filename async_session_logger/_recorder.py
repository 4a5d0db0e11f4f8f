"""The I/O-free half of every verb: validate, snapshot, number, hand off. Thread-safe."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, NoReturn

from ._encode import describe
from ._entry import CLOSE, LOG, START, EntryBuilder
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
from ._trace import trace_fields
from ._validate import check_fields, check_session_id, resolve_level

__all__ = ["STATUSES", "TAPS", "Recorder", "Tap"]

STATUSES: Final = ("closed", "interrupted", "error")
_RECENTLY_CLOSED: Final = 10_000
_OTEL: Final = "opentelemetry.trace"
_modules = sys.modules

# Observers of every record handed off by any recorder, at call time (testing.capture_sessions):
# called as tap(recorder, record) under the recorder's lock, so in seq order.
Tap = Callable[["Recorder", Any], None]
TAPS: list[Tap] = []


class _Session:
    # seq counts the log entries too: the start entry is seq 0, so entries logged == seq.
    __slots__ = ("errors", "run", "seq", "start_mono", "start_ns")

    def __init__(self, start_ns: int, run: int) -> None:
        # Tells apart the runs of a reused id, whose records may be queued at the same time.
        self.run = run
        self.seq = 0
        self.errors = 0
        self.start_ns = start_ns
        self.start_mono = time.monotonic_ns()


class Recorder:
    """Session registry and record hand-off shared by the async core and the sync facade.

    Every verb runs in the caller's thread and never blocks: it raises programmer errors at the
    call site, builds a :class:`Record` snapshot under one lock (so a session's seqs reach the
    intake in order, and nothing can follow its close entry), and pushes it to the intake.
    """

    def __init__(self, intake: Intake, *, max_message_chars: int | None) -> None:
        if max_message_chars is not None and max_message_chars < 1:
            raise ConfigurationError("max_message_chars must be >= 1 or None")
        self.intake = intake
        # The engine's entry builder (formatter, masking): capture_sessions() builds the
        # entries it shows at call time with its own copy of it.
        self.builder: EntryBuilder | None = None
        self.max_message_chars = max_message_chars or 0
        self.accepted = 0
        self.closed = False
        self._lock = threading.Lock()
        self._open: dict[str, _Session] = {}
        self._runs = itertools.count()
        self._recently_closed: OrderedDict[str, None] = OrderedDict()
        # Sessions a parent process had open when this process forked from it: id -> parent pid.
        self._inherited: dict[str, int] = {}

    def after_fork(self, parent_pid: int) -> None:
        """In a forked child: fresh lock and counters; the parent's open sessions stay its own.

        A child that logged into a session the parent opened would hand out the same seqs as
        the parent: such a call raises :class:`UnknownSessionError` saying so.
        """
        self._lock = threading.Lock()
        self._inherited = dict.fromkeys(self._open, parent_pid)
        self._open = {}
        self.accepted = 0

    # -- verbs --------------------------------------------------------------------------------
    def start(self, session_id: object, metadata: object) -> str:
        """Register a session and hand off its start entry; return the checked id."""
        prepared = self.prepare_start(session_id, metadata)
        self.commit_start(prepared)
        return prepared[0]

    def log(
        self,
        session_id: str,
        message: object,
        level: object,
        custom_fields: object,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """Hand off one log entry of an open session; return whether the intake is now full.

        ``extra`` holds top-level keys the faces add (``exception``, ``logger``, ``source``);
        ``trace_id``/``span_id`` join it when an OpenTelemetry span is current.

        The hot path: :meth:`prepare_log` and :meth:`commit_log` written out in one body,
        since two extra calls would cost about a tenth of the verb. Keep the three in step.
        """
        levelno = level if type(level) is int and level >= 0 else resolve_level(level)
        text = message if type(message) is str else _to_str(message)
        if self.max_message_chars and len(text) > self.max_message_chars:
            raise EntryTooLargeError(
                f"message is {len(text)} characters long, the limit is "
                f"{self.max_message_chars} (max_message_chars)",
                limit=self.max_message_chars,
            )
        fields: Any = None
        if custom_fields is not None:
            # The call-time snapshot; check_fields() explains anything but a dict.
            fields = (
                dict(custom_fields)
                if type(custom_fields) is dict
                else check_fields(custom_fields, "custom_fields")
            )
        if _OTEL in _modules:
            extra = trace_fields(_modules[_OTEL], extra)
        if extra is not None:
            fields = (fields, extra)
        intake = self.intake
        buf = intake.buf
        with self._lock:
            try:
                session = self._open.get(session_id)
            except TypeError:  # unhashable: certainly not a session id
                session = None
            if session is None:
                self._missing(session_id)
            seq = session.seq = session.seq + 1
            if levelno >= 40:
                session.errors += 1
            self.accepted += 1
            record = (LOG, session_id, seq, time.time_ns(), levelno, text, fields, session.run)
            if TAPS:
                _tap(self, record)
            if intake.drops and len(buf) >= intake.maxsize:
                intake.overflow_log(record)  # a drop policy: never wait
                return False
            buf.append(record)
            if intake.sleeping:
                intake.wake()
        return len(buf) >= intake.limit

    def prepare_start(self, session_id: object, metadata: object) -> tuple[str, Any]:
        """Check a start now (errors at the call site); :meth:`commit_start` hands it off later."""
        sid = check_session_id(session_id)
        fields: Any = check_fields(metadata, "metadata")
        if _OTEL in _modules:
            extra = trace_fields(_modules[_OTEL], None)
            if extra is not None:
                fields = (fields, extra)
        self._check_open()
        if sid in self._open:
            raise DuplicateSessionError(
                f"session {sid!r} is already open; close it first", session_id=sid
            )
        return sid, fields

    def commit_start(self, prepared: tuple[str, Any]) -> None:
        """Hand off a start checked by :meth:`prepare_start` (re-checked under the lock)."""
        sid, fields = prepared
        now = time.time_ns()
        with self._lock:
            self._check_open()
            if sid in self._open:
                raise DuplicateSessionError(
                    f"session {sid!r} is already open; close it first", session_id=sid
                )
            session = self._open[sid] = _Session(now, next(self._runs))
            self._recently_closed.pop(sid, None)
            self._inherited.pop(sid, None)
            self.accepted += 1
            record = (START, sid, 0, now, 20, "Session started", fields, session.run)
            if TAPS:
                _tap(self, record)
            self.intake.push(record)

    def prepare_log(
        self,
        session_id: str,
        message: object,
        level: object,
        custom_fields: object,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, str, int, Any]:
        """Check a log entry now; :meth:`commit_log` numbers and hands it off later."""
        levelno = level if type(level) is int and level >= 0 else resolve_level(level)
        text = message if type(message) is str else _to_str(message)
        if self.max_message_chars and len(text) > self.max_message_chars:
            raise EntryTooLargeError(
                f"message is {len(text)} characters long, the limit is "
                f"{self.max_message_chars} (max_message_chars)",
                limit=self.max_message_chars,
            )
        fields: Any = None
        if custom_fields is not None:
            fields = (
                dict(custom_fields)
                if type(custom_fields) is dict
                else check_fields(custom_fields, "custom_fields")
            )
        if _OTEL in _modules:
            extra = trace_fields(_modules[_OTEL], extra)
        if extra is not None:
            fields = (fields, extra)
        if not self.is_open(session_id):
            self._missing(session_id)
        return session_id, text, levelno, fields

    def commit_log(self, prepared: tuple[str, str, int, Any]) -> None:
        """Number and hand off an entry checked by :meth:`prepare_log`."""
        session_id, text, levelno, fields = prepared
        intake = self.intake
        with self._lock:
            session = self._open.get(session_id)
            if session is None:
                self._missing(session_id)
            seq = session.seq = session.seq + 1
            if levelno >= 40:
                session.errors += 1
            self.accepted += 1
            record = (LOG, session_id, seq, time.time_ns(), levelno, text, fields, session.run)
            if TAPS:
                _tap(self, record)
            if intake.drops and len(intake.buf) >= intake.maxsize:
                intake.overflow_log(record)
                return
            intake.buf.append(record)
            if intake.sleeping:
                intake.wake()

    def prepare_close(self, session_id: str, status: str = "closed") -> str:
        """Check a close now; :meth:`close` hands it off later."""
        if status not in STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(STATUSES)}")
        if not self.is_open(session_id):
            self._missing(session_id)
        return session_id

    def close(self, session_id: str, status: str = "closed") -> None:
        """Hand off the close entry of an open session and forget the session."""
        if status not in STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(STATUSES)}")
        with self._lock:
            try:
                session = self._open.pop(session_id, None)
            except TypeError:
                session = None
            if session is None:
                self._missing(session_id)
            self._push_close(session_id, session, status)

    def interrupt_all(self) -> int:
        """Close every open session with status ``interrupted``; return how many; stop intake."""
        with self._lock:
            self.closed = True
            count = len(self._open)
            for sid, session in list(self._open.items()):
                self._push_close(sid, session, "interrupted")
            self._open.clear()
        return count

    def refuse_more(self) -> None:
        """Make every later verb raise LoggerClosedError (a close that gave up on the loop)."""
        with self._lock:
            self.closed = True
            self._open.clear()  # verbs on them now find no session, then the closed logger

    # -- helpers ------------------------------------------------------------------------------
    def _push_close(self, session_id: str, session: _Session, status: str) -> None:
        # Under the lock: nothing of this session can be handed off after its close entry.
        now = time.time_ns()
        summary: Any = {
            "duration_s": round((time.monotonic_ns() - session.start_mono) / 1e9, 6),
            "entries": session.seq,
            "status": status,
        }
        level = 40 if status == "error" else 30 if status == "interrupted" else 20
        self._recently_closed[session_id] = None
        if len(self._recently_closed) > _RECENTLY_CLOSED:
            self._recently_closed.popitem(last=False)
        if _OTEL in _modules:
            summary = trace_fields(_modules[_OTEL], summary)
        self.accepted += 1
        record = (
            CLOSE,
            session_id,
            session.seq + 1,
            now,
            level,
            "Session closed",
            summary,
            session.run,
        )
        if TAPS:
            _tap(self, record)
        self.intake.push(record)

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
