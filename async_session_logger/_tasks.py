"""One owner for the engine's background tasks: named, strongly referenced, awaited at stop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._context import spawn_internal

__all__ = ["TaskOwner"]

T = TypeVar("T")


class TaskOwner:
    """Keep every background task of one engine binding (as aiomqtt keeps its children).

    Tasks are named ``async_session_logger.<what>``; a strong reference is held until the task
    ends, so none is garbage-collected mid-flight, and :meth:`cancel_all` ends them all.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Start ``coro`` on the running loop as ``async_session_logger.<name>``."""
        # A fresh internal context: no caller's current session, and marked as the logger's
        # own, so the stdlib bridge never feeds the sinks' own records back (see _context).
        task = spawn_internal(coro, f"async_session_logger.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks still referenced (running, or just finished)."""
        return list(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait for them to end."""
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
