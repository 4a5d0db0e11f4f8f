"""Capture the entries of every logger in tests: :func:`capture_sessions` and its results.

``with capture_sessions() as capture:`` sees every start, log and close entry of every logger
(both faces, created before or inside the block) from the moment the verb is called: no
``save_logs()`` needed. The entries are the dicts the sinks receive (masking and the
``custom_formatter`` applied); the sinks still receive everything, as without the capture.
The pytest plugin wraps it as the ``session_log`` fixture.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from ._entry import EntryBuilder, Masker, Record
from ._errors import SessionLoggerError
from ._recorder import TAPS, Recorder

__all__ = ["SessionCapture", "SessionNotCapturedError", "capture_sessions"]

# Containers deeper than this are shared, not copied: the masker and the encoder stop at 64.
_COPY_DEPTH: Final = 70
# How many captured ids an error message lists.
_LISTED_IDS: Final = 20


class SessionNotCapturedError(SessionLoggerError, KeyError):
    """Raised when a capture holds no entry of the session asked for (``session_id``)."""

    def __init__(self, message: str, *, session_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id

    def __str__(self) -> str:
        # KeyError's __str__ would repr() the message; keep it readable.
        return str(self.args[0])


class SessionCapture:
    """The entries captured by :func:`capture_sessions`, as the sinks receive them.

    Thread-safe. Entries are built when read, from the call-time records: a logging call pays
    only a copy of its fields' containers and an append, and reading runs the logger's
    formatter once more per entry, in the reading thread. Every query reads the entries
    captured so far; entries logged later show up at the next read.
    """

    def __init__(self) -> None:
        # Taken by the taps, under each recorder's lock: hold it for list operations only.
        self._lock = threading.Lock()
        # Serialises building (the builders' clocks are not thread-safe, and the entries must
        # stay in tap order). Never taken by a tap, so a formatter that logs cannot deadlock;
        # reentrant for a formatter that reads the capture.
        self._build_lock = threading.RLock()
        self._pending: list[tuple[Recorder, Record]] = []
        self._entries: list[dict[str, Any]] = []
        self._builders: weakref.WeakKeyDictionary[Recorder, EntryBuilder] = (
            weakref.WeakKeyDictionary()
        )

    # -- the tap ------------------------------------------------------------------------------
    def _add(self, recorder: Recorder, record: Record) -> None:
        # Copy the containers of the fields now, before the writer sees the record: a
        # formatter that edits custom_fields in place then edits only its own copy, and a test
        # that edits a captured entry cannot change what the sinks write.
        kind, sid, seq, time_ns, levelno, message, fields, run = record
        try:
            fields = _copy_containers(fields, 0)
        except Exception:  # an odd container: share it rather than lose the entry
            pass
        copy = (kind, sid, seq, time_ns, levelno, message, fields, run)
        with self._lock:
            self._pending.append((recorder, copy))

    # -- reading ------------------------------------------------------------------------------
    def _all(self) -> list[dict[str, Any]]:
        with self._build_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            for recorder, record in pending:
                self._entries.append(self._builder(recorder).build_safely(record))
            return list(self._entries)

    def _builder(self, recorder: Recorder) -> EntryBuilder:
        builder = self._builders.get(recorder)
        if builder is None:
            engine_builder = recorder.builder
            # Our own builder with the engine's formatter and masker: the engine's builder is
            # the writer thread's (its timestamp cache is not thread-safe).
            if engine_builder is None:
                builder = EntryBuilder(None, Masker())
            else:
                builder = EntryBuilder(engine_builder.formatter, engine_builder.masker)
            self._builders[recorder] = builder
        return builder

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every captured entry, in call order (a new list of the same dicts at each read)."""
        return self._all()

    @property
    def session_ids(self) -> list[str]:
        """The ids of the captured sessions, in order of their first entry (start order)."""
        return list(dict.fromkeys(e["session_id"] for e in self._all()))

    def session(self, session_id: str) -> list[dict[str, Any]]:
        """Return the entries of a session, in call order (every run of a reused id).

        Raises:
            SessionNotCapturedError: no entry of ``session_id`` was captured (a ``KeyError``;
                the message lists the ids that were).
        """
        entries = self._all()
        found = [e for e in entries if e["session_id"] == session_id]
        if not found:
            ids = list(dict.fromkeys(e["session_id"] for e in entries))
            listed = ", ".join(repr(i) for i in ids[:_LISTED_IDS]) or "none"
            if len(ids) > _LISTED_IDS:
                listed += f" and {len(ids) - _LISTED_IDS} more"
            raise SessionNotCapturedError(
                f"no entry of session {session_id!r} was captured; captured sessions: {listed}",
                session_id=session_id,
            )
        return found

    def levels(self, session_id: str) -> list[str]:
        """Return the levels (``"INFO"``...) of a session's log entries, in order."""
        return [e["level"] for e in self.session(session_id) if e["event"] == "log"]

    def messages(self, session_id: str) -> list[str]:
        """Return the messages of a session's log entries, in order."""
        return [e["message"] for e in self.session(session_id) if e["event"] == "log"]

    def status(self, session_id: str) -> str | None:
        """Return the status of a session's close entry, or None while it is open.

        For a reused id, the status of its latest run.
        """
        status = None
        for entry in self.session(session_id):
            if entry["event"] == "session_close":
                status = entry.get("status")
            elif entry["event"] == "session_start":
                status = None
        return status

    def find(
        self,
        *,
        session_id: str | None = None,
        level: str | int | None = None,
        message: str | None = None,
        event: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the entries that match every criterion given, in call order.

        Args:
            session_id: the entry's session.
            level: a level name (any case) or number (``levelno``).
            message: a substring of the message.
            event: ``"session_start"``, ``"log"`` or ``"session_close"``.
        """
        if isinstance(level, str):
            level = level.upper()
        found = []
        for entry in self._all():
            if session_id is not None and entry["session_id"] != session_id:
                continue
            if event is not None and entry["event"] != event:
                continue
            if isinstance(level, str) and str(entry.get("level", "")).upper() != level:
                continue
            if isinstance(level, int) and entry.get("levelno") != level:
                continue
            if message is not None and message not in str(entry.get("message", "")):
                continue
            found.append(entry)
        return found

    def clear(self) -> None:
        """Forget every entry captured so far; the capture goes on."""
        with self._build_lock, self._lock:
            self._pending.clear()
            self._entries.clear()

    def __repr__(self) -> str:
        return f"<SessionCapture: {len(self._all())} entries>"


@contextmanager
def capture_sessions() -> Iterator[SessionCapture]:
    """Capture every entry of every logger while the block runs; yield the capture.

    Usable in sync and async code (it does no I/O). Captures may nest or overlap across
    threads: each sees every entry logged while it is active. Exiting stops the capture; the
    entries stay readable. The sinks receive everything as usual.
    """
    capture = SessionCapture()
    _activate(capture)
    try:
        yield capture
    finally:
        _deactivate(capture)


# One tap serves every active capture. TAPS is iterated by the recorders without a lock, so it
# changes only when the first capture begins and the last ends; captures come and go by
# replacing this tuple in one assignment, which a tap in flight never sees half done.
_active: tuple[SessionCapture, ...] = ()
_active_lock = threading.Lock()


def _dispatch(recorder: Recorder, record: Record) -> None:
    for capture in _active:
        capture._add(recorder, record)


def _activate(capture: SessionCapture) -> None:
    global _active
    with _active_lock:
        _active = (*_active, capture)
        if _dispatch not in TAPS:
            TAPS.append(_dispatch)


def _deactivate(capture: SessionCapture) -> None:
    global _active
    with _active_lock:
        _active = tuple(c for c in _active if c is not capture)
        if not _active and _dispatch in TAPS:
            TAPS.remove(_dispatch)


def _copy_containers(value: Any, depth: int, memo: dict[int, Any] | None = None) -> Any:
    """Return ``value`` with its dicts, lists and tuples copied (cycles kept); other objects
    are shared, so identity, ``repr`` and masking see the objects the caller passed."""
    kind = type(value)
    if (kind is not dict and kind is not list and kind is not tuple) or depth > _COPY_DEPTH:
        return value
    if memo is None:
        memo = {}
    done = memo.get(id(value))
    if done is not None:
        return done
    if kind is dict:
        out: dict[Any, Any] = {}
        memo[id(value)] = out
        for key, item in value.items():
            out[key] = _copy_containers(item, depth + 1, memo)
        return out
    if kind is list:
        items: list[Any] = []
        memo[id(value)] = items
        items.extend(_copy_containers(item, depth + 1, memo) for item in value)
        return items
    return tuple(_copy_containers(item, depth + 1, memo) for item in value)
