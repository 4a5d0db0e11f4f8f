"""async_session_logger: session-oriented JSON logging for asyncio apps and scripts.

Entries belong to sessions (a start entry with metadata, log entries, a close entry), are queued
without blocking the caller, and are written in batches by a background task to every sink:
files, stdout, MQTT, email, or your own callables. Nothing accepted is lost silently.
"""

from ._context import bind_session, current_session, run_in_executor, run_in_thread
from ._core import AsyncSessionLogger, Origin
from ._deadletter import read_dead_letters
from ._entry import DEFAULT_MASK_KEYS, SCHEMA_VERSION
from ._errors import (
    ConfigurationError,
    DuplicateSessionError,
    EntryTooLargeError,
    InvalidFieldsError,
    InvalidLevelError,
    InvalidMessageError,
    InvalidSessionIdError,
    LoggerClosedError,
    SessionClosedError,
    SessionLoggerError,
    SinkError,
    UnknownSessionError,
    WrongLoopError,
    WrongThreadError,
)
from ._handles import AsyncSessionHandle, SessionHandle
from ._reader import CorruptLogError, ReaderWarning, Session, read_entries, read_sessions
from ._replay import ReplayReport, replay_dead_letters
from ._report import DeliveryReport, SinkStats
from ._sync import SessionLogger

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MASK_KEYS",
    "SCHEMA_VERSION",
    "AsyncSessionHandle",
    "AsyncSessionLogger",
    "ConfigurationError",
    "CorruptLogError",
    "DeliveryReport",
    "DuplicateSessionError",
    "EntryTooLargeError",
    "InvalidFieldsError",
    "InvalidLevelError",
    "InvalidMessageError",
    "InvalidSessionIdError",
    "LoggerClosedError",
    "Origin",
    "ReaderWarning",
    "ReplayReport",
    "Session",
    "SessionClosedError",
    "SessionHandle",
    "SessionLogger",
    "SessionLoggerError",
    "SinkError",
    "SinkStats",
    "UnknownSessionError",
    "WrongLoopError",
    "WrongThreadError",
    "bind_session",
    "current_session",
    "read_dead_letters",
    "read_entries",
    "read_sessions",
    "replay_dead_letters",
    "run_in_executor",
    "run_in_thread",
]
