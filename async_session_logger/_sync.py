"""``SessionLogger``: the sync face of the engine, which runs on a portal's loop thread."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType, TracebackType
from typing import Any, Final, Self

from ._config import build_engine
from ._core import ExcInfo, exception_extra, record_extra
from ._engine import CAP_FACTOR, GRACE
from ._entry import Formatter
from ._errors import ConfigurationError, LoggerClosedError, WrongThreadError
from ._handles import SessionHandle, SessionRef, parent_id_of
from ._portal import Portal
from ._recorder import Recorder
from ._report import DeliveryReport

__all__ = ["SessionLogger"]

_RECORDER_CODE: Final = frozenset(
    f.__code__ for f in vars(Recorder).values() if hasattr(f, "__code__")
)


def _inside_recorder(frame: FrameType | None) -> bool:
    """Whether a method of Recorder is on the stack of ``frame`` (its short critical section)."""
    while frame is not None:
        if frame.f_code in _RECORDER_CODE:
            return True
        frame = frame.f_back
    return False


class SessionLogger:
    """The seed's API for scripts and threads: plain calls, delivered in the background.

    Every verb delegates to one :class:`AsyncSessionLogger` running on a daemon event-loop
    thread that this object owns. ``log_entry`` and friends return as soon as the entry is queued
    (with the default ``overflow="block"`` they wait only when ``max_queue`` entries are
    pending; a drop policy never waits); ``save_logs()`` is a flush barrier.
    Safe to call from any number of threads. A script that never calls ``close()`` loses
    nothing: an atexit hook drains the logger (within ``close_timeout``).

    Args:
        method: ``"file"`` (default), ``"stdout"``, ``"custom"``, ``"mqtt"``, ``"smtp"``, or a list.
        custom_formatter: ``fmt(entry: dict) -> dict`` applied to each entry before encoding.
        handle_sigterm: make SIGTERM drain the logger like a normal exit. Python's default
            SIGTERM action kills the process at once, without the exit hook, so whatever was
            still queued is lost and open sessions get no close entry. With ``True`` the
            logger installs a SIGTERM handler (main thread only) that calls the handler that
            was installed before it, if any; if there was none it raises
            ``SystemExit(128 + SIGTERM)`` (exit status 143), so ``finally`` blocks and the
            exit hook run: open sessions are closed ``interrupted`` and the sinks drained
            within ``close_timeout``. A SIGTERM during ``close()`` waits for its drain, then
            takes effect; a second one during a drain kills at once. A
            SIGTERM the process ignores (``SIG_IGN``) stays ignored. ``close()`` puts the
            previous handler back.
        **kwargs: every keyword of :class:`AsyncSessionLogger` (``custom_handler=``, ``path=``,
            ``sinks=``, ``max_queue=``, ``on_error=``, ...).

    Raises:
        ConfigurationError: invalid options (``handle_sigterm=True`` outside the main thread).
        OSError: a sink could not be opened (e.g. the log file is not writable).
    """

    def __init__(
        self,
        method: str | list[str] | None = "file",
        custom_formatter: Formatter | None = None,
        *,
        handle_sigterm: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("sinks") and method == "file" and "path" not in kwargs:
            method = None  # sinks= alone means exactly those sinks
        if handle_sigterm and threading.current_thread() is not threading.main_thread():
            raise ConfigurationError(
                "handle_sigterm=True needs the logger to be created in the main thread "
                "(Python runs signal handlers there only)"
            )
        self._engine = engine = build_engine(method, custom_formatter, **kwargs)
        engine.exit_hook = self._close_at_exit
        self._recorder: Recorder = engine.recorder
        self._intake = engine.intake
        self._start_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._portal = self._start_portal()
        self._sigterm_previous: Any = None
        self._closing = False
        self._term_during_close = False
        if handle_sigterm:
            self._install_sigterm()

    def _start_portal(self) -> Portal:
        portal = Portal("async_session_logger.loop")
        try:
            portal.call(self._engine.start())
        except BaseException:
            portal.stop()
            raise
        return portal

    def _ready_portal(self) -> Portal:
        """The portal, started anew in a forked child (the parent's loop thread is not here)."""
        if self._engine.state == "new":
            with self._start_lock:
                if self._engine.state == "new":
                    self._portal = self._start_portal()
        return self._portal

    # -- the seed's API -----------------------------------------------------------------------
    def start_session(
        self,
        session_id: str,
        metadata: dict[str, Any] | None = None,
        *,
        parent_id: str | None = None,
        buffer_level: int | str | None = None,
    ) -> None:
        """Start a session; its start entry carries ``metadata``.

        ``parent_id`` (a session id, or another process's :meth:`token`) makes it a child:
        its start entry carries ``parent_session_id``. ``buffer_level`` overrides the
        logger's for this session (``"NOTSET"``: hold nothing).
        """
        if self._engine.state == "new":
            self._ready_portal()  # a forked child's first verb
        if self._intake.full:
            self._wait_for_space()
        self._recorder.start(session_id, metadata, parent_id, buffer_level)

    def annotate(self, session_id: str, **fields: Any) -> None:
        """Merge ``fields`` into the session's close-entry ``summary`` (masked like custom
        fields)."""
        self._recorder.annotate(session_id, fields)

    def token(self, session_id: str) -> str:
        """Return a continuation token of an open session: another process passes it as
        ``start_session(child_id, parent_id=token)`` to open a child of it."""
        return self._recorder.token(session_id)

    def log_entry(
        self,
        session_id: str,
        message: str,
        level: int | str = logging.INFO,
        custom_fields: dict[str, Any] | None = None,
        exc_info: ExcInfo = None,
    ) -> None:
        """Log one entry in an open session.

        ``exc_info=True`` adds the traceback being handled (an exception object: its
        traceback) as the entry's ``exception``. (Not keyword-only: a keyword-only default
        costs every call a dict lookup, on the hottest path there is.)
        """
        if exc_info:
            extra = exception_extra(exc_info)
            if self._recorder.log(session_id, message, level, custom_fields, extra):
                self._wait_for_space()
        elif self._recorder.log(session_id, message, level, custom_fields):
            self._wait_for_space()

    def log_record(
        self,
        session_id: str,
        message: str,
        level: int | str,
        custom_fields: dict[str, Any] | None = None,
        *,
        exception: str | None = None,
        origin: Mapping[str, Any] | None = None,
    ) -> None:
        """Log an entry that comes from another logging system (the stdlib bridge's verb).

        Like :meth:`log_entry`, plus ``exception`` (a traceback already formatted) and
        ``origin``: top-level keys that say where the entry came from (``logger``,
        ``source``, ``stack``).
        """
        extra = record_extra(exception, origin)
        if self._recorder.log(session_id, message, level, custom_fields, extra):
            self._wait_for_space()

    def close_session(self, session_id: str, status: str = "closed") -> None:
        """Close a session; its close entry carries ``duration_s``, ``entries``, ``status``."""
        if self._intake.full:
            self._wait_for_space()
        self._recorder.close(session_id, status)

    def save_logs(self, timeout: float | None = None) -> DeliveryReport:
        """Block until every entry logged so far is delivered (or given up) by every sink.

        Args:
            timeout: seconds to wait at most. Without it, give up after ``close_timeout``
                seconds in which no sink made progress (a healthy sink that keeps delivering
                is waited for); the report's ``pending`` then says what is still on its way.

        Returns:
            The per-sink :class:`DeliveryReport`.

        Raises:
            WrongThreadError: called from the logger's own loop thread or from one of its
                custom handlers (it would wait for itself).
        """
        self._check_thread("save_logs")
        engine = self._engine
        if self.closed:
            final = engine.final_report
            if final is not None:
                return final
            raise LoggerClosedError("the logger is closed")
        portal = self._ready_portal()
        wait = (engine.close_timeout * CAP_FACTOR if timeout is None else timeout) + GRACE
        try:
            return portal.call(engine.flush(timeout), wait)
        except TimeoutError:
            return engine.report()

    def _check_thread(self, verb: str) -> None:
        if self._portal.in_thread or self._engine.in_sink_thread():
            raise WrongThreadError(
                f"SessionLogger.{verb}() was called from the logger's own event-loop thread or "
                "from one of its custom handlers; it would deadlock (wait for itself)"
            )

    # -- extras -------------------------------------------------------------------------------
    def session(
        self,
        session_id: str,
        metadata: dict[str, Any] | None = None,
        *,
        parent: SessionRef | None = None,
        buffer_level: int | str | None = None,
    ) -> SessionHandle:
        """Return a ``with`` handle that starts and closes the session; ``parent`` (a handle,
        a session id or a token) makes it a child session."""
        return SessionHandle(
            self, session_id, metadata, parent=parent_id_of(parent), buffer_level=buffer_level
        )

    def close(self, timeout: float | None = None) -> DeliveryReport:
        """Close open sessions (``interrupted``), drain the sinks, stop the thread; idempotent.

        Without ``timeout`` the drain goes on while the sinks make progress and gives up after
        ``close_timeout`` seconds without any (6 x ``close_timeout`` in all); with it,
        ``timeout`` is a hard limit. Either way it returns even when the loop thread is
        blocked or has died: what it could not deliver is then reported to ``on_error``.
        A Ctrl-C during the drain lets it finish (then raises ``KeyboardInterrupt``); a second
        one abandons it, reporting what was not delivered.

        Raises:
            WrongThreadError: called from the logger's own loop thread or a custom handler.
        """
        self._check_thread("close")
        engine = self._engine
        with self._close_lock:
            final = engine.final_report
            if final is not None:
                return final
            # The SIGTERM handler stays during the drain: a SIGTERM now waits for it (see
            # _on_sigterm); a second one kills.
            self._closing = True
            join = 5.0
            interrupts = 0
            try:
                portal = self._ready_portal()
                future = portal.submit(engine.stop(timeout))
                while True:
                    try:
                        report = engine.wait_in_thread(future, timeout)
                        break
                    except KeyboardInterrupt:
                        interrupts += 1
                        if interrupts > 1:
                            join = 0.0
                            report = engine.abandon(
                                "SessionLogger.close() gave up: interrupted twice (Ctrl-C) "
                                "while draining"
                            )
                            break
                        _say(
                            "async_session_logger: delivering what is queued before stopping "
                            "(press Ctrl-C again to abandon it)"
                        )
            except TimeoutError as exc:
                join = 0.0  # the loop is stuck: its daemon thread is left behind
                report = engine.abandon(
                    f"SessionLogger.close() gave up: {exc} (a sink or an async handler "
                    "blocks the loop thread?)"
                )
            except LoggerClosedError as exc:
                report = engine.abandon(f"SessionLogger.close() gave up: {exc}")
            finally:
                self._portal.stop(join)
                self._restore_sigterm()
            if self._term_during_close:
                # Drained: now let the SIGTERM do what it would have done.
                signal.raise_signal(signal.SIGTERM)
            if interrupts:
                raise KeyboardInterrupt
            return report

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the logger begins to close, before it interrupts the
        sessions still open (see ``AsyncSessionLogger.on_close``). It runs on the logger's
        loop thread: it may call the non-blocking verbs, not ``save_logs()``."""
        self._engine.closing_hooks.append(callback)

    def is_open(self, session_id: str) -> bool:
        """Whether a session with this id is open now."""
        return self._recorder.is_open(session_id)

    def stats(self) -> dict[str, Any]:
        """Counters of the logger and of each sink (see ``AsyncSessionLogger.stats``)."""
        return self._engine.stats()

    def health(self) -> dict[str, Any]:
        """Whether every sink's last attempt succeeded."""
        return self._engine.health()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has begun."""
        return self._closing or self._engine.state in ("closing", "closed")

    @property
    def close_timeout(self) -> float:
        """Seconds without progress after which a drain gives up."""
        return self._engine.close_timeout

    def _wait_for_space(self) -> None:
        # Not on the loop thread (it would deadlock) nor in a custom handler's thread (the
        # writer may be waiting for that handler).
        if not self._portal.in_thread and not self._engine.in_sink_thread():
            self._intake.wait_space_sync()

    def _close_at_exit(self) -> None:
        if self.closed:
            return
        try:
            self.close()
        except KeyboardInterrupt:
            pass  # at exit, a Ctrl-C during the drain ends it; close() reported the rest

    # -- SIGTERM (opt-in) -----------------------------------------------------------------------
    def _install_sigterm(self) -> None:
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return  # the process ignores SIGTERM on purpose: keep it that way
        self._sigterm_previous = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._closing:
            # close() is draining: let it finish (it re-raises the signal after), and let a
            # second SIGTERM kill at once.
            self._term_during_close = True
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return
        if _inside_recorder(frame):
            # The main thread is half-way through a verb (its entry's seq taken, the entry not
            # yet queued): raising now, here or in the application's handler, would leave a
            # hole. Deliver the signal again in a moment from another thread (raise_signal()
            # would rerun this handler at once, still inside the verb); a verb takes
            # microseconds.
            retry = threading.Timer(0.001, os.kill, (os.getpid(), signum))
            retry.daemon = True
            retry.start()
            return
        previous = self._sigterm_previous
        if callable(previous):
            previous(signum, frame)  # the application's own handler decides what happens
            return
        # Python's default would kill the process now, skipping the exit hook. Exit normally
        # instead (status 128 + signum, as shells report a death by signal); a second SIGTERM
        # while the exit hook drains kills at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    def _restore_sigterm(self) -> None:
        if self._sigterm_previous is None or threading.current_thread() is not (
            threading.main_thread()
        ):
            return  # not installed, or not restorable from here (the handler still chains)
        current = signal.getsignal(signal.SIGTERM)
        # SIG_DFL: ours stood aside for a SIGTERM during the drain, which is re-raised next.
        if current == self._on_sigterm or (self._term_during_close and current == signal.SIG_DFL):
            signal.signal(signal.SIGTERM, self._sigterm_previous)
            self._sigterm_previous = None
        # else another handler was installed on top of ours and may still chain to it

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self._engine.sinks)
        return f"<SessionLogger [{names}] {self._engine.state}>"


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except Exception:  # stderr closed
        pass
