"""The stdlib bridge: logging records into the current session, fallbacks, no feedback."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import logging.config
import math
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    AsyncSessionLogger,
    ConfigurationError,
    InvalidFieldsError,
    Origin,
    SessionLogger,
    current_session,
    read_entries,
    read_sessions,
)
from async_session_logger import stdlib as stdlib_module
from async_session_logger._core import record_extra
from async_session_logger.cli import main
from async_session_logger.sinks import FileSink, MemorySink, MqttSink
from async_session_logger.stdlib import (
    SessionLogHandler,
    install,
    process_session_id,
    reinstall,
    uninstall,
)

from .mqtt_broker import Broker

log = logging.getLogger("tests.app")


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Restore the root logger's level and handlers after each test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
        named.setLevel(logging.NOTSET)


def _logs(mem: MemorySink, session_id: str) -> list[dict[str, Any]]:
    return [e for e in mem.for_session(session_id) if e["event"] == "log"]


def test_record_becomes_an_entry_of_the_current_session() -> None:
    """Level, % args, logger, source, exception, stack and masked extra= all land."""
    mem = MemorySink()
    with SessionLogger(sinks=[mem], dead_letter_path=None) as slog:
        handler = install(slog, level=logging.DEBUG)
        with slog.session("s1"):
            log.debug("n=%d name=%s", 3, "ada", extra={"order": 7, "api_key": "k"})
            try:
                {}["missing"]
            except KeyError:
                log.exception("lookup failed")
            log.warning("with stack", stack_info=True)
        slog.save_logs()
        uninstall(handler)
    debug, error, warning = _logs(mem, "s1")
    assert debug["level"] == "DEBUG" and debug["levelno"] == 10
    assert debug["message"] == "n=3 name=ada"
    assert debug["logger"] == "tests.app"
    assert debug["source"]["function"] == "test_record_becomes_an_entry_of_the_current_session"
    assert debug["source"]["module"] == "test_stdlib"
    assert debug["source"]["file"] == __file__
    assert isinstance(debug["source"]["line"], int)
    assert debug["custom_fields"] == {"api_key": "***", "order": 7}
    assert error["level"] == "ERROR" and "KeyError: 'missing'" in error["exception"]
    assert "Traceback" in error["exception"]
    assert "Stack (most recent call last)" in warning["stack"]
    assert handler.stats()["current"] == 3


async def test_async_face_interleaved_tasks_no_cross_talk(tmp_path: Path) -> None:
    """50 interleaving requests logging through stdlib: each session holds only its own."""
    path = tmp_path / "l.jsonl"
    async with AsyncSessionLogger(path=str(path), dead_letter_path=None) as alog:
        handler = install(alog)

        async def request(i: int) -> None:
            async with alog.session(f"req-{i}"):
                for step in range(4):
                    log.info("step", extra={"req": i, "step": step})
                    await asyncio.sleep(0)

        await asyncio.gather(*(request(i) for i in range(50)))
        uninstall(handler)
    sessions = {s.session_id: s for s in read_sessions(path)}
    assert len(sessions) == 50
    for sid, session in sessions.items():
        fields = [e["custom_fields"] for e in session.entries if e["event"] == "log"]
        assert [f["step"] for f in fields] == [0, 1, 2, 3]
        assert {f["req"] for f in fields} == {int(sid.split("-")[1])}


async def test_a_burst_past_the_queue_bound_on_the_loop_leaves_no_waiter(tmp_path: Path) -> None:
    """A coroutine logs 3,000 records through stdlib without awaiting (a library's burst)
    into an async face whose queue holds 100: the bridge cannot wait, and no call of it is
    counted as a waiting producer; a task that then waits for room resumes, and every
    record is written in order."""
    path = tmp_path / "l.jsonl"
    alog = AsyncSessionLogger(path=str(path), dead_letter_path=None, max_queue=100)
    handler = install(alog)
    try:
        async with asyncio.timeout(20), alog, alog.session("burst"):
            for i in range(3_000):
                log.info("record %d", i)
            assert alog.stats()["waiting"] == 0
            assert alog.stats()["queued"] > 100
            await alog.log_entry("burst", "after the burst")
    except TimeoutError:
        raise AssertionError("the waiting task never resumed") from None
    finally:
        uninstall(handler)
    messages = [e["message"] for e in read_entries(path) if e["event"] == "log"]
    assert messages == [f"record {i}" for i in range(3_000)] + ["after the burst"]


def test_eight_threads_each_in_their_own_session(tmp_path: Path) -> None:
    """8 threads each in `with logger.session()`, logging through stdlib: no cross-talk."""
    path = tmp_path / "l.jsonl"
    barrier = threading.Barrier(8)
    with SessionLogger(path=str(path), dead_letter_path=None) as slog:
        handler = install(slog)

        def worker(i: int) -> None:
            with slog.session(f"thread-{i}"):
                barrier.wait()
                for step in range(200):
                    log.info("work %d", step, extra={"worker": i})

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        uninstall(handler)
    sessions = {s.session_id: s for s in read_sessions(path)}
    assert sorted(sessions) == [f"thread-{i}" for i in range(8)]
    for sid, session in sessions.items():
        logs = [e for e in session.entries if e["event"] == "log"]
        assert len(logs) == 200
        assert {e["custom_fields"]["worker"] for e in logs} == {int(sid.split("-")[1])}
        assert [e["message"] for e in logs] == [f"work {n}" for n in range(200)]


def test_no_session_goes_to_the_process_session() -> None:
    """Outside any session a record lands in process-<host>-<pid>, closed 'closed' at close."""
    mem = MemorySink()
    slog = SessionLogger(sinks=[mem], dead_letter_path=None)
    handler = install(slog)
    log.info("outside %s", "any session")
    log.warning("again")
    report = slog.close()
    uninstall(handler)
    sid = process_session_id()
    host = socket.gethostname()
    assert sid.startswith("process-") and sid.endswith(f"-{os.getpid()}")
    entries = mem.for_session(sid)
    start, first, second, close = entries
    assert start["metadata"]["kind"] == "process"
    assert start["metadata"]["pid"] == os.getpid()
    assert start["metadata"]["hostname"] == host
    assert start["metadata"]["argv"] == sys.argv
    assert [first["message"], second["message"]] == ["outside any session", "again"]
    assert close["status"] == "closed"  # not "interrupted": the bridge closes it on close
    assert report.interrupted_sessions == 0
    assert handler.stats()["fallback"] == 2


def test_named_and_dropping_fallbacks() -> None:
    """fallback='session' uses (or starts) the named session; 'drop' counts what it drops."""
    mem = MemorySink()
    with SessionLogger(sinks=[mem], dead_letter_path=None) as slog:
        named = SessionLogHandler(slog, fallback="session", fallback_session="app")
        dropping = SessionLogHandler(slog, fallback="drop")
        for handler in (named, dropping):
            log.addHandler(handler)
        try:
            log.error("no session here")
            with slog.session("inside"):
                log.warning("in a session")
        finally:
            for handler in (named, dropping):
                log.removeHandler(handler)
        slog.save_logs()
    assert [e["message"] for e in _logs(mem, "app")] == ["no session here"]
    # Both handlers wrote the in-session record into the session; only one was dropped.
    assert [e["message"] for e in _logs(mem, "inside")] == ["in a session"] * 2
    assert dropping.stats()["dropped"] == 1 and dropping.stats()["current"] == 1
    assert named.stats()["fallback"] == 1
    assert mem.for_session("app")[-1]["status"] == "closed"


def test_bad_configuration_raises_at_construction() -> None:
    """Unknown fallback, a missing or unsafe fallback_session: ConfigurationError / id error."""
    slog = SessionLogger(method="stdout", dead_letter_path=None)
    with pytest.raises(ConfigurationError):
        SessionLogHandler(slog, fallback="nowhere")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SessionLogHandler(slog, fallback="session")
    with pytest.raises(ValueError, match="session id"):
        SessionLogHandler(slog, fallback="session", fallback_session="../etc")
    slog.close()


def test_hostile_records_never_raise(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad % args, a huge message, unencodable extras, a closed logger: no exception escapes."""
    mem = MemorySink()
    slog = SessionLogger(sinks=[mem], dead_letter_path=None, max_message_chars=1000)
    handler = SessionLogHandler(slog)
    # Its own logger, not propagating: pytest's capture handler on the root logger would
    # itself raise on the bad % args.
    hostile = logging.getLogger("tests.hostile")
    hostile.propagate = False
    hostile.addHandler(handler)
    try:
        with slog.session("h"):
            hostile.warning("bad args %d", "not a number")
            hostile.warning("x" * 5000)
            hostile.warning("odd extra", extra={"obj": object(), "raw": b"\xff"})
        slog.close()
        hostile.error("after close")  # the logger is closed: stderr, counted
    finally:
        hostile.removeHandler(handler)
        hostile.propagate = True
    bad, huge, _ = _logs(mem, "h")
    assert "bad args %d" in bad["message"] and "not applied" in bad["message"]
    assert len(huge["message"]) <= 1000 and "truncated: 5000 characters" in huge["message"]
    (line,) = [json.loads(x) for x in mem.lines if b"odd extra" in x]
    assert "object object" in line["custom_fields"]["obj"]
    assert line["custom_fields"]["raw"] == "\\xff"
    err = capsys.readouterr().err
    assert "after close" in err
    assert handler.stats()["failed"] == 1


def test_a_session_closed_inside_its_block_falls_back() -> None:
    """A record after the current session was closed goes to the fallback, not lost."""
    mem = MemorySink()
    with SessionLogger(sinks=[mem], dead_letter_path=None) as slog:
        handler = install(slog)
        with slog.session("short") as s:
            slog.close_session("short")
            assert current_session() is s
            log.info("late")
        slog.save_logs()
        uninstall(handler)
    assert [e["message"] for e in _logs(mem, process_session_id())] == ["late"]


def test_custom_handler_logging_through_stdlib_is_not_fed_back() -> None:
    """A custom handler that logs through stdlib: counted as internal, no endless loop."""
    seen: list[str] = []

    def handler_fn(line: str) -> None:
        seen.append(line)
        logging.getLogger("tests.handler").warning("handled one line")

    slog = SessionLogger(method="custom", custom_handler=handler_fn, dead_letter_path=None)
    bridge = install(slog)
    with slog.session("c"):
        slog.log_entry("c", "one")
    slog.save_logs()
    slog.close()
    uninstall(bridge)
    assert len(seen) == 3  # start, log, close: nothing more
    assert bridge.stats()["internal"] == 3


async def test_mqtt_client_records_are_not_fed_back(tmp_path: Path) -> None:
    """aiomqtt/paho DEBUG records under a root handler at DEBUG: no feedback loop."""
    with Broker(workdir=tmp_path / "broker") as broker:
        sink = MqttSink("127.0.0.1", broker.port, qos=1)
        mem = MemorySink()
        async with AsyncSessionLogger(sinks=[sink, mem], dead_letter_path=None) as alog:
            bridge = install(alog, level=logging.DEBUG)
            async with alog.session("m") as s:
                for i in range(20):
                    await s.info(f"entry {i}")
            await alog.save_logs()
            await asyncio.sleep(0.2)  # let the client log what it logs after publishing
            published = alog.stats()["sinks"][sink.name]["delivered"]
        uninstall(bridge)
    assert published == 22
    stats = bridge.stats()
    assert stats["internal"] > 0  # the client did log, and it was kept out
    assert stats["fallback"] == stats["current"] == stats["failed"] == 0
    assert {e["session_id"] for e in mem.entries} == {"m"}  # no process session was fed


def test_install_reaches_uvicorn_loggers_after_dictconfig(tmp_path: Path) -> None:
    """uvicorn's dictConfig (propagate=False) drops the handler; reinstall() restores it."""
    mem = MemorySink()
    with SessionLogger(sinks=[mem], dead_letter_path=None) as slog:
        handler = install(slog)
        # What uvicorn.run() does after the app module was imported.
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"null": {"class": "logging.NullHandler"}},
                "loggers": {
                    "uvicorn": {"handlers": ["null"], "level": "INFO", "propagate": False},
                    "uvicorn.error": {"level": "INFO"},
                    "uvicorn.access": {"handlers": ["null"], "level": "INFO", "propagate": False},
                },
            }
        )
        with slog.session("r"):
            logging.getLogger("uvicorn.access").info("lost before reinstall")
            reinstall()
            logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET / HTTP/1.1" 200')
            logging.getLogger("uvicorn.error").info("Application startup complete.")
            logging.getLogger("aiohttp.access").info("aiohttp propagates to the root")
            reinstall()  # idempotent: nothing attached twice
            logging.getLogger("uvicorn.access").info("once")
        slog.save_logs()
        uninstall(handler)
    assert [(e["logger"], e["message"]) for e in _logs(mem, "r")] == [
        ("uvicorn.access", '127.0.0.1 - "GET / HTTP/1.1" 200'),
        ("uvicorn.error", "Application startup complete."),
        ("aiohttp.access", "aiohttp propagates to the root"),
        ("uvicorn.access", "once"),
    ]
    assert handler not in logging.getLogger("uvicorn.access").handlers  # uninstalled


def test_install_lowers_a_stricter_root_level() -> None:
    """install(level=INFO) lowers root from WARNING, and never raises a lower level."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    slog = SessionLogger(method="stdout", dead_letter_path=None)
    handler = install(slog, level=logging.INFO)
    assert root.level == logging.INFO
    uninstall(handler)
    root.setLevel(logging.DEBUG)
    handler = install(slog, level=logging.INFO)
    assert root.level == logging.DEBUG
    uninstall(handler)
    slog.close()


def test_record_from_a_thread_running_its_own_loop_is_queued(tmp_path: Path) -> None:
    """A library with its own loop in another thread logs into the async logger's session."""
    path = tmp_path / "l.jsonl"

    async def main() -> None:
        async with AsyncSessionLogger(path=str(path), dead_letter_path=None) as alog:
            handler = install(alog, fallback="session", fallback_session="bg")

            def other_loop() -> None:
                async def job() -> None:
                    log.info("from another loop")

                asyncio.run(job())

            thread = threading.Thread(target=other_loop)
            thread.start()
            await asyncio.to_thread(thread.join)
            uninstall(handler)

    asyncio.run(main())
    (session,) = read_sessions(path)
    assert session.session_id == "bg"
    assert [e["message"] for e in session.entries if e["event"] == "log"] == ["from another loop"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_forked_child_gets_its_own_process_session(tmp_path: Path) -> None:
    """After fork, the child's records go to process-<host>-<child pid>."""
    path = tmp_path / "l.jsonl"
    slog = SessionLogger(path=str(path), dead_letter_path=None)
    handler = install(slog)
    log.info("parent")
    slog.save_logs()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            log.info("child")
            slog.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    slog.close()
    uninstall(handler)
    assert os.waitstatus_to_exitcode(status) == 0
    sessions = {s.session_id: s for s in read_sessions(path)}
    parent = process_session_id()
    child = parent.rsplit("-", 1)[0] + f"-{pid}"
    assert sorted(sessions) == sorted([parent, child])
    assert [e["message"] for e in sessions[child].entries if e["event"] == "log"] == ["child"]
    assert sessions[child].status == "closed"


def test_show_renders_bridged_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`show` puts the logger name before the message and the source as file:line in function;
    a hostile logger name is escaped."""
    path = tmp_path / "l.jsonl"
    with SessionLogger(path=str(path), dead_letter_path=None) as slog:
        handler = install(slog)
        with slog.session("s"):
            logging.getLogger("lib.db").warning("slow query")
            logging.getLogger("evil\x1b[2J").warning("x")
        uninstall(handler)
    assert main(["show", "s", str(path), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "WARNING  lib.db: slow query" in out
    assert f"source: {__file__}:" in out and "in test_show_renders_bridged_records" in out
    assert "evil\\x1b[2J: x" in out and "\x1b" not in out


async def test_log_record_checks_origin_at_the_call_site(tmp_path: Path) -> None:
    """origin may only hold logger/source/stack: anything else raises, on both faces."""
    slog = SessionLogger(path=str(tmp_path / "s.jsonl"), dead_letter_path=None)
    async with AsyncSessionLogger(path=str(tmp_path / "a.jsonl"), dead_letter_path=None) as alog:
        await alog.start_session("a")
        slog.start_session("a")
        for face in (alog, slog):
            with pytest.raises(InvalidFieldsError, match="seq"):
                face.log_record("a", "m", "INFO", origin={"seq": 99})
            with pytest.raises(InvalidFieldsError, match="mapping"):
                face.log_record("a", "m", "INFO", origin=["logger"])  # type: ignore[arg-type]
            face.log_record("a", "ok", "INFO", origin={"logger": "x"}, exception="tb")
    slog.close()
    for name in ("s.jsonl", "a.jsonl"):
        (session,) = read_sessions(tmp_path / name)
        (entry,) = session.entries
        assert (entry["seq"], entry["logger"], entry["exception"]) == (1, "x", "tb")


def test_origin_is_checked_read_only_and_encoded_only_when_exact() -> None:
    """An Origin is checked as log_record() checks an origin dict, cannot be changed, and
    carries JSON text only when that text says exactly what the dict does."""
    with pytest.raises(InvalidFieldsError, match="seq"):
        Origin({"seq": 1})
    with pytest.raises(InvalidFieldsError, match="mapping"):
        Origin(["logger"])  # type: ignore[arg-type]
    origin = Origin({"logger": "app", "source": {"file": "f.py", "line": 3}})
    assert dict(origin) == {"logger": "app", "source": {"file": "f.py", "line": 3}}
    assert origin.json == '{"logger":"app","source":{"file":"f.py","line":3}}'
    source = {"file": "g.py"}
    copied = Origin({"logger": "app", "source": source})
    source["file"] = "changed later"  # the Origin holds values of its own
    assert copied["source"] == {"file": "g.py"} and "g.py" in (copied.json or "")
    assert record_extra("tb", copied)["source"] == {"file": "g.py"}  # type: ignore[index]
    with pytest.raises(TypeError):
        origin["logger"] = "other"  # type: ignore[index]
    assert record_extra(None, origin) is origin.json
    assert record_extra("tb", origin) == {**origin, "exception": "tb"}
    assert record_extra(None, dict(origin)) == dict(origin)
    inexact: list[dict[str, Any]] = [
        {"logger": datetime.datetime(2026, 1, 1)},  # orjson would write a string
        {"logger": math.nan},  # null
        {"source": {"line": 2**70}},  # past 64 bits
        {"source": {1: "x"}},  # a key that is not a string
        {"logger": "\ud800"},  # a lone surrogate
        {},  # nothing to say
    ]
    for items in inexact:
        assert Origin(items).json is None
        assert type(record_extra(None, Origin(items))) in (dict, type(None))


async def test_an_origin_writes_what_its_dict_would(tmp_path: Path) -> None:
    """log_record(origin=Origin(...)) gives the entry a plain dict origin gives, in the file
    and in the dicts a sink reads, on both faces; an origin JSON cannot say exactly takes the
    dict path and is written as before."""
    items = {"logger": "app", "source": {"file": "f.py", "line": 3, "function": "f"}}
    odd = {"logger": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)}
    memory = MemorySink()
    slog = SessionLogger(sinks=[FileSink(tmp_path / "s.jsonl"), memory], dead_letter_path=None)
    async with AsyncSessionLogger(path=str(tmp_path / "a.jsonl"), dead_letter_path=None) as alog:
        await alog.start_session("s")
        slog.start_session("s")
        for face in (alog, slog):
            for origin in (items, Origin(items), odd, Origin(odd)):
                face.log_record("s", "m", "INFO", {"user": "u"}, origin=origin)
            face.log_record("s", "m", "INFO", origin=Origin(items), exception="tb")
    slog.save_logs()
    held = [e for e in memory.entries if e["event"] == "log"]
    slog.close()
    for name in ("s.jsonl", "a.jsonl"):
        (session,) = read_sessions(tmp_path / name)
        plain, encoded, odd_plain, odd_origin, with_tb = session.entries
        strip = ("seq", "timestamp")
        assert {k: v for k, v in encoded.items() if k not in strip} == {
            k: v for k, v in plain.items() if k not in strip
        }
        assert encoded["logger"] == "app" and encoded["source"]["line"] == 3
        assert odd_origin["logger"] == odd_plain["logger"] == "2026-01-01T00:00:00+00:00"
        assert (with_tb["logger"], with_tb["exception"]) == ("app", "tb")
    assert [e["logger"] for e in held[:2]] == ["app", "app"]
    assert held[0]["source"] == held[1]["source"] == items["source"]


def test_one_origin_per_call_site() -> None:
    """Records of one call site share one read-only origin; another line, logger or function
    gets its own; stack_info and attributes a dict cannot key take a fresh dict; the cache
    stays bounded."""
    handler = SessionLogHandler(SessionLogger(method="custom", custom_handler=lambda _: None))
    logger = logging.getLogger("tests.origins")

    def record(line: int, name: str = "tests.origins", func: str = "f") -> logging.LogRecord:
        return logger.makeRecord(name, 20, "/app/f.py", line, "m %d", (line,), None, func)

    first, again = handler.convert(record(7))[3], handler.convert(record(7))[3]
    assert first is again and isinstance(first, Origin)
    assert dict(first) == {
        "logger": "tests.origins",
        "source": {"file": "/app/f.py", "line": 7, "function": "f", "module": "f"},
    }
    assert handler.convert(record(8))[3] is not first
    assert handler.convert(record(7, name="tests.other"))[3]["logger"] == "tests.other"
    assert handler.convert(record(7, func="g"))[3]["source"]["function"] == "g"
    stacked = record(7)
    stacked.stack_info = "Stack (most recent call last): ..."
    origin = handler.convert(stacked)[3]
    assert type(origin) is dict and origin["stack"] == stacked.stack_info
    odd = record(7)
    odd.funcName = ["not", "hashable"]  # type: ignore[assignment]
    assert handler.convert(odd)[3]["source"]["function"] == ["not", "hashable"]
    for line in range(5_000):
        handler.convert(record(line))
    assert 0 < len(stdlib_module._ORIGINS) <= stdlib_module._ORIGINS_BOUND
    handler.logger.close()


def test_install_detaches_when_its_logger_closes(capsys: pytest.CaptureFixture[str]) -> None:
    """After the logger closed, install()'s handler is gone: later records reach the other
    handlers as before, with no failure notice on stderr."""
    slog = SessionLogger(method="stdout", dead_letter_path=None)
    handler = install(slog)
    assert handler in logging.getLogger().handlers
    slog.close()
    assert handler not in logging.getLogger().handlers
    log.warning("after close")
    assert handler.stats()["records"] == 0
    assert "could not be logged" not in capsys.readouterr().err


def test_extra_fields_per_call_site_shape() -> None:
    """Each record's own extra= keys become its custom fields, sorted, whatever records of
    other shapes came before: a formatter's ``message``/``asctime`` stay out, a record
    factory's attribute counts as a field, and more shapes than the cache holds stay right."""
    handler = SessionLogHandler(SessionLogger(method="custom", custom_handler=lambda _: None))
    logger = logging.getLogger("tests.shapes")

    def record(extra: dict[str, Any] | None) -> logging.LogRecord:
        return logger.makeRecord(logger.name, 20, "f.py", 1, "m", None, None, extra=extra)

    assert handler.convert(record(None))[1] is None
    assert handler.convert(record({"b": 2, "a": 1}))[1] == {"a": 1, "b": 2}
    formatted = record({"z": 0})
    logging.Formatter("%(asctime)s %(message)s").format(formatted)  # adds message, asctime
    assert handler.convert(formatted)[1] == {"z": 0}
    assert handler.convert(record({"b": 3, "a": 4}))[1] == {"a": 4, "b": 3}  # same shape
    for i in range(1_500):  # past the cache's bound: it starts over, results stay right
        assert handler.convert(record({f"k{i}": i}))[1] == {f"k{i}": i}
    assert handler.convert(record({"a": 5, "b": 6}))[1] == {"a": 5, "b": 6}
    old_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = old_factory(*args, **kwargs)
        made.tenant = "t1"
        return made

    logging.setLogRecordFactory(factory)
    try:
        assert handler.convert(record({"a": 1}))[1] == {"a": 1, "tenant": "t1"}
    finally:
        logging.setLogRecordFactory(old_factory)
    handler.logger.close()


def test_a_record_made_while_one_is_converted_is_internal_and_the_guard_is_released() -> None:
    """A message argument whose ``__str__`` logs through stdlib: the inner record, made while
    the handler converts the outer one in the same thread, is counted as internal (no endless
    loop), and the next record of that thread is delivered again."""
    log = logging.getLogger("tests.reentrant")

    class Loud:
        def __str__(self) -> str:
            log.warning("from inside __str__")
            return "loud"

    mem = MemorySink()
    with SessionLogger(sinks=[mem], dead_letter_path=None) as slog:
        handler = SessionLogHandler(slog)  # the only handler: pytest's own would format first
        log.addHandler(handler)
        log.propagate = False
        try:
            with slog.session("r"):
                log.warning("value %s", Loud())
                log.warning("after")
            slog.save_logs()
        finally:
            log.removeHandler(handler)
            log.propagate = True
        stats = handler.stats()
    assert [e["message"] for e in _logs(mem, "r")] == ["value loud", "after"]
    assert stats["internal"] == 1
