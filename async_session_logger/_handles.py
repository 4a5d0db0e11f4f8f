"""``logger.session(...)`` handles: a session as a (async) context manager with level methods."""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._encode import describe

if TYPE_CHECKING:
    from ._core import AsyncSessionLogger
    from ._recorder import Recorder
    from ._sync import SessionLogger

__all__ = ["AsyncSessionHandle", "SessionHandle"]


def _exception_text() -> str | None:
    if sys.exc_info()[0] is None:
        return None
    return traceback.format_exc()


# Exceptions that stop a block without it having failed: Ctrl-C, exit, task cancellation
# (a request timeout, a server shutting down).
_INTERRUPTIONS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def _log_failure(recorder: Recorder, session_id: str, exc: BaseException | None) -> None:
    # The traceback of the exception that ends the block, as an ERROR entry before the close.
    if exc is not None and not isinstance(exc, _INTERRUPTIONS):
        recorder.log(
            session_id,
            f"Session failed: {describe(exc)}",
            logging.ERROR,
            None,
            "".join(traceback.format_exception(exc)),
        )


def _status(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "closed"
    if issubclass(exc_type, _INTERRUPTIONS):
        return "interrupted"
    return "error"


class SessionHandle:
    """A session of a :class:`SessionLogger`, used as ``with logger.session(id) as s:``.

    The start entry is written on enter, the close entry on exit with status ``closed``, or
    ``error`` when the block raised (an ERROR entry with the traceback comes first), or
    ``interrupted`` for KeyboardInterrupt, SystemExit and task cancellation.
    """

    def __init__(
        self, logger: SessionLogger, session_id: str, metadata: dict[str, Any] | None
    ) -> None:
        self.logger = logger
        self.session_id = session_id
        self.metadata = metadata

    def __enter__(self) -> Self:
        self.logger.start_session(self.session_id, self.metadata)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.logger.recorder.is_open(self.session_id):
            return  # closed inside the block (or by close()): nothing left to do
        _log_failure(self.logger.recorder, self.session_id, exc)
        self.logger.close_session(self.session_id, status=_status(exc_type))

    def log(
        self, level: int | str, message: str, custom_fields: dict[str, Any] | None = None
    ) -> None:
        """Log ``message`` at ``level``."""
        self.logger.log_entry(self.session_id, message, level, custom_fields)

    def debug(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at DEBUG."""
        self.logger.log_entry(self.session_id, message, logging.DEBUG, custom_fields)

    def info(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at INFO."""
        self.logger.log_entry(self.session_id, message, logging.INFO, custom_fields)

    def warning(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at WARNING."""
        self.logger.log_entry(self.session_id, message, logging.WARNING, custom_fields)

    def error(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at ERROR."""
        self.logger.log_entry(self.session_id, message, logging.ERROR, custom_fields)

    def critical(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at CRITICAL."""
        self.logger.log_entry(self.session_id, message, logging.CRITICAL, custom_fields)

    def exception(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at ERROR with the traceback being handled in the entry's ``exception`` key."""
        if self.logger.recorder.log(
            self.session_id, message, logging.ERROR, custom_fields, _exception_text()
        ):
            self.logger.wait_for_space()


class AsyncSessionHandle:
    """A session of an :class:`AsyncSessionLogger`, used as ``async with alog.session(id) as s``.

    Same semantics as :class:`SessionHandle`; the level methods are awaited.
    """

    def __init__(
        self, logger: AsyncSessionLogger, session_id: str, metadata: dict[str, Any] | None
    ) -> None:
        self.logger = logger
        self.session_id = session_id
        self.metadata = metadata

    async def __aenter__(self) -> Self:
        await self.logger.start_session(self.session_id, self.metadata)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.logger.recorder.is_open(self.session_id):
            return  # closed inside the block (or by aclose()): nothing left to do
        _log_failure(self.logger.recorder, self.session_id, exc)
        await self.logger.close_session(self.session_id, status=_status(exc_type))

    async def log(
        self, level: int | str, message: str, custom_fields: dict[str, Any] | None = None
    ) -> None:
        """Log ``message`` at ``level``."""
        await self.logger.log_entry(self.session_id, message, level, custom_fields)

    async def debug(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at DEBUG."""
        await self.logger.log_entry(self.session_id, message, logging.DEBUG, custom_fields)

    async def info(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at INFO."""
        await self.logger.log_entry(self.session_id, message, logging.INFO, custom_fields)

    async def warning(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at WARNING."""
        await self.logger.log_entry(self.session_id, message, logging.WARNING, custom_fields)

    async def error(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at ERROR."""
        await self.logger.log_entry(self.session_id, message, logging.ERROR, custom_fields)

    async def critical(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at CRITICAL."""
        await self.logger.log_entry(self.session_id, message, logging.CRITICAL, custom_fields)

    async def exception(self, message: str, custom_fields: dict[str, Any] | None = None) -> None:
        """Log at ERROR with the traceback being handled in the entry's ``exception`` key."""
        if self.logger.recorder.log(
            self.session_id, message, logging.ERROR, custom_fields, _exception_text()
        ):
            await self.logger.intake.wait_space()
