"""Issue 12 on both faces: detail only on failure, summaries, idle timeouts, bounds, children."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    InvalidSessionIdError,
    Session,
    SessionLogger,
    UnknownSessionError,
    read_sessions,
)

ROOT = Path(__file__).parents[1]


class Face:
    """One face behind one awaitable API, logging to a real file."""

    def __init__(self, kind: str, path: Path, **options: Any) -> None:
        self.kind = kind
        self.path = path
        self.options = {"path": str(path), "dead_letter_path": None, **options}
        self.sync: SessionLogger | None = None
        self.alog: AsyncSessionLogger | None = None

    @property
    def logger(self) -> SessionLogger | AsyncSessionLogger:
        logger = self.sync or self.alog
        assert logger is not None
        return logger

    async def open(self) -> None:
        if self.kind == "sync":
            self.sync = SessionLogger(**self.options)
        else:
            self.alog = AsyncSessionLogger(**self.options)
            await self.alog.start()

    async def call(self, result: Awaitable[None] | None) -> None:
        if result is not None:
            await result

    async def start(self, sid: str, **kw: Any) -> None:
        await self.call(self.logger.start_session(sid, **kw))

    async def log(self, sid: str, message: str, level: str = "INFO") -> None:
        await self.call(self.logger.log_entry(sid, message, level))

    async def close_session(self, sid: str, status: str = "closed") -> None:
        await self.call(self.logger.close_session(sid, status))

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        elif self.alog is not None:
            await self.alog.aclose()

    def sessions(self) -> dict[str, Session]:
        return {s.session_id: s for s in read_sessions(self.path)}


@pytest.fixture(params=["sync", "async"])
async def face(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Face]]]:
    """Make a logger of the parametrized face; closed at the end of the test."""
    made: list[Face] = []

    async def make(**options: Any) -> Face:
        made.append(Face(request.param, tmp_path / f"log{len(made)}.jsonl", **options))
        await made[-1].open()
        return made[-1]

    yield make
    for one in made:
        await one.close()


def _messages(session: Session) -> list[str]:
    return [e["message"] for e in session.entries]


# -- buffer_level ---------------------------------------------------------------------------
async def test_clean_close_discards_held_entries_and_counts_them(face: Any) -> None:
    """DEBUG entries are held; a clean close writes none, says how many, leaves no hole."""
    log = await face(buffer_level="DEBUG")
    await log.start("ok")
    await log.log("ok", "detail 1", "DEBUG")
    await log.log("ok", "visible", "INFO")
    await log.log("ok", "detail 2", "DEBUG")
    await log.close_session("ok")
    await log.close()
    session = log.sessions()["ok"]
    assert _messages(session) == ["visible"]
    assert session.close is not None
    assert session.close["discarded"] == 2
    assert session.close["entries"] == 1 and session.close["levels"] == {"INFO": 1}
    assert session.missing_seqs == []  # nothing a reader could mistake for a loss
    assert log.logger.stats()["discarded"] == 2


async def test_an_error_writes_the_held_entries_first(face: Any) -> None:
    """ERROR writes the held entries in seq order with their call-time timestamps, before it."""
    log = await face(buffer_level="DEBUG")
    await log.start("bad")
    await log.log("bad", "held 1", "DEBUG")
    await asyncio.sleep(0.002)
    await log.log("bad", "written", "INFO")
    await log.log("bad", "held 2", "DEBUG")
    await log.log("bad", "failure", "ERROR")
    await log.log("bad", "after the failure", "DEBUG")  # no longer held
    await log.close_session("bad")
    await log.close()
    session = log.sessions()["bad"]
    assert _messages(session) == ["written", "held 1", "held 2", "failure", "after the failure"]
    assert [e["seq"] for e in session.entries] == [1, 2, 3, 4, 5]
    written, held1 = session.entries[0], session.entries[1]
    assert held1["timestamp"] < written["timestamp"]  # its call time, not its write time
    assert session.close is not None and "discarded" not in session.close
    assert session.close["levels"] == {"DEBUG": 3, "INFO": 1, "ERROR": 1}


async def test_error_and_interrupted_closes_write_the_held_entries(face: Any) -> None:
    """Closing `error`, or `interrupted` by the logger's close (exit), writes what was held."""
    log = await face(buffer_level="INFO")
    await log.start("failed")
    await log.log("failed", "context", "INFO")
    await log.close_session("failed", "error")
    await log.start("left-open")
    await log.log("left-open", "was doing this", "DEBUG")
    await log.close()  # interrupts left-open
    sessions = log.sessions()
    assert _messages(sessions["failed"]) == ["context"]
    assert _messages(sessions["left-open"]) == ["was doing this"]
    assert sessions["left-open"].status == "interrupted"


async def test_buffer_max_evicts_the_oldest_and_counts_them(face: Any) -> None:
    """buffer_max=3: the oldest held entries are evicted, counted in discarded and stats."""
    log = await face(buffer_level="DEBUG", buffer_max=3)
    await log.start("s")
    for i in range(5):
        await log.log("s", f"d{i}", "DEBUG")
    await log.log("s", "boom", "ERROR")
    await log.close_session("s")
    stats = log.logger.stats()
    await log.close()
    session = log.sessions()["s"]
    assert _messages(session) == ["d2", "d3", "d4", "boom"]
    assert session.close is not None and session.close["discarded"] == 2
    assert stats["buffer_evicted"] == 2 and stats["held"] == 0


async def test_per_session_buffer_level_overrides_the_loggers(face: Any) -> None:
    """start_session(buffer_level=) holds for that session only; "NOTSET" turns it off."""
    log = await face(buffer_level="DEBUG")
    await log.start("off", buffer_level="NOTSET")
    await log.start("info", buffer_level="INFO")
    for sid in ("off", "info"):
        await log.log(sid, "debug", "DEBUG")
        await log.log(sid, "info", "INFO")
        await log.log(sid, "warning", "WARNING")
        await log.close_session(sid)
    await log.close()
    sessions = log.sessions()
    assert _messages(sessions["off"]) == ["debug", "info", "warning"]
    assert _messages(sessions["info"]) == ["warning"]


# -- annotate / levels ----------------------------------------------------------------------
async def test_annotate_fills_the_close_entrys_summary_masked(face: Any) -> None:
    """annotate() merges (last write wins) and is masked."""
    log = await face()
    await log.start("s")
    cart = {"items": 2}
    log.logger.annotate("s", user="u1", cart=cart)
    log.logger.annotate("s", user="u2", api_token="secret")
    await log.log("s", "a", "INFO")
    await log.log("s", "b", "WARNING")
    await log.log("s", "c", "WARNING")
    await log.close_session("s")
    await log.close()
    close = log.sessions()["s"].close
    assert close is not None
    assert close["summary"] == {"user": "u2", "cart": {"items": 2}, "api_token": "***"}
    assert close["levels"] == {"INFO": 1, "WARNING": 2}
    assert sum(close["levels"].values()) == close["entries"] == 3


async def test_handles_annotate_and_unknown_sessions_raise(face: Any) -> None:
    """handle.annotate() works on both faces; annotate() of an unknown session raises."""
    log = await face()
    if log.kind == "sync":
        with log.logger.session("h") as handle:
            handle.annotate(rows=3)
    else:
        async with log.logger.session("h") as handle:
            handle.annotate(rows=3)
    with pytest.raises(UnknownSessionError):
        log.logger.annotate("never-started", x=1)
    await log.close()
    close = log.sessions()["h"].close
    assert close is not None and close["summary"] == {"rows": 3}


# -- idle_timeout / max_open_sessions -------------------------------------------------------
async def test_idle_sessions_close_with_status_timeout(face: Any) -> None:
    """A session idle for idle_timeout closes `timeout`; late entries are counted, not raised."""
    log = await face(idle_timeout=0.2)
    await log.start("idle")
    await log.start("busy")
    for _ in range(6):
        await asyncio.sleep(0.06)
        await log.log("busy", "still here")
    await asyncio.sleep(0.5)
    await log.log("idle", "too late")  # no exception
    await log.close_session("idle")  # nor here
    stats = log.logger.stats()
    await log.close()
    sessions = log.sessions()
    assert sessions["idle"].status == "timeout"
    assert sessions["busy"].status == "timeout"  # idle too, after its last entry
    assert len(sessions["busy"].entries) == 6
    assert stats["timed_out"] == 2 and stats["late_entries"] == 1


async def test_max_open_sessions_evicts_the_least_recently_active(face: Any) -> None:
    """The least recently active session is evicted (status `evicted`); never raises."""
    log = await face(max_open_sessions=2)
    await log.start("a")
    await log.start("b")
    await log.log("a", "a is active")  # now b is the least recently active
    await log.start("c")  # evicts b
    await log.log("b", "late")  # counted
    await log.start("d")  # evicts a
    stats = log.logger.stats()
    await log.close()
    sessions = log.sessions()
    assert sessions["b"].status == "evicted" and sessions["a"].status == "evicted"
    assert sessions["c"].status == sessions["d"].status == "interrupted"
    assert stats["evicted_sessions"] == 2 and stats["late_entries"] == 1
    assert stats["open_sessions"] == 2


# -- child sessions -------------------------------------------------------------------------
async def test_children_record_their_parent(face: Any) -> None:
    """parent_id= and parent=handle put parent_session_id in the start entry."""
    log = await face()
    await log.start("parent")
    await log.start("child-1", parent_id="parent")
    if log.kind == "sync":
        with log.logger.session("parent-2") as handle, log.logger.session("c2", parent=handle):
            pass
    else:
        async with (
            log.logger.session("parent-2") as handle,
            log.logger.session("c2", parent=handle),
        ):
            pass
    await log.close()
    sessions = log.sessions()
    assert sessions["child-1"].start is not None
    assert sessions["child-1"].start["parent_session_id"] == "parent"
    assert sessions["c2"].start is not None and sessions["c2"].start["parent_session_id"] == (
        "parent-2"
    )
    assert sessions["parent"].start is not None
    assert "parent_session_id" not in sessions["parent"].start


def test_a_token_lets_another_process_open_a_child(tmp_path: Path) -> None:
    """A worker process that holds only the token opens a child of the parent session."""
    path = tmp_path / "log.jsonl"
    with SessionLogger(path=str(path), dead_letter_path=None) as log, log.session("job") as job:
        token = job.token()
        worker = textwrap.dedent(
            f"""
            import sys
            from async_session_logger import SessionLogger
            with SessionLogger(path={str(path)!r}, dead_letter_path=None) as log:
                with log.session("job-step-1", parent={token!r}) as step:
                    step.info("working")
                    print(step.token())
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", worker],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT)},
        )
    grandchild_token = done.stdout.strip()
    sessions = {s.session_id: s for s in read_sessions(path)}
    step = sessions["job-step-1"]
    assert step.start is not None and step.start["parent_session_id"] == "job"
    assert [e["message"] for e in step.entries] == ["working"]
    # The worker's token still names the root of the tree.
    with SessionLogger(method="stdout", dead_letter_path=None) as other:
        other.start_session("grandchild", parent_id=grandchild_token)
        assert other.token("grandchild") != grandchild_token


@pytest.mark.parametrize(
    "bad",
    ["asl1.!!!", "asl1." + "A" * 2000, "asl1.bm90IGpzb24", "asl1.WzFd", "../x", "", "a/b"],
)
def test_malformed_parents_raise_at_the_call(bad: str) -> None:
    """A broken token or an unsafe parent id raises InvalidSessionIdError at the call."""
    with SessionLogger(method="stdout", dead_letter_path=None) as log:
        with pytest.raises(InvalidSessionIdError):
            log.start_session("child", parent_id=bad)
        assert not log.is_open("child")


def test_open_sessions_bound_keeps_memory_flat(tmp_path: Path) -> None:
    """20,000 sessions never closed, max_open_sessions=500: the logger keeps ~500 sessions'
    worth of memory (unbounded, the same run holds ~8 MB)."""
    import tracemalloc

    with SessionLogger(
        path=str(tmp_path / "log.jsonl"), dead_letter_path=None, max_open_sessions=500
    ) as log:
        log.save_logs()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            log.start_session(f"session-{i:08d}", {"user_id": f"u{i}"})
            log.log_entry(f"session-{i:08d}", "served")
        log.save_logs()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        stats = log.stats()
    assert stats["open_sessions"] == 500 and stats["evicted_sessions"] == 19_500
    # 500 open sessions (~400 B each) plus the 10,000 most recently closed ids.
    assert grown < 5_000_000, grown


def test_exit_without_close_writes_what_was_held(tmp_path: Path) -> None:
    """A script that exits without close(): its open session is interrupted at exit, so the
    entries it held are written."""
    path = tmp_path / "log.jsonl"
    script = textwrap.dedent(
        f"""
        from async_session_logger import SessionLogger
        log = SessionLogger(path={str(path)!r}, dead_letter_path=None, buffer_level="DEBUG")
        log.start_session("job")
        log.log_entry("job", "step 1", "DEBUG")
        log.log_entry("job", "step 2", "DEBUG")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"PYTHONPATH": str(ROOT)})
    (session,) = read_sessions(path)
    assert session.status == "interrupted"
    assert _messages(session) == ["step 1", "step 2"]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork() is POSIX-only")
def test_held_entries_are_written_once_across_a_fork(tmp_path: Path) -> None:
    """A forked child neither writes nor keeps the parent's held entries; the parent's
    failure writes them once."""
    import os

    path = tmp_path / "log.jsonl"
    log = SessionLogger(path=str(path), dead_letter_path=None, buffer_level="DEBUG")
    log.start_session("parent")
    log.log_entry("parent", "held before the fork", "DEBUG")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            log.start_session("child")
            log.log_entry("child", "child detail", "DEBUG")
            log.log_entry("child", "child failed", "ERROR")
            log.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    log.log_entry("parent", "parent failed", "ERROR")
    log.close()
    sessions = {s.session_id: s for s in read_sessions(path)}
    assert _messages(sessions["parent"]) == ["held before the fork", "parent failed"]
    assert _messages(sessions["child"]) == ["child detail", "child failed"]


async def test_held_entries_past_the_queue_bound_are_all_written(tmp_path: Path) -> None:
    """500 held entries released into a queue of 10 (overflow="block"): none is lost."""
    path = tmp_path / "log.jsonl"
    async with AsyncSessionLogger(
        path=str(path), dead_letter_path=None, buffer_level="DEBUG", max_queue=10
    ) as alog:
        await alog.start_session("s")
        for i in range(500):
            await alog.log_entry("s", f"d{i}", "DEBUG")
        await alog.log_entry("s", "boom", "ERROR")
        await alog.close_session("s")
        report = await alog.save_logs()
    assert report.ok
    (session,) = read_sessions(path)
    assert _messages(session) == [f"d{i}" for i in range(500)] + ["boom"]
    assert session.missing_seqs == []
