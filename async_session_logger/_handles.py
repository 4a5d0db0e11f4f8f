"""``logger.session(...)`` handles: a session as a (async) context manager with level methods."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias

from ._context import CURRENT
from ._encode import describe

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._core import AsyncSessionLogger
    from ._sync import SessionLogger

__all__ = ["AsyncSessionHandle", "SessionHandle", "SessionRef", "parent_id_of"]

# What names a parent session: a handle, a session id, or a continuation token.
SessionRef: TypeAlias = "SessionHandle | AsyncSessionHandle | str"


def parent_id_of(parent: object) -> str | None:
    """Return the parent id (or token) for ``parent=``: a handle's id, or the string itself."""
    if parent is None or isinstance(parent, str):
        return parent
    if isinstance(parent, SessionHandle | AsyncSessionHandle):
        return parent.session_id
    raise TypeError(
        f"parent must be a session handle, a session id or a token, not {type(parent).__name__}"
    )


# Exceptions that stop a block without it having failed: Ctrl-C, exit, task cancellation
# (a request timeout, a server shutting down).
_INTERRUPTIONS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


def _failed(exc: BaseException | None) -> bool:
    # Whether the block ended with a failure (an ERROR entry with the traceback goes first).
    return exc is not None and not isinstance(exc, _INTERRUPTIONS)


class _Current:
    # Makes a handle current for its block; the reset tolerates an exit in another context
    # (e.g. a framework that enters a dependency in one task and leaves it in another).
    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        self._tokens: list[Any] = []

    def push(self, handle: Any) -> None:
        self._tokens.append(CURRENT.set(handle))

    def pop(self) -> None:
        if not self._tokens:
            return
        token = self._tokens.pop()
        try:
            CURRENT.reset(token)
        except ValueError:  # created in another context: leave that context alone
            pass


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
        self,
        logger: SessionLogger,
        session_id: str,
        metadata: dict[str, Any] | None,
        *,
        parent: str | None = None,
        buffer_level: int | str | None = None,
    ) -> None:
        self.logger = logger
        self.session_id = session_id
        self.metadata = metadata
        self.parent = parent
        self.buffer_level = buffer_level
        self._current = _Current()

    def __enter__(self) -> Self:
        self.logger.start_session(
            self.session_id, self.metadata, parent_id=self.parent, buffer_level=self.buffer_level
        )
        self._current.push(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._current.pop()
        if not self.logger.is_open(self.session_id):
            return  # closed inside the block (or by close()): nothing left to do
        if exc is not None and _failed(exc):
            self.logger.log_entry(
                self.session_id, f"Session failed: {describe(exc)}", logging.ERROR, exc_info=exc
            )
        self.logger.close_session(self.session_id, status=_status(exc_type))

    def annotate(self, **fields: Any) -> None:
        """Merge ``fields`` into the close entry's ``summary`` (masked like custom fields)."""
        self.logger.annotate(self.session_id, **fields)

    def token(self) -> str:
        """Return a continuation token: another process opens a child of this session with
        ``start_session(child_id, parent_id=token)``."""
        return self.logger.token(self.session_id)

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
        self.logger.log_entry(self.session_id, message, logging.ERROR, custom_fields, exc_info=True)


class AsyncSessionHandle:
    """A session of an :class:`AsyncSessionLogger`, used as ``async with alog.session(id) as s``.

    Same semantics as :class:`SessionHandle`; the level methods are awaited.
    """

    def __init__(
        self,
        logger: AsyncSessionLogger,
        session_id: str,
        metadata: dict[str, Any] | None,
        *,
        parent: str | None = None,
        buffer_level: int | str | None = None,
    ) -> None:
        self.logger = logger
        self.session_id = session_id
        self.metadata = metadata
        self.parent = parent
        self.buffer_level = buffer_level
        self._current = _Current()

    async def __aenter__(self) -> Self:
        await self.logger.start_session(
            self.session_id, self.metadata, parent_id=self.parent, buffer_level=self.buffer_level
        )
        self._current.push(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._current.pop()
        if not self.logger.is_open(self.session_id):
            return  # closed inside the block (or by aclose()): nothing left to do
        if exc is not None and _failed(exc):
            await self.logger.log_entry(
                self.session_id, f"Session failed: {describe(exc)}", logging.ERROR, exc_info=exc
            )
        await self.logger.close_session(self.session_id, status=_status(exc_type))

    def annotate(self, **fields: Any) -> None:
        """Merge ``fields`` into the close entry's ``summary`` (masked like custom fields)."""
        self.logger.annotate(self.session_id, **fields)

    def token(self) -> str:
        """Return a continuation token: another process opens a child of this session with
        ``start_session(child_id, parent_id=token)``."""
        return self.logger.token(self.session_id)

    def log(
        self, level: int | str, message: str, custom_fields: dict[str, Any] | None = None
    ) -> Awaitable[None]:
        """Log ``message`` at ``level`` (queued at call time; await for backpressure)."""
        return self.logger.log_entry(self.session_id, message, level, custom_fields)

    def debug(self, message: str, custom_fields: dict[str, Any] | None = None) -> Awaitable[None]:
        """Log at DEBUG."""
        return self.logger.log_entry(self.session_id, message, logging.DEBUG, custom_fields)

    def info(self, message: str, custom_fields: dict[str, Any] | None = None) -> Awaitable[None]:
        """Log at INFO."""
        return self.logger.log_entry(self.session_id, message, logging.INFO, custom_fields)

    def warning(self, message: str, custom_fields: dict[str, Any] | None = None) -> Awaitable[None]:
        """Log at WARNING."""
        return self.logger.log_entry(self.session_id, message, logging.WARNING, custom_fields)

    def error(self, message: str, custom_fields: dict[str, Any] | None = None) -> Awaitable[None]:
        """Log at ERROR."""
        return self.logger.log_entry(self.session_id, message, logging.ERROR, custom_fields)

    def critical(
        self, message: str, custom_fields: dict[str, Any] | None = None
    ) -> Awaitable[None]:
        """Log at CRITICAL."""
        return self.logger.log_entry(self.session_id, message, logging.CRITICAL, custom_fields)

    def exception(
        self, message: str, custom_fields: dict[str, Any] | None = None
    ) -> Awaitable[None]:
        """Log at ERROR with the traceback being handled in the entry's ``exception`` key."""
        return self.logger.log_entry(
            self.session_id, message, logging.ERROR, custom_fields, exc_info=True
        )
