"""The encoder: every entry becomes one valid JSON line, whatever it holds."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from async_session_logger import SessionLogger, read_sessions
from async_session_logger._encode import describe, encode_entry, sanitize
from async_session_logger._entry import EntryBuilder, Masker

from .cli.helpers import run_cli

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    """JSON-native values encode to a line that decodes back to the same value."""
    line = encode_entry({"v": value})
    assert b"\n" not in line
    decoded = json.loads(line)["v"]
    if isinstance(value, float) and math.isinf(value):
        assert decoded is None  # orjson writes infinities as null: still valid JSON
    else:
        assert decoded == value or _has_inf(value)


def _has_inf(value: Any) -> bool:
    if isinstance(value, float):
        return math.isinf(value)
    if isinstance(value, list):
        return any(_has_inf(v) for v in value)
    if isinstance(value, dict):
        return any(_has_inf(v) for v in value.values())
    return False


@settings(max_examples=200, deadline=None)
@given(st.text(), st.dictionaries(st.text() | st.integers(), st.text() | st.binary()))
def test_arbitrary_text_and_bytes_always_encode(message: str, fields: dict[Any, Any]) -> None:
    """Any str (lone surrogates included) and any bytes give one valid line."""
    line = encode_entry({"message": message, "custom_fields": fields})
    assert b"\n" not in line
    decoded = json.loads(line)
    assert len(decoded["custom_fields"]) <= len(fields)


def test_special_types() -> None:
    """Decimals, UUIDs, paths, tuples and exceptions have readable encodings."""
    ident = uuid.UUID(int=1)
    line = encode_entry(
        {
            "d": decimal.Decimal("1.10"),
            "u": ident,
            "p": PurePosixPath("/a/b"),
            "t": (1, 2),
            "e": ValueError("bad"),
            "c": 1 + 2j,
        }
    )
    assert json.loads(line) == {
        "d": "1.10",
        "u": str(ident),
        "p": "/a/b",
        "t": [1, 2],
        "e": "ValueError: bad",
        "c": "(1+2j)",
    }


def test_deep_nesting_is_cut_not_crashed() -> None:
    """A structure nested deeper than the encoder allows is cut with a marker."""
    deep: list[Any] = []
    cursor = deep
    for _ in range(500):
        nxt: list[Any] = []
        cursor.append(nxt)
        cursor = nxt
    decoded = json.loads(encode_entry({"deep": deep, "message": "kept"}))
    assert decoded["message"] == "kept"
    assert "<too deep>" in json.dumps(decoded)


def test_sanitize_breaks_cycles_in_lists() -> None:
    """A list that contains itself is encoded with a cycle marker."""
    loop: list[Any] = [1]
    loop.append(loop)
    assert sanitize(loop) == [1, "<cycle>"]


def test_describe_survives_a_raising_str() -> None:
    """describe() names an exception even when its __str__ raises."""

    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe(Nasty()) == "Nasty: Nasty()"  # falls back to repr()


def test_times_keep_their_microseconds() -> None:
    """datetime.time with 10,000-99,999 us is written with six digits (orjson 3.13 writes five)."""
    value = {"t": datetime.time(0, 0, 0, 10_000), "d": datetime.date(2026, 11, 24)}
    value["dt"] = datetime.datetime(2026, 11, 24, 1, 2, 3, 45_000, tzinfo=datetime.UTC)
    decoded = json.loads(encode_entry(value))
    assert decoded == {
        "t": "00:00:00.010000",
        "d": "2026-11-24",
        "dt": "2026-11-24T01:02:03.045000+00:00",
    }
    assert datetime.time.fromisoformat(decoded["t"]) == value["t"]


class Colour(enum.Enum):
    RED = frozenset({1, 2})  # a value JSON cannot hold


def test_enum_with_a_non_json_value_beside_a_surrogate_keeps_the_fields() -> None:
    """The fallback path sanitizes an enum's value too: no field is lost to encode_error."""
    decoded = json.loads(encode_entry({"c": Colour.RED, "s": "x\ud800"}))
    assert decoded == {"c": [1, 2], "s": "x\\ud800"}


@dataclasses.dataclass
class _Point:
    x: int
    tags: set[str]


def test_dataclass_in_the_fallback_is_an_object_too() -> None:
    """A dataclass is written as an object of its fields on the fallback path too."""
    decoded = json.loads(encode_entry({"p": _Point(1, {"a"}), "s": "\ud800"}))
    assert decoded["p"] == {"x": 1, "tags": ["a"]}


def _drop_schema_keys(entry: dict[str, Any]) -> dict[str, Any]:
    """Return the entry reshaped by a careless formatter: schema keys gone or retyped."""
    seq = entry["seq"]
    if seq % 4 == 1:
        return {"msg": entry["message"]}  # keeps nothing a reader needs
    if seq % 4 == 2:
        return {**entry, "seq": str(seq)}
    if seq % 4 == 3:
        return {k: v for k, v in entry.items() if k not in ("timestamp", "level")}  # allowed
    return {**entry, "event": None}


def test_a_formatter_that_drops_schema_keys_is_treated_as_failing(tmp_path: Path) -> None:
    """Output without a str session_id, an int seq or a str event: the entry is written
    unformatted with formatter_error, so read_sessions and the CLI still read every line."""
    path = tmp_path / "log.jsonl"
    with SessionLogger(
        method="file", path=path, custom_formatter=_drop_schema_keys, dead_letter_path=None
    ) as logger:
        logger.start_session("f")
        for i in range(10):
            logger.log_entry("f", f"m{i}")
        logger.close_session("f")
        assert logger.save_logs().ok
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no line may be skipped as corrupt
        (session,) = read_sessions(path, strict=True)
    assert session.status == "closed" and session.missing_seqs == []
    entries = [session.start, *session.entries, session.close]
    assert [e["seq"] for e in entries if e is not None] == list(range(12))
    for entry in entries:
        assert entry is not None
        if entry["seq"] % 4 == 3:  # the formatter's output, kept: it still has the schema keys
            assert "formatter_error" not in entry and "timestamp" not in entry
        else:
            assert entry["formatter_error"].startswith("formatter output ")
            assert entry["timestamp"] and entry["session_id"] == "f"
    done = run_cli("sessions", path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "f" in done.stdout


def test_formatter_output_is_checked_by_the_readers_own_rule() -> None:
    """A formatter's output is held to the reader's entry_problem (one rule, no drift), and
    formatter_error says which key is wrong."""
    builder = EntryBuilder(lambda e: {**e, "seq": True}, Masker(None))
    entry = builder.build((1, "s", 1, 0, 20, "m", None, 0))
    assert entry["seq"] == 1
    assert entry["formatter_error"] == (
        "formatter output is not a readable entry: seq is not a non-negative integer"
    )
    dropped = EntryBuilder(lambda e: {"message": "x"}, Masker(None)).build(
        (1, "s", 1, 0, 20, "m", None, 0)
    )
    assert dropped["formatter_error"] == (
        "formatter output is not a readable entry: entry lacks session_id, seq, event"
    )
