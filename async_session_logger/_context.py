"""Context variables: the session a block made current, and the logger's own machinery.

``with logger.session(...)`` / ``async with alog.session(...)`` make their handle *current*
for the block: :func:`current_session` returns it there, in tasks created inside it (they copy
the context), in ``asyncio.to_thread`` and in :func:`run_in_thread`. Threads and executors do
not copy contexts by themselves: :func:`bind_session` carries the current one over.

The second variable marks the logger's own tasks and threads (writer, lanes, sinks' clients,
custom handlers): the stdlib bridge does not feed their records back into a logger, which
would otherwise log aiomqtt's "published" record, publish it, log that, and so on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ._handles import AsyncSessionHandle, SessionHandle

__all__ = [
    "CURRENT",
    "INTERNAL",
    "bind_session",
    "current_session",
    "in_logger_machinery",
    "internal_context",
    "mark_thread_internal",
    "run_in_executor",
    "run_in_thread",
    "spawn_internal",
]

P = ParamSpec("P")
T = TypeVar("T")

CURRENT: contextvars.ContextVar[SessionHandle | AsyncSessionHandle | None] = contextvars.ContextVar(
    "async_session_logger.current_session", default=None
)
INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "async_session_logger.internal", default=False
)


def current_session() -> SessionHandle | AsyncSessionHandle | None:
    """Return the handle of the innermost ``logger.session(...)`` block around the caller.

    ``None`` outside any. Tasks created inside the block, ``asyncio.to_thread`` and
    :func:`run_in_thread` see the block's session; plain threads and executors see it when
    the callable is wrapped by :func:`bind_session`.
    """
    return CURRENT.get()


def bind_session(fn: Callable[P, T]) -> Callable[P, T]:
    """Return ``fn`` wrapped to run with the caller's current session (and other contextvars).

    For ``executor.submit(bind_session(work), ...)``, ``threading.Thread(target=...)`` and
    ``loop.run_in_executor``, which do not carry the context over by themselves. Each call of
    the wrapper runs in its own copy of the context taken now, so concurrent calls are safe.
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def bound(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.copy().run(fn, *args, **kwargs)

    return bound


async def run_in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in the loop's default thread pool with the current session.

    What ``asyncio.to_thread`` does; :func:`run_in_executor` takes an executor of your own.
    """
    return await run_in_executor(None, fn, *args, **kwargs)


async def run_in_executor(
    executor: Executor | None, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run ``fn(*args, **kwargs)`` on ``executor`` (``None``: the loop's default) with the
    current session (and every other context variable); await the result."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(executor, call)


def internal_context() -> contextvars.Context:
    """Return a fresh context marked as the logger's own (and with no current session)."""
    context = contextvars.Context()
    context.run(INTERNAL.set, True)
    return context


def spawn_internal(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """Start ``coro`` on the running loop in a fresh internal context (see the module doc)."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=internal_context())


def mark_thread_internal() -> None:
    """Mark the calling thread (call it first in a thread the logger owns) as internal."""
    INTERNAL.set(True)


def in_logger_machinery() -> bool:
    """Whether the caller runs in one of the logger's own tasks or threads."""
    return INTERNAL.get()
