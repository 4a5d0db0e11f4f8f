"""async_session_logger.testing: capture_sessions(), SessionCapture and the session_log fixture."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    SessionLogger,
    SessionLoggerError,
    current_session,
)
from async_session_logger._recorder import TAPS
from async_session_logger.sinks import MemorySink
from async_session_logger.testing import (
    SessionCapture,
    SessionNotCapturedError,
    capture_sessions,
)

from .conftest import FaceFactory

pytest_plugins = ["pytester"]


def move_user(entry: dict[str, Any]) -> dict[str, Any]:
    """A formatter that edits custom_fields in place: moves ``user`` to the top level."""
    fields = entry.get("custom_fields")
    if fields is not None and "user" in fields:
        entry["user"] = fields.pop("user")
    return entry


@pytest.fixture
def memory_logger() -> Iterator[tuple[SessionLogger, MemorySink]]:
    """A sync logger writing to a MemorySink only; closed at teardown."""
    sink = MemorySink()
    log = SessionLogger(sinks=[sink])
    yield log, sink
    log.close()


def test_sync_face_entries_are_visible_when_the_verb_returns(
    memory_logger: tuple[SessionLogger, MemorySink],
) -> None:
    """Each sync verb's entry is in the capture as soon as it returns, without save_logs()."""
    log, _ = memory_logger
    with capture_sessions() as capture:
        log.start_session("job", {"kind": "nightly"})
        assert [e["event"] for e in capture.entries] == ["session_start"]
        assert capture.entries[0]["metadata"] == {"kind": "nightly"}
        log.log_entry("job", "step 1", "DEBUG", {"n": 1})
        assert capture.messages("job") == ["step 1"]
        assert capture.entries[-1]["custom_fields"] == {"n": 1}
        log.close_session("job", "error")
        assert capture.status("job") == "error"
        assert [e["seq"] for e in capture.session("job")] == [0, 1, 2]


async def test_async_face_entries_are_visible_at_call_time() -> None:
    """An async verb's entry is captured when it is called, before it is awaited; so is one
    queued without await through current_session() from a plain function."""

    def helper() -> None:
        handle = current_session()
        assert handle is not None
        handle.warning("from a plain function")  # no await: queued at call time

    sink = MemorySink()
    async with AsyncSessionLogger(sinks=[sink]) as alog:
        with capture_sessions() as capture:
            async with alog.session("req-1", {"path": "/"}) as s:
                pending = s.info("handling")
                assert capture.messages("req-1") == ["handling"]
                await pending
                helper()
                assert capture.levels("req-1") == ["INFO", "WARNING"]
                assert capture.status("req-1") is None  # still open
            assert capture.status("req-1") == "closed"


async def test_entries_equal_what_the_sinks_receive(make_logger: FaceFactory) -> None:
    """Captured entries are the sinks' entries: masking and the formatter applied, even a
    formatter that edits custom_fields in place (it runs once on each side's own copy)."""
    sink = MemorySink()
    face = await make_logger(sinks=[sink], custom_formatter=move_user)
    with capture_sessions() as capture:
        await face.start_session("s-1", {"api_key": "k-123", "region": "eu"})
        await face.log_entry("s-1", "login", "INFO", {"user": "ann", "password": "hunter2"})
        await face.log_entry("s-1", "plain", "WARNING", {"user": "bob", "tags": ["a"]})
        await face.close_session("s-1")
    await face.save_logs()
    assert capture.entries == sink.entries
    start, login, plain, _ = capture.entries
    assert start["metadata"] == {"api_key": "***", "region": "eu"}
    assert login["custom_fields"] == {"password": "***"} and login["user"] == "ann"
    assert plain["custom_fields"] == {"tags": ["a"]} and plain["user"] == "bob"
    # A test editing what it captured does not change what the sinks got.
    plain["custom_fields"]["tags"].append("edited")
    assert sink.entries[2]["custom_fields"] == {"tags": ["a"]}


async def test_both_faces_and_loggers_made_inside_the_block(make_logger: FaceFactory) -> None:
    """A capture sees a logger created before it and one created inside it, in call order."""
    before = await make_logger(sinks=[MemorySink()])
    with capture_sessions() as capture:
        inside = await make_logger(sinks=[MemorySink()])
        await before.start_session("a")
        await inside.start_session("b")
        await before.log_entry("a", "from before")
        await inside.log_entry("b", "from inside")
    assert capture.session_ids == ["a", "b"]
    assert [e["message"] for e in capture.find(event="log")] == ["from before", "from inside"]


def test_stdlib_bridge_records_are_captured() -> None:
    """Stdlib records routed by the bridge into the current session are captured, as the sink
    gets them (logger, source, extra= as masked custom_fields)."""
    from async_session_logger.stdlib import install, uninstall

    root = logging.getLogger()
    level = root.level
    sink = MemorySink()
    log = SessionLogger(sinks=[sink])
    handler = install(log, fallback="drop")
    try:
        with capture_sessions() as capture, log.session("web"):
            logging.getLogger("tests.app").warning("%d left", 3, extra={"token": "t"})
            (entry,) = capture.find(event="log")
            assert entry["message"] == "3 left" and entry["logger"] == "tests.app"
            assert entry["custom_fields"] == {"token": "***"}
        log.save_logs()
        assert capture.entries == sink.entries
    finally:
        uninstall(handler)
        root.setLevel(level)
        log.close()


def test_queries(memory_logger: tuple[SessionLogger, MemorySink]) -> None:
    """session_ids, session, levels, messages, status and find answer from the entries."""
    log, _ = memory_logger
    with capture_sessions() as capture:
        log.start_session("b")
        log.start_session("a")
        log.log_entry("a", "disk almost full", "WARNING")
        log.log_entry("b", "disk full", "ERROR", {"free": 0})
        log.log_entry("a", "cleaned up", "INFO")
        log.close_session("b", "error")
        assert capture.session_ids == ["b", "a"]
        assert capture.levels("a") == ["WARNING", "INFO"]
        assert capture.messages("a") == ["disk almost full", "cleaned up"]
        assert [e["event"] for e in capture.session("b")] == [
            "session_start",
            "log",
            "session_close",
        ]
        assert (capture.status("a"), capture.status("b")) == (None, "error")
        assert [e["message"] for e in capture.find(message="disk")] == [
            "disk almost full",
            "disk full",
        ]
        # The close entry of an "error" session is an ERROR entry too.
        assert capture.find(level="error") == capture.find(level=40) == capture.session("b")[1:]
        assert capture.find(level="ERROR", event="log") == [capture.session("b")[1]]
        assert len(capture.find(session_id="a", event="log")) == 2
        assert capture.find(session_id="a", level="ERROR") == []
        assert capture.find(session_id="nope") == []


def test_unknown_session_is_a_key_error_listing_the_captured_ids(
    memory_logger: tuple[SessionLogger, MemorySink],
) -> None:
    """Asking for a session with no captured entry raises a KeyError naming the known ids."""
    log, _ = memory_logger
    with capture_sessions() as capture:
        with pytest.raises(SessionNotCapturedError, match="captured sessions: none"):
            capture.session("x")
        log.start_session("job-1")
        log.start_session("job-2")
        with pytest.raises(KeyError) as caught:
            capture.levels("job-3")
    assert isinstance(caught.value, SessionLoggerError)
    assert caught.value.session_id == "job-3"  # type: ignore[attr-defined]
    assert str(caught.value) == (
        "no entry of session 'job-3' was captured; captured sessions: 'job-1', 'job-2'"
    )


def test_reused_id_shows_every_run_in_order(
    memory_logger: tuple[SessionLogger, MemorySink],
) -> None:
    """A session id run twice: both runs' entries, in order; status follows the latest run."""
    log, _ = memory_logger
    with capture_sessions() as capture:
        for attempt in (1, 2):
            log.start_session("retry")
            log.log_entry("retry", f"attempt {attempt}")
            log.close_session("retry", "error" if attempt == 1 else "closed")
        log.start_session("retry")
        assert capture.session_ids == ["retry"]
        assert capture.messages("retry") == ["attempt 1", "attempt 2"]
        assert [e["event"] for e in capture.session("retry")] == [
            *("session_start", "log", "session_close") * 2,
            "session_start",
        ]
        assert capture.status("retry") is None  # the third run is open
        log.close_session("retry")
        assert capture.status("retry") == "closed"


def test_threads_log_at_once(memory_logger: tuple[SessionLogger, MemorySink]) -> None:
    """Entries logged from several threads at once are all captured, each session in order,
    and equal the sink's entries."""
    log, sink = memory_logger
    threads, per_thread = 6, 200
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        barrier.wait(timeout=30)
        with log.session(f"t{n}") as s:
            for i in range(per_thread):
                s.info(f"{n}:{i}")

    with capture_sessions() as capture:
        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert len(capture.entries) == threads * (per_thread + 2)
        for n in range(threads):
            assert capture.messages(f"t{n}") == [f"{n}:{i}" for i in range(per_thread)]
            assert [e["seq"] for e in capture.session(f"t{n}")] == list(range(per_thread + 2))
    log.save_logs()
    key = lambda e: (e["session_id"], e["seq"])  # noqa: E731
    assert sorted(capture.entries, key=key) == sorted(sink.entries, key=key)


def test_nested_captures_each_see_everything_while_active(
    memory_logger: tuple[SessionLogger, MemorySink],
) -> None:
    """An inner capture sees what is logged inside it; the outer one sees all of it too."""
    log, _ = memory_logger
    log.start_session("s")
    with capture_sessions() as outer:
        log.log_entry("s", "a")
        with capture_sessions() as inner:
            log.log_entry("s", "b")
        log.log_entry("s", "c")
    assert outer.messages("s") == ["a", "b", "c"]
    assert inner.messages("s") == ["b"]


def test_overlapping_captures_in_threads(
    memory_logger: tuple[SessionLogger, MemorySink],
) -> None:
    """Two threads' captures that overlap both see both threads' entries logged meanwhile."""
    log, _ = memory_logger
    taps_before = list(TAPS)
    entered, logged = threading.Barrier(2), threading.Barrier(2)
    captures: dict[str, SessionCapture] = {}

    def work(name: str) -> None:
        with capture_sessions() as capture:
            captures[name] = capture
            entered.wait(timeout=30)
            with log.session(name) as s:
                s.info(f"hello from {name}")
            logged.wait(timeout=30)

    workers = [threading.Thread(target=work, args=(name,)) for name in ("x", "y")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(captures) == ["x", "y"]
    for capture in captures.values():
        assert sorted(capture.session_ids) == ["x", "y"]
        assert capture.messages("x") == ["hello from x"]
        assert capture.messages("y") == ["hello from y"]
    assert taps_before == TAPS


def test_exit_removes_the_tap(memory_logger: tuple[SessionLogger, MemorySink]) -> None:
    """Leaving the block removes the tap: later entries are not captured, earlier ones stay."""
    log, sink = memory_logger
    taps_before = list(TAPS)
    with capture_sessions() as capture:
        assert len(TAPS) == len(taps_before) + 1
        log.start_session("s")
    assert taps_before == TAPS
    log.log_entry("s", "after the block")
    log.close_session("s")
    assert [e["event"] for e in capture.entries] == ["session_start"]
    log.save_logs()
    assert len(sink.entries) == 3  # the sink got everything, captured or not


def test_clear_forgets_and_goes_on(memory_logger: tuple[SessionLogger, MemorySink]) -> None:
    """clear() drops what was captured; entries logged afterwards are captured again."""
    log, _ = memory_logger
    with capture_sessions() as capture:
        log.start_session("s")
        log.log_entry("s", "before")
        capture.clear()
        assert capture.entries == []
        log.log_entry("s", "after")
        assert capture.messages("s") == ["after"]


async def test_fixture_captures_in_an_async_test(session_log: SessionCapture) -> None:
    """The session_log fixture is there without any conftest line, and works in async tests."""
    async with AsyncSessionLogger(sinks=[MemorySink()]) as alog, alog.session("fixture") as s:
        await s.error("boom")
    assert session_log.levels("fixture") == ["ERROR"]
    assert session_log.status("fixture") == "closed"


GENERATED_TESTS = """
    import asyncio

    from async_session_logger import AsyncSessionLogger, SessionLogger
    from async_session_logger.sinks import MemorySink


    def test_sync(session_log):
        log = SessionLogger(sinks=[MemorySink()])
        with log.session("job-1") as s:
            s.info("hello")
        log.close()
        assert session_log.messages("job-1") == ["hello"]
        assert session_log.status("job-1") == "closed"


    def test_each_test_gets_a_fresh_capture(session_log):
        assert session_log.entries == []


    def test_async(session_log):
        async def main():
            async with AsyncSessionLogger(sinks=[MemorySink()]) as alog:
                async with alog.session("job-2") as s:
                    await s.warning("careful")

        asyncio.run(main())
        assert session_log.levels("job-2") == ["WARNING"]
"""


def test_fixture_comes_from_the_entry_point(pytester: pytest.Pytester) -> None:
    """In a fresh pytest process with no conftest, session_log works (function scope), and
    disabling the entry point's plugin takes the fixture away."""
    pytester.makepyfile(test_generated=textwrap.dedent(GENERATED_TESTS))
    assert not list(pytester.path.rglob("conftest.py"))
    # Hypothesis is no part of this and costs 2 s of imports per run.
    quick = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result = pytester.runpytest_subprocess(*quick)
    result.assert_outcomes(passed=3)
    without = pytester.runpytest_subprocess(*quick, "-p", "no:async_session_logger")
    without.assert_outcomes(errors=3)
    without.stdout.fnmatch_lines(["*fixture 'session_log' not found*"])


def test_testing_module_does_not_import_pytest() -> None:
    """async_session_logger.testing is usable without pytest: importing it loads none."""
    code = "import sys, async_session_logger.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_async_capture_in_asyncio_run() -> None:
    """capture_sessions() works around asyncio code (it does no I/O), sync block or not."""

    async def main() -> SessionCapture:
        with capture_sessions() as capture:
            async with AsyncSessionLogger(sinks=[MemorySink()]) as alog:
                await alog.start_session("r")
                await asyncio.gather(*(alog.log_entry("r", f"m{i}") for i in range(3)))
        return capture

    capture = asyncio.run(main())
    assert capture.messages("r") == ["m0", "m1", "m2"]
    assert capture.status("r") == "interrupted"  # aclose() interrupted the open session
