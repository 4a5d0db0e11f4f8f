"""One behaviour suite, run against both faces: the sync facade and the async core."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from async_session_logger import (
    DuplicateSessionError,
    EntryTooLargeError,
    InvalidFieldsError,
    InvalidLevelError,
    InvalidMessageError,
    InvalidSessionIdError,
    LoggerClosedError,
    SessionClosedError,
    SessionLoggerError,
    UnknownSessionError,
)
from async_session_logger.sinks import MemorySink

from .conftest import FaceFactory, read_lines

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

HOSTILE_IDS: list[Any] = [
    "../x",
    "a/b",
    "a\\b",
    "#",
    "logs/#",
    "+",
    "a+b",
    "line\r\nInjected: yes",
    "cr\r",
    "lf\n",
    "nul\x00",
    "tab\t",
    "del\x7f",
    "",
    ".",
    "..",
    "x" * 10_000,
    "x" * 129,
    None,
    1,
    b"001",
    ["001"],
]


async def test_seed_flow_writes_schema_v1(make_logger: FaceFactory, tmp_path: Path) -> None:
    """The seed's basic usage writes start, two entries and close, in schema v1."""
    log = await make_logger()
    await log.start_session("001")
    await log.log_entry("001", "This is the first log entry.", logging.INFO)
    await log.log_entry(
        "001", "This is the second log entry.", logging.WARNING, {"custom_field": "custom_value"}
    )
    await log.close_session("001")
    report = await log.save_logs()
    lines = read_lines(tmp_path / "log.jsonl")
    assert [e["event"] for e in lines] == ["session_start", "log", "log", "session_close"]
    assert [e["seq"] for e in lines] == [0, 1, 2, 3]
    assert {e["session_id"] for e in lines} == {"001"}
    assert all(TIMESTAMP.match(e["timestamp"]) for e in lines)
    start, first, second, close = lines
    assert start["metadata"] == {}
    assert start["message"] == "Session started"
    assert (first["level"], first["levelno"], first["message"]) == (
        "INFO",
        20,
        "This is the first log entry.",
    )
    assert "custom_fields" not in first
    assert (second["level"], second["levelno"]) == ("WARNING", 30)
    assert second["custom_fields"] == {"custom_field": "custom_value"}
    assert close["message"] == "Session closed"
    assert close["status"] == "closed"
    assert close["entries"] == 2
    assert isinstance(close["duration_s"], float) and 0 <= close["duration_s"] < 5
    assert report.ok
    assert report.accepted == 4
    assert report["file"].delivered == 4


async def test_timestamps_are_utc_and_ordered(make_logger: FaceFactory, tmp_path: Path) -> None:
    """Timestamps are the call-time UTC clock, non-decreasing within a session."""
    before = dt.datetime.now(dt.UTC)
    log = await make_logger()
    await log.start_session("t")
    for i in range(50):
        await log.log_entry("t", f"m{i}")
    await log.close_session("t")
    await log.save_logs()
    after = dt.datetime.now(dt.UTC)
    stamps = [
        dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        for e in read_lines(tmp_path / "log.jsonl")
    ]
    assert stamps == sorted(stamps)
    assert before - dt.timedelta(seconds=1) <= stamps[0] <= stamps[-1] <= after


async def test_metadata_and_secret_masking(make_logger: FaceFactory, tmp_path: Path) -> None:
    """Metadata lands on the start entry; secret-looking keys are masked, nested too."""
    log = await make_logger()
    await log.start_session(
        "m", {"user_id": "u1", "db_password": "hunter2", "nested": {"Token": 1}}
    )
    await log.log_entry(
        "m", "x", "INFO", {"Authorization": "Bearer abc", "ok": [{"api_key": "k"}], "n": 3}
    )
    await log.close_session("m")
    await log.save_logs()
    start, entry, _ = read_lines(tmp_path / "log.jsonl")
    assert start["metadata"] == {"user_id": "u1", "db_password": "***", "nested": {"Token": "***"}}
    assert entry["custom_fields"] == {"Authorization": "***", "ok": [{"api_key": "***"}], "n": 3}
    assert "hunter2" not in (tmp_path / "log.jsonl").read_text()


@dataclasses.dataclass
class _Credentials:
    user: str
    password: str


async def test_masking_reaches_every_container(make_logger: FaceFactory, tmp_path: Path) -> None:
    """Secrets are masked inside tuples, mapping subclasses (every call, not only the first),
    dataclasses, bytes keys, header-style names, cycles and very deep nesting."""
    log = await make_logger()
    deep: dict[str, Any] = {"password": "deep-secret"}
    for _ in range(80):
        deep = {"a": deep}
    cyclic: dict[str, Any] = {"token": "cycle-secret"}
    cyclic["self"] = cyclic
    fields: dict[str, Any] = {
        "cyclic": cyclic,
        "creds": ({"password": "tuple-secret"},),
        "cfg": OrderedDict(token="ordered-secret"),
        "login": _Credentials("u1", "dataclass-secret"),
        b"api_key": "bytes-secret",
        "X-Api-Key": "header-secret",
        "apikey": "plain-secret",
        "deep": deep,
    }
    await log.start_session("m")
    await log.log_entry("m", "first", "INFO", fields)
    await log.log_entry("m", "again", "INFO", fields)  # the known-safe-keys fast path
    await log.close_session("m")
    await log.save_logs()
    text = (tmp_path / "log.jsonl").read_text()
    assert "secret" not in text
    first = read_lines(tmp_path / "log.jsonl")[1]["custom_fields"]
    assert first["creds"] == [{"password": "***"}]
    assert first["login"] == {"user": "u1", "password": "***"}
    assert first["cfg"] == {"token": "***"}
    assert first["cyclic"] == {"token": "***", "self": "<cycle>"}
    assert first["X-Api-Key"] == first["apikey"] == first["b'api_key'"] == "***"


async def test_message_whose_str_raises(make_logger: FaceFactory) -> None:
    """A message that cannot become a str raises InvalidMessageError (a TypeError) at the call."""

    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    log = await make_logger()
    await log.start_session("m")
    with pytest.raises(InvalidMessageError, match="RuntimeError: no text") as caught:
        await log.log_entry("m", Bad())
    assert isinstance(caught.value, TypeError)


async def test_masking_can_be_configured(make_logger: FaceFactory, tmp_path: Path) -> None:
    """mask_keys replaces the default key list; None turns masking off."""
    log = await make_logger(mask_keys=["ssn"])
    await log.start_session("m", {"ssn": "123", "password": "visible"})
    await log.close_session("m")
    await log.save_logs()
    assert read_lines(tmp_path / "log.jsonl")[0]["metadata"] == {
        "ssn": "***",
        "password": "visible",
    }


@pytest.mark.parametrize(
    ("level", "name", "levelno"),
    [
        (logging.DEBUG, "DEBUG", 10),
        ("warning", "WARNING", 30),
        ("WARN", "WARNING", 30),
        ("critical", "CRITICAL", 50),
        (25, "Level 25", 25),
        (0, "NOTSET", 0),
    ],
)
async def test_levels_accept_ints_and_names(
    make_logger: FaceFactory, tmp_path: Path, level: Any, name: str, levelno: int
) -> None:
    """Levels are stdlib ints or names, written as level and levelno."""
    log = await make_logger()
    await log.start_session("l")
    await log.log_entry("l", "x", level)
    await log.save_logs()
    entry = read_lines(tmp_path / "log.jsonl")[1]
    assert (entry["level"], entry["levelno"]) == (name, levelno)


@pytest.mark.parametrize("level", [-1, "LOUD", "", True, 1.5, None, object()])
async def test_bad_level_raises_at_call(make_logger: FaceFactory, level: Any) -> None:
    """A bad level raises InvalidLevelError (a ValueError) and logs nothing."""
    log = await make_logger()
    await log.start_session("l")
    with pytest.raises(InvalidLevelError):
        await log.log_entry("l", "x", level)
    with pytest.raises(ValueError, match="level"):
        await log.log_entry("l", "x", level)
    assert log.stats()["accepted"] == 1


async def test_session_state_errors(make_logger: FaceFactory) -> None:
    """Unknown, closed and duplicate sessions raise distinct errors at the call site."""
    log = await make_logger()
    with pytest.raises(UnknownSessionError, match="never started") as unknown:
        await log.log_entry("nope", "x")
    assert isinstance(unknown.value, KeyError)
    assert unknown.value.session_id == "nope"
    with pytest.raises(UnknownSessionError):
        await log.close_session("nope")
    await log.start_session("s")
    with pytest.raises(DuplicateSessionError, match="already open"):
        await log.start_session("s")
    await log.close_session("s")
    with pytest.raises(SessionClosedError, match="already closed"):
        await log.log_entry("s", "late")
    with pytest.raises(SessionClosedError):
        await log.close_session("s")


async def test_closed_session_id_can_be_reused(make_logger: FaceFactory, tmp_path: Path) -> None:
    """After close, the same id starts a new session whose seqs restart at 0."""
    log = await make_logger()
    for _ in range(2):
        await log.start_session("again")
        await log.log_entry("again", "x")
        await log.close_session("again")
    await log.save_logs()
    assert [e["seq"] for e in read_lines(tmp_path / "log.jsonl")] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("bad", [["a"], "text", 3, ("k", "v")])
async def test_non_dict_fields_raise(make_logger: FaceFactory, bad: Any) -> None:
    """Non-dict metadata or custom_fields raise InvalidFieldsError (a TypeError)."""
    log = await make_logger()
    with pytest.raises(InvalidFieldsError, match="metadata must be a dict"):
        await log.start_session("f", bad)
    await log.start_session("f")
    with pytest.raises(TypeError, match="custom_fields must be a dict"):
        await log.log_entry("f", "x", logging.INFO, bad)


@pytest.mark.parametrize("session_id", HOSTILE_IDS, ids=repr)
async def test_hostile_ids_are_refused(make_logger: FaceFactory, session_id: Any) -> None:
    """Ids that could reach a path or a topic unsafely raise InvalidSessionIdError."""
    log = await make_logger()
    with pytest.raises(InvalidSessionIdError) as caught:
        await log.start_session(session_id)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidSessionIdError):
        await log.log_entry(session_id, "x")
    assert log.stats()["accepted"] == 0


@pytest.mark.parametrize(
    "session_id", ["001", "req-42", "user@example.com", "ünïcødé", "a.b", "x" * 128]
)
async def test_safe_ids_are_accepted(
    make_logger: FaceFactory, tmp_path: Path, session_id: str
) -> None:
    """Ordinary ids, up to 128 characters, are accepted and written as given."""
    log = await make_logger()
    await log.start_session(session_id)
    await log.save_logs()
    assert read_lines(tmp_path / "log.jsonl")[0]["session_id"] == session_id


async def test_use_after_close_raises(make_logger: FaceFactory) -> None:
    """Every verb raises LoggerClosedError (a RuntimeError) after close()."""
    log = await make_logger()
    await log.start_session("s")
    await log.close()
    with pytest.raises(LoggerClosedError):
        await log.start_session("t")
    with pytest.raises(RuntimeError, match="closed"):
        await log.log_entry("s", "x")


async def test_close_interrupts_open_sessions(make_logger: FaceFactory, tmp_path: Path) -> None:
    """close() writes a close entry with status interrupted for each open session."""
    log = await make_logger()
    await log.start_session("open-1")
    await log.log_entry("open-1", "working")
    await log.start_session("open-2")
    report = await log.close()
    closes = {
        e["session_id"]: e
        for e in read_lines(tmp_path / "log.jsonl")
        if e["event"] == "session_close"
    }
    assert {k: v["status"] for k, v in closes.items()} == {
        "open-1": "interrupted",
        "open-2": "interrupted",
    }
    assert closes["open-1"]["entries"] == 1
    assert closes["open-1"]["level"] == "WARNING"
    assert report.interrupted_sessions == 2
    assert report.ok


async def test_close_status_error(make_logger: FaceFactory, tmp_path: Path) -> None:
    """close_session(status='error') is written at ERROR; unknown statuses are refused."""
    log = await make_logger()
    await log.start_session("e")
    with pytest.raises(SessionLoggerError, match="status"):
        await log.close_session("e", status="boom")
    await log.close_session("e", status="error")
    await log.save_logs()
    close = read_lines(tmp_path / "log.jsonl")[-1]
    assert (close["status"], close["level"]) == ("error", "ERROR")


def _seed_formatter(entry: dict[str, Any]) -> dict[str, Any]:
    entry["custom"] = "formatted"
    entry["app"] = "demo"
    return entry


async def test_custom_formatter_adds_fields(make_logger: FaceFactory, tmp_path: Path) -> None:
    """The formatter sees each entry and its additions are written."""
    log = await make_logger(custom_formatter=_seed_formatter)
    await log.start_session("f")
    await log.log_entry("f", "x")
    await log.save_logs()
    lines = read_lines(tmp_path / "log.jsonl")
    assert all(e["custom"] == "formatted" and e["app"] == "demo" for e in lines)
    assert lines[1]["message"] == "x"


def _raising_formatter(entry: dict[str, Any]) -> dict[str, Any]:
    entry["half"] = "done"  # mutate, then fail: the written entry must stay unformatted
    raise ValueError("formatter bug")


async def test_raising_formatter_writes_unformatted(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """A formatter that raises leaves the entry unformatted with formatter_error."""
    log = await make_logger(custom_formatter=_raising_formatter)
    await log.start_session("f")
    await log.log_entry("f", "still here", logging.ERROR)
    report = await log.save_logs()
    lines = read_lines(tmp_path / "log.jsonl")
    assert len(lines) == 2
    assert lines[1]["message"] == "still here"
    assert lines[1]["formatter_error"] == "ValueError: formatter bug"
    assert "half" not in lines[1]
    assert report.ok


async def test_formatter_returning_non_dict(make_logger: FaceFactory, tmp_path: Path) -> None:
    """A formatter that returns a non-dict is reported in formatter_error."""
    log = await make_logger(custom_formatter=lambda entry: "oops")
    await log.start_session("f")
    await log.save_logs()
    line = read_lines(tmp_path / "log.jsonl")[0]
    assert line["formatter_error"] == "formatter returned str, expected dict"
    assert line["event"] == "session_start"


class _Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


async def test_unencodable_fields_still_give_valid_lines(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """datetime, bytes, set, objects, cycles, huge ints: each entry becomes a valid line."""
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    cases: list[dict[str, Any]] = [
        {"when": dt.datetime(2026, 11, 24, 6, 23, 13, 123456, tzinfo=dt.UTC)},
        {"raw": b"\x00\xffbytes"},
        {"tags": {"b", "a"}},
        {"obj": _Opaque()},
        {"bad": _BadRepr()},
        {"cycle": cyclic},
        {"big": 10**30},
        {1: "int key", None: "none key"},
        {"nan": float("nan")},
        {"surrogate": "\ud800"},
    ]
    log = await make_logger()
    await log.start_session("u")
    for fields in cases:
        await log.log_entry("u", "weird", logging.INFO, fields)
    await log.log_entry("u", "after")
    report = await log.save_logs()
    lines = read_lines(tmp_path / "log.jsonl")[1:]
    assert len(lines) == len(cases) + 1
    got = [e["custom_fields"] for e in lines[:-1]]
    assert got[0] == {"when": "2026-11-24T06:23:13.123456+00:00"}
    assert got[1] == {"raw": "\x00\\xffbytes"}  # valid UTF-8 kept, invalid bytes escaped
    assert got[2] == {"tags": ["a", "b"]}
    assert got[3] == {"obj": "<Opaque thing>"}
    assert got[4] == {"bad": "<unrepresentable _BadRepr>"}
    assert got[5] == {"cycle": {"name": "loop", "self": "<cycle>"}}
    assert got[6] == {"big": str(10**30)}
    assert got[7] == {"1": "int key", "null": "none key"}
    assert got[8] == {"nan": None}
    assert got[9] == {"surrogate": "\\ud800"}
    assert lines[-1]["message"] == "after"
    assert report.ok


async def test_custom_fields_are_snapshotted(make_logger: FaceFactory, tmp_path: Path) -> None:
    """Changing the caller's dict after log_entry does not change the logged entry."""
    log = await make_logger()
    await log.start_session("s")
    fields = {"step": 1}
    await log.log_entry("s", "x", logging.INFO, fields)
    fields["step"] = 2
    fields["added"] = True
    await log.save_logs()
    assert read_lines(tmp_path / "log.jsonl")[1]["custom_fields"] == {"step": 1}


async def test_reserved_keys_are_never_overwritten(
    make_logger: FaceFactory, tmp_path: Path
) -> None:
    """custom_fields stay nested: a field named seq or level cannot clobber the entry's own."""
    log = await make_logger()
    await log.start_session("r")
    await log.log_entry("r", "x", logging.INFO, {"seq": 99, "level": "FAKE", "session_id": "other"})
    await log.save_logs()
    entry = read_lines(tmp_path / "log.jsonl")[1]
    assert (entry["seq"], entry["level"], entry["session_id"]) == (1, "INFO", "r")
    assert entry["custom_fields"] == {"seq": 99, "level": "FAKE", "session_id": "other"}


async def test_huge_message_is_refused(make_logger: FaceFactory, tmp_path: Path) -> None:
    """A message over max_message_chars raises EntryTooLargeError; the limit is configurable."""
    log = await make_logger(max_message_chars=1000)
    await log.start_session("h")
    with pytest.raises(EntryTooLargeError, match="1001 characters"):
        await log.log_entry("h", "x" * 1001)
    await log.log_entry("h", "y" * 1000)
    await log.save_logs()
    assert read_lines(tmp_path / "log.jsonl")[1]["message"] == "y" * 1000


async def test_large_message_within_default_limit(make_logger: FaceFactory, tmp_path: Path) -> None:
    """A 900 kB message is written whole on one line."""
    log = await make_logger()
    await log.start_session("h")
    await log.log_entry("h", "z" * 900_000)
    report = await log.save_logs()
    assert read_lines(tmp_path / "log.jsonl")[1]["message"] == "z" * 900_000
    assert report.ok


async def test_non_str_message_is_converted(make_logger: FaceFactory, tmp_path: Path) -> None:
    """A non-str message is converted with str() at call time."""
    log = await make_logger()
    await log.start_session("n")
    await log.log_entry("n", 42)
    await log.log_entry("n", ValueError("boom"))
    await log.save_logs()
    assert [e["message"] for e in read_lines(tmp_path / "log.jsonl")[1:]] == ["42", "boom"]


async def test_multiple_sinks_receive_everything(make_logger: FaceFactory, tmp_path: Path) -> None:
    """method=file plus a MemorySink: both get every entry, and the report counts both."""
    memory = MemorySink()
    log = await make_logger(method="file", path=tmp_path / "log.jsonl", sinks=[memory])
    await log.start_session("s")
    for i in range(100):
        await log.log_entry("s", f"m{i}")
    await log.close_session("s")
    report = await log.save_logs()
    file_lines = read_lines(tmp_path / "log.jsonl")
    assert file_lines == [json.loads(line) for line in memory.lines] == memory.entries
    assert len(file_lines) == 102
    assert (report["file"].delivered, report["memory"].delivered) == (102, 102)


async def test_min_level_filters_per_sink(make_logger: FaceFactory, tmp_path: Path) -> None:
    """A sink's min_level drops lower entries for that sink only, keeping lifecycle entries."""
    errors_only = MemorySink(name="errors", min_level="ERROR")
    log = await make_logger(method="file", path=tmp_path / "log.jsonl", sinks=[errors_only])
    await log.start_session("s")
    await log.log_entry("s", "info", logging.INFO)
    await log.log_entry("s", "bad", logging.ERROR)
    await log.close_session("s")
    report = await log.save_logs()
    assert [e["event"] for e in errors_only.entries] == ["session_start", "log", "session_close"]
    assert errors_only.entries[1]["message"] == "bad"
    assert len(read_lines(tmp_path / "log.jsonl")) == 4
    assert report["errors"].filtered == 1
