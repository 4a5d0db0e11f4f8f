"""The current session: contextvars through blocks, tasks, threads and executors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from pathlib import Path

from async_session_logger import (
    AsyncSessionHandle,
    AsyncSessionLogger,
    SessionHandle,
    SessionLogger,
    bind_session,
    current_session,
    read_sessions,
    run_in_executor,
    run_in_thread,
)


def _which() -> str | None:
    handle = current_session()
    return None if handle is None else handle.session_id


def _log_here(message: str) -> None:
    # A plain function inside an async app: no await, no handle passed in.
    handle = current_session()
    assert handle is not None
    handle.info(message)


async def test_async_block_makes_its_handle_current(tmp_path: Path) -> None:
    """Inside `async with alog.session()` current_session() is its handle; outside None."""
    assert current_session() is None
    async with AsyncSessionLogger(path=str(tmp_path / "l.jsonl"), dead_letter_path=None) as alog:
        async with alog.session("outer") as outer:
            assert current_session() is outer
            async with alog.session("inner") as inner:
                assert current_session() is inner
            assert current_session() is outer
        assert current_session() is None


def test_sync_block_makes_its_handle_current(tmp_path: Path) -> None:
    """`with logger.session()` makes its handle current and restores the outer one on exit."""
    with SessionLogger(path=str(tmp_path / "l.jsonl"), dead_letter_path=None) as log:
        with log.session("a") as a:
            assert isinstance(current_session(), SessionHandle)
            assert current_session() is a
            with log.session("b"):
                assert _which() == "b"
            assert _which() == "a"
        assert current_session() is None
        try:
            with log.session("c"):
                raise ValueError("x")
        except ValueError:
            pass
        assert current_session() is None  # also after a block that raised


async def test_tasks_threads_and_executors_see_the_session(tmp_path: Path) -> None:
    """Tasks created inside, to_thread, run_in_thread and run_in_executor all log into it."""
    path = tmp_path / "l.jsonl"
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        async with (
            AsyncSessionLogger(path=str(path), dead_letter_path=None) as alog,
            alog.session("req") as handle,
        ):
            assert isinstance(handle, AsyncSessionHandle)
            await asyncio.create_task(asyncio.to_thread(_log_here, "to_thread"))
            await asyncio.gather(*(asyncio.create_task(_atask(i)) for i in range(3)))
            await run_in_thread(_log_here, "run_in_thread")
            await run_in_executor(pool, _log_here, "run_in_executor")
            _log_here("plain function, no await")
    finally:
        pool.shutdown()
    (session,) = read_sessions(path)
    messages = sorted(e["message"] for e in session.entries if e["event"] == "log")
    assert messages == sorted(
        [
            "to_thread",
            "task 0",
            "task 1",
            "task 2",
            "run_in_thread",
            "run_in_executor",
            "plain function, no await",
        ]
    )
    assert session.status == "closed"


async def _atask(i: int) -> None:
    await asyncio.sleep(0)
    handle = current_session()
    assert handle is not None
    await handle.info(f"task {i}")


def test_bind_session_carries_it_into_a_plain_executor(tmp_path: Path) -> None:
    """A ThreadPoolExecutor does not copy contexts; bind_session() does."""
    with (
        SessionLogger(path=str(tmp_path / "l.jsonl"), dead_letter_path=None) as log,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
        log.session("job"),
    ):
        assert pool.submit(_which).result() is None  # the executor alone: no session
        assert pool.submit(bind_session(_which)).result() == "job"
        seen: list[str | None] = []
        thread = threading.Thread(target=bind_session(lambda: seen.append(_which())))
        thread.start()
        thread.join()
        assert seen == ["job"]


async def test_concurrent_requests_do_not_see_each_other(tmp_path: Path) -> None:
    """100 interleaved tasks each in its own session: each sees only its own handle."""
    async with AsyncSessionLogger(path=str(tmp_path / "l.jsonl"), dead_letter_path=None) as alog:

        async def request(i: int) -> None:
            async with alog.session(f"r{i}"):
                for _ in range(5):
                    await asyncio.sleep(0)
                    assert _which() == f"r{i}"

        await asyncio.gather(*(request(i) for i in range(100)))


async def test_exit_in_another_context_does_not_raise(tmp_path: Path) -> None:
    """A block entered in one task and left in another (framework dependencies) still closes."""
    async with AsyncSessionLogger(path=str(tmp_path / "l.jsonl"), dead_letter_path=None) as alog:
        handle = alog.session("dep")
        await asyncio.create_task(handle.__aenter__())  # entered in another task's context
        await handle.__aexit__(None, None, None)  # left here: the reset is tolerated
        assert not alog.is_open("dep")
        assert current_session() is None


def test_context_copies_are_isolated(tmp_path: Path) -> None:
    """A context copied before the block does not see the session set inside it."""
    before = contextvars.copy_context()
    with (
        SessionLogger(path=str(tmp_path / "l.jsonl"), dead_letter_path=None) as log,
        log.session("x"),
    ):
        assert before.run(_which) is None
        assert contextvars.copy_context().run(_which) == "x"
