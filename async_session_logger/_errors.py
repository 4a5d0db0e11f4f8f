"""The exception tree: one root, stdlib bases where a generic ``except`` should work."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DuplicateSessionError",
    "EntryTooLargeError",
    "InvalidFieldsError",
    "InvalidLevelError",
    "InvalidMessageError",
    "InvalidSessionIdError",
    "LoggerClosedError",
    "SessionClosedError",
    "SessionLoggerError",
    "SinkError",
    "UnknownSessionError",
    "WrongLoopError",
    "WrongThreadError",
]


class SessionLoggerError(Exception):
    """Root of every error this library raises."""


class ConfigurationError(SessionLoggerError, ValueError):
    """Raised when a logger or a sink is configured with invalid options."""


class InvalidSessionIdError(SessionLoggerError, ValueError):
    """Raised when a session id is not a safe identifier (see DESIGN §6)."""

    def __init__(self, message: str, *, session_id: object) -> None:
        super().__init__(message)
        self.session_id = session_id


class _SessionStateError(SessionLoggerError):
    def __init__(self, message: str, *, session_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id

    def __str__(self) -> str:
        # KeyError's __str__ would repr() the message; keep it readable.
        return str(self.args[0])


class UnknownSessionError(_SessionStateError, KeyError):
    """Raised when an entry names a session that was never started."""


class SessionClosedError(_SessionStateError, KeyError):
    """Raised when an entry names a session that is already closed."""


class DuplicateSessionError(_SessionStateError, ValueError):
    """Raised when a session is started while one with the same id is open."""


class InvalidLevelError(SessionLoggerError, ValueError):
    """Raised when a level is neither a known level name nor a non-negative int."""


class InvalidFieldsError(SessionLoggerError, TypeError):
    """Raised when ``metadata`` or ``custom_fields`` is not a dict."""


class InvalidMessageError(SessionLoggerError, TypeError):
    """Raised when a message is not a str and cannot be converted to one (``str()`` raised)."""


class EntryTooLargeError(SessionLoggerError, ValueError):
    """Raised when a message is longer than the logger's ``max_message_chars`` (``limit``)."""

    def __init__(self, message: str, *, limit: int = 0) -> None:
        super().__init__(message)
        self.limit = limit


class LoggerClosedError(SessionLoggerError, RuntimeError):
    """Raised when a logger is used after ``close()``."""


class WrongThreadError(SessionLoggerError, RuntimeError):
    """Raised when a blocking verb is called from the logger's own event-loop thread."""


class WrongLoopError(SessionLoggerError, RuntimeError):
    """Raised when an ``AsyncSessionLogger`` is used from a second event loop while the loop it
    runs on is still running (after that loop closes, a new loop takes over by itself)."""


class SinkError(SessionLoggerError):
    """A sink failed to deliver; reported through ``on_error``, never raised into callers."""

    def __init__(self, message: str, *, sink_name: str) -> None:
        super().__init__(message)
        self.sink_name = sink_name
