"""The stdlib ``logging`` bridge: records logged anywhere go into the current session.

``SessionLogHandler`` is a :class:`logging.Handler`. A record emitted while a session is
current (inside ``with logger.session(...)`` / ``async with alog.session(...)``, in tasks and
threads that carry its context) becomes an entry of that session; a record with no current
session goes where ``fallback`` says: a per-process session (the default), a named session,
or nowhere (counted). :func:`install` puts one on the root logger in one call, and on the
server loggers that do not propagate to it (uvicorn's).

Records the logger's own machinery emits are not fed back into a logger: publishing aiomqtt's
"Sending PUBLISH" record would log it again, forever. Those are the records of the library's
own loggers (``async_session_logger.*``, through which the MQTT sink's client logs) and every
record emitted in the logger's tasks and threads (a custom handler's). They are counted as
``internal`` and left to the other handlers.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Iterable, Mapping
from threading import get_ident
from typing import TYPE_CHECKING, Any, Final, Literal

from ._context import CURRENT, INTERNAL
from ._core import Origin
from ._encode import describe
from ._errors import (
    ConfigurationError,
    EntryTooLargeError,
    LoggerClosedError,
    SessionClosedError,
    UnknownSessionError,
    WrongLoopError,
)
from ._validate import check_session_id

if TYPE_CHECKING:
    from ._core import AsyncSessionLogger
    from ._sync import SessionLogger

__all__ = [
    "SERVER_LOGGERS",
    "Fallback",
    "SessionLogHandler",
    "install",
    "process_session_id",
    "reinstall",
    "uninstall",
]

Fallback = Literal["process", "session", "drop"]
FALLBACKS: Final = ("process", "session", "drop")

# Server loggers that do not propagate to the root logger once their server configured
# logging (uvicorn's dictConfig sets propagate=False on these two): install() attaches the
# handler to them as well. aiohttp's loggers propagate, so the root handler sees them.
SERVER_LOGGERS: Final = ("uvicorn", "uvicorn.access")

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    {
        *logging.LogRecord("n", 0, "p", 0, "m", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)
# A record's attribute names (in order) -> the sorted names that came from ``extra=``: one
# tuple and a lookup per record instead of a set difference and a sort (~2 us of ~5).
_EXTRA_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
_EXTRA_KEYS_BOUND: Final = 1024
# A call site (logger name, path, line, function, module) -> its origin, encoded once: every
# record of one ``logger.info(...)`` line says the same, so a record costs a lookup, and the
# writer splices the text instead of encoding two dicts.
_ORIGINS: dict[tuple[Any, ...], Origin] = {}
_ORIGINS_BOUND: Final = 4096
_FORMATTER: Final = logging.Formatter()
# The library's own loggers (the MQTT sink's client logs through "async_session_logger.mqtt",
# also from threads and callbacks no context marks, e.g. aiomqtt's connect in an executor).
_OWN: Final = "async_session_logger"
_OWN_PREFIX: Final = _OWN + "."
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def process_session_id() -> str:
    """Return this process's fallback session id: ``process-<hostname>-<pid>``."""
    host = _UNSAFE_ID_CHARS.sub("_", socket.gethostname())[:80] or "host"
    return f"process-{host}-{os.getpid()}"


def _process_metadata() -> dict[str, Any]:
    return {
        "kind": "process",
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "python": sys.version.split()[0],
    }


class SessionLogHandler(logging.Handler):
    """Write stdlib ``logging`` records into the current session (see the module doc).

    Each record becomes a log entry with the record's level, its message with the ``%`` args
    applied, top-level ``logger`` (the logger's name) and ``source`` (``file``, ``line``,
    ``function``, ``module``) keys, ``exception`` (the traceback of ``exc_info``), ``stack``
    (``stack_info=True``), and the ``extra=`` attributes as ``custom_fields`` (masked like any).

    Args:
        logger: the logger of the fallback session (records of a current session go to the
            logger that session belongs to).
        level: the handler's level.
        fallback: where records with no current session go: ``"process"`` (default) a
            per-process session ``process-<hostname>-<pid>`` started at the first such record
            (metadata: ``kind``, ``pid``, ``hostname``, ``argv``, ``python``) and closed with
            status ``closed`` when the logger closes; ``"session"`` the session named by
            ``fallback_session`` (started the same way unless it is already open); ``"drop"``
            nowhere, counted in :meth:`stats` as ``dropped``.
        fallback_session: the session id for ``fallback="session"``.
        fallback_metadata: metadata for the fallback session's start entry (default: the
            process metadata above).

    A record that cannot be delivered (the logger is closed, the message is refused) goes to
    ``logging.lastResort`` (stderr, WARNING and above) and is counted as ``failed``; nothing
    raises into the code that logged.
    """

    def __init__(
        self,
        logger: SessionLogger | AsyncSessionLogger,
        *,
        level: int | str = logging.NOTSET,
        fallback: Fallback = "process",
        fallback_session: str | None = None,
        fallback_metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(level)
        if fallback not in FALLBACKS:
            raise ConfigurationError(f"fallback must be one of {', '.join(FALLBACKS)}")
        if fallback == "session":
            if fallback_session is None:
                raise ConfigurationError('fallback="session" needs fallback_session=<id>')
            check_session_id(fallback_session)
        elif fallback_session is not None:
            raise ConfigurationError('fallback_session= goes with fallback="session"')
        self.logger = logger
        self.fallback = fallback
        self.fallback_session = fallback_session
        self.fallback_metadata = fallback_metadata
        self._counts = dict.fromkeys(
            ("records", "current", "fallback", "dropped", "internal", "failed"), 0
        )
        self._start_lock = threading.Lock()
        self._wanted = self._fallback_name()
        self._hooked_pid = 0  # the process whose logger closes the fallback session
        # Threads inside emit() now (a re-entrant record is counted as internal): a set of
        # idents costs a third of a threading.local's three attribute accesses per record.
        self._busy: set[int] = set()

    # -- logging.Handler ----------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` into the current session, or the fallback (never raises)."""
        counts = self._counts
        counts["records"] += 1
        name = record.name
        thread = get_ident()
        if (
            INTERNAL.get()  # in_logger_machinery() without its call: this runs per record
            or name.startswith(_OWN_PREFIX)
            or name == _OWN
            or thread in self._busy
        ):
            counts["internal"] += 1
            return
        self._busy.add(thread)
        try:
            self._deliver(record)
        except Exception as exc:
            counts["failed"] += 1
            self._last_resort(record, exc)
        finally:
            self._busy.discard(thread)

    def _deliver(self, record: logging.LogRecord) -> None:
        handle = CURRENT.get()  # current_session()
        if handle is not None:
            try:
                self._write(handle.logger, handle.session_id, record)
                self._counts["current"] += 1
                return
            except (SessionClosedError, UnknownSessionError, LoggerClosedError):
                pass  # the block's session is already closed (e.g. at its exit): fall back
        if self.fallback == "drop":
            self._counts["dropped"] += 1
            return
        session_id = self._fallback_id()
        self._write(self.logger, session_id, record)
        self._counts["fallback"] += 1

    def _write(
        self, logger: SessionLogger | AsyncSessionLogger, session_id: str, record: logging.LogRecord
    ) -> None:
        message, fields, exception, origin = self.convert(record)
        try:
            # The async face returns an awaitable: the entry is queued at call time already.
            logger.log_record(
                session_id, message, record.levelno, fields, exception=exception, origin=origin
            )
        except EntryTooLargeError as exc:
            cut = max(1, exc.limit - 40)
            note = f" [truncated: {len(message)} characters]"
            logger.log_record(
                session_id,
                message[:cut] + note,
                record.levelno,
                fields,
                exception=exception,
                origin=origin,
            )

    def convert(
        self, record: logging.LogRecord
    ) -> tuple[str, dict[str, Any] | None, str | None, Mapping[str, Any]]:
        """Return ``(message, custom_fields, exception, origin)`` for ``record``.

        ``origin`` is read-only: an :class:`~async_session_logger.Origin` shared by the
        records of one call site (a plain dict when the record carries ``stack_info``).
        """
        try:
            message = record.getMessage()
        except Exception as exc:  # "%d" with a str, too few args...: keep what was meant
            message = f"{record.msg!s} (args {record.args!r} not applied: {describe(exc)})"
        attrs = record.__dict__
        shape = tuple(attrs)  # records from one call site share their attribute names
        extra = _EXTRA_KEYS.get(shape)
        if extra is None:
            extra = tuple(sorted(attrs.keys() - _STANDARD))
            if len(_EXTRA_KEYS) >= _EXTRA_KEYS_BOUND:
                _EXTRA_KEYS.clear()
            _EXTRA_KEYS[shape] = extra
        if not extra:
            fields = None
        elif len(extra) == 1:  # the usual extra={"user": ...}: no comprehension's call
            key = extra[0]
            fields = {key: attrs[key]}
        else:
            fields = {key: attrs[key] for key in extra}
        exception = None
        if record.exc_info and record.exc_info[0] is not None:
            formatter = self.formatter or _FORMATTER
            exception = formatter.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        if record.stack_info:
            return message, fields, exception, {**_origin(record), "stack": record.stack_info}
        site = (record.name, record.pathname, record.lineno, record.funcName, record.module)
        try:
            origin = _ORIGINS.get(site)
        except TypeError:  # a record factory's unhashable attribute: no cache for it
            return message, fields, exception, _origin(record)
        if origin is None:
            origin = Origin(_origin(record))
            if len(_ORIGINS) >= _ORIGINS_BOUND:
                _ORIGINS.clear()
            _ORIGINS[site] = origin
        return message, fields, exception, origin

    # -- the fallback session -----------------------------------------------------------------
    def _fallback_id(self) -> str:
        pid = os.getpid()
        wanted = self._wanted
        if self._hooked_pid == pid and self.logger.is_open(wanted):
            return wanted
        with self._start_lock:
            if self._hooked_pid != pid:
                self._start_lock = threading.Lock()  # a forked child: the parent's is not ours
                wanted = self._wanted = self._fallback_name()
            if not self.logger.is_open(wanted):
                # Started here at its first record (and again if someone closed it); raises
                # LoggerClosedError once the logger is closed.
                metadata = self.fallback_metadata
                _start(self.logger, wanted, _process_metadata() if metadata is None else metadata)
            if self._hooked_pid != pid:
                self._hooked_pid = pid
                self.logger.on_close(lambda: self._close_fallback(wanted, pid))
            return wanted

    def _fallback_name(self) -> str:
        if self.fallback == "session":
            assert self.fallback_session is not None
            return self.fallback_session
        return process_session_id()

    def _close_fallback(self, session_id: str, pid: int) -> None:
        # Called by the logger when it begins to close: the fallback session ends "closed",
        # not "interrupted" like the sessions someone forgot.
        if os.getpid() == pid and self.logger.is_open(session_id):
            self.logger.close_session(session_id)

    # -- reporting ----------------------------------------------------------------------------
    def _last_resort(self, record: logging.LogRecord, exc: Exception) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            try:
                last.handle(record)
            except Exception:
                pass
        if self._counts["failed"] == 1:
            try:
                sys.stderr.write(
                    "async_session_logger.stdlib: a record could not be logged "
                    f"({describe(exc)}); such records go to stderr (WARNING and above) and "
                    "are counted in SessionLogHandler.stats()['failed']\n"
                )
            except Exception:
                pass

    def stats(self) -> dict[str, int]:
        """Return counters: ``records`` seen, written to the ``current`` session or the
        ``fallback`` one, ``dropped`` (``fallback="drop"``), ``internal`` (the logger's own
        machinery's, not fed back), ``failed`` (sent to stderr instead)."""
        return dict(self._counts)

    def __repr__(self) -> str:
        return f"<SessionLogHandler fallback={self.fallback} {self.stats()}>"


def _start(
    logger: SessionLogger | AsyncSessionLogger, session_id: str, metadata: dict[str, Any]
) -> None:
    try:
        logger.start_session(session_id, metadata)  # async face: queued at call time
    except WrongLoopError:
        # A record from a thread running an event loop of its own (a library's), while the
        # async logger runs on the app's loop: the verb may not wait on this loop, so start
        # the session from a thread without one, where the verb queues without waiting.
        failure: list[BaseException] = []

        def start() -> None:
            try:
                logger.start_session(session_id, metadata)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=start, name="async_session_logger.stdlib-start")
        thread.start()
        thread.join()
        if failure:
            raise failure[0] from None


# -- one-call install -------------------------------------------------------------------------
_installed: list[tuple[SessionLogHandler, tuple[str, ...]]] = []
_installed_lock = threading.Lock()


def install(
    logger: SessionLogger | AsyncSessionLogger,
    *,
    level: int | str = logging.INFO,
    fallback: Fallback = "process",
    fallback_session: str | None = None,
    fallback_metadata: dict[str, Any] | None = None,
    also: Iterable[str] = SERVER_LOGGERS,
) -> SessionLogHandler:
    """Route every stdlib record at ``level`` or above into sessions; return the handler.

    Adds a :class:`SessionLogHandler` to the root logger, lowers the root logger's level to
    ``level`` if it is stricter (records below a logger's level never reach any handler), and
    attaches the handler to each logger named in ``also`` that does not pass its records up
    to it (uvicorn's). A server that configures logging later (``uvicorn.run(app)`` does,
    after your module imported) removes it from those: :func:`reinstall` puts it back, and
    the web integrations' lifespan helpers call it at start-up. When ``logger`` closes, the
    handler is detached (:func:`uninstall`).
    """
    handler = SessionLogHandler(
        logger,
        level=level,
        fallback=fallback,
        fallback_session=fallback_session,
        fallback_metadata=fallback_metadata,
    )
    root = logging.getLogger()
    if root.level > handler.level:
        root.setLevel(handler.level)
    names = tuple(also)
    with _installed_lock:
        _installed.append((handler, names))
        _attach(handler, names)
    # Once the logger closes, the handler has nowhere to write: detach it then, so that what
    # is logged afterwards (uvicorn's "Application shutdown complete.") goes to the other
    # handlers as if it had never been installed, not to stderr as a failure.
    logger.on_close(lambda: uninstall(handler))
    return handler


def reinstall() -> None:
    """Attach the handlers of :func:`install` again where a logging config removed them."""
    with _installed_lock:
        for handler, names in _installed:
            _attach(handler, names)


def uninstall(handler: SessionLogHandler) -> None:
    """Detach ``handler`` from every logger :func:`install` attached it to.

    (``handler.close()`` does not: ``logging.config.dictConfig`` closes every existing
    handler, and like the stdlib's own handlers this one keeps working after that.)
    """
    with _installed_lock:
        for i, (known, names) in enumerate(_installed):
            if known is handler:
                del _installed[i]
                for name in ("", *names):
                    logging.getLogger(name or None).removeHandler(handler)
                return


def _attach(handler: SessionLogHandler, names: tuple[str, ...]) -> None:
    root = logging.getLogger()
    if handler not in root.handlers:
        root.addHandler(handler)
    for name in names:
        named = logging.getLogger(name)
        if not _reaches(named, handler):
            named.addHandler(handler)


def _reaches(logger: logging.Logger, handler: logging.Handler) -> bool:
    # Whether a record of ``logger`` gets to ``handler`` along the propagation chain.
    current: logging.Logger | None = logger
    while current is not None:
        if handler in current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _origin(record: logging.LogRecord) -> dict[str, Any]:
    """The entry's ``logger`` and ``source`` keys for ``record``."""
    return {
        "logger": record.name,
        "source": {
            "file": record.pathname,
            "line": record.lineno,
            "function": record.funcName,
            "module": record.module,
        },
    }
