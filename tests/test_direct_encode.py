"""The writer encodes log entries straight from their records (issue 15): byte for byte what
the dicts it no longer builds would encode to, hostile values included; the dicts come later,
only for the sinks that ask for them."""

from __future__ import annotations

import datetime as dt
import decimal
import gc
import math
import threading
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from async_session_logger import Origin, SessionLogger, read_entries
from async_session_logger._entry import CLOSE, GAP, LOG, START, EntryBuilder, Masker, Record
from async_session_logger.sinks import Batch, FileSink, Sink

_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from('"\\\n\r\t\x00\x1b\u2028<>&'))
_SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_KEYS = st.sampled_from(["i", "user", "password", "api_key", "note", "Token"]) | _TEXT
_FIELDS = st.none() | st.dictionaries(_KEYS, _VALUE, max_size=4)
_EXTRA = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "exception": _TEXT,
        "logger": _TEXT,
        "source": st.fixed_dictionaries({"file": _TEXT, "line": st.integers(0, 10**6)}),
        "trace_id": _TEXT,
    },
)
_NS = st.integers(min_value=0, max_value=4 * 10**18)
_LEVEL = st.sampled_from([0, 5, 10, 20, 25, 30, 40, 50, 60, 99])


# Masker.snapshot()'s JSON text of flat fields, as the call site hands it on.
_FIELDS_TEXT = st.dictionaries(
    st.sampled_from(["i", "note"]) | _TEXT, st.integers(-(2**63), 2**63 - 1) | _TEXT, max_size=3
).map(lambda fields: orjson.dumps(fields).decode())
# Runs of one session and one level, as a batch usually holds (the writer reuses their text).
_IDS = st.sampled_from(["s-1", "s-2"]) | _TEXT


@st.composite
def _records(draw: st.DrawFn) -> list[Record]:
    out: list[Record] = []
    for seq in range(draw(st.integers(1, 8))):
        fields: Any = draw(_FIELDS | _FIELDS_TEXT)
        extra = draw(_EXTRA)
        if extra is not None:
            fields = (fields, extra)
        out.append((LOG, draw(_IDS), seq, draw(_NS), draw(_LEVEL), draw(_TEXT), fields, 0))
    return out


def _both(builder: EntryBuilder, records: list[Record]) -> tuple[bytes, bytes]:
    direct = builder.encode_records(records)
    return direct, builder.encode(builder.build_batch(records))


@settings(max_examples=400, deadline=None)
@given(_records(), st.booleans())
def test_direct_lines_equal_the_dicts_encoding(records: list[Record], masking: bool) -> None:
    """Any log records (odd text, nested fields, secrets, extras, custom levels, any time):
    the same bytes as building each dict and encoding it."""
    builder = EntryBuilder(None, Masker() if masking else Masker(None))
    direct, via_dicts = _both(builder, records)
    assert direct == via_dicts
    assert direct.count(b"\n") == len(records)


_START_EXTRA = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "parent_session_id": _TEXT,
        "trace_id": _TEXT,
        "span_id": _TEXT,
    },
)
_CLOSE_FIELDS = st.fixed_dictionaries(
    {
        "duration_s": st.floats(),
        "entries": st.integers(0, 10**9),
        "status": st.sampled_from(["closed", "error", "interrupted", "timeout", "evicted"]),
        "levels": st.dictionaries(st.sampled_from(["DEBUG", "INFO", "Level 25"]), st.integers()),
    },
    optional={
        # annotate()'s summary, masked: mostly secret-looking keys
        "summary": st.dictionaries(st.sampled_from(["password", "Token", "n"]) | _KEYS, _VALUE),
        "discarded": st.integers(1, 10**6),
        "trace_id": _TEXT,
    },
)


@st.composite
def _session_records(draw: st.DrawFn) -> list[Record]:
    out: list[Record] = []
    for seq in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from([START, CLOSE, LOG]))
        fields: Any
        collide = draw(st.integers(0, 9)) == 0  # a key that would replace a schema key
        if kind == START:
            fields = draw(_FIELDS)
            extra = draw(_START_EXTRA)
            if collide:
                extra = {**(extra or {}), "metadata": draw(_VALUE)}
            if extra is not None:
                fields = (fields, extra)
        elif kind == CLOSE:
            fields = draw(_CLOSE_FIELDS)
            if collide:
                fields["seq"] = draw(st.integers())
        else:
            fields = draw(_FIELDS)
        message = {START: "Session started", CLOSE: "Session closed"}.get(kind) or draw(_TEXT)
        out.append((kind, draw(_TEXT), seq, draw(_NS), draw(_LEVEL), message, fields, 0))
    return out


@settings(max_examples=300, deadline=None)
@given(_session_records(), st.booleans())
def test_start_and_close_lines_equal_the_dicts_encoding(
    records: list[Record], masking: bool
) -> None:
    """Start and close entries are written without their dicts too (metadata, parent and
    trace ids, close fields, a masked summary): the same bytes as the dicts' encoding."""
    builder = EntryBuilder(None, Masker() if masking else Masker(None))
    direct, via_dicts = _both(builder, records)
    assert direct == via_dicts
    assert direct.count(b"\n") == len(records)


def test_the_message_quoting_is_orjsons_for_every_code_point() -> None:
    """The writer quotes a message with the json module's C string encoder (an f-string line,
    one UTF-8 encode per batch): its escapes must be orjson's, the dict path's, for every
    character a str can hold and UTF-8 can write."""
    from async_session_logger._entry import _quote

    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    for start in range(0, len(chars), 4096):
        chunk = chars[start : start + 4096]
        assert _quote("".join(chunk)).encode() == orjson.dumps("".join(chunk))
    for char in [chr(cp) for cp in range(0x80)] + ["\u2028", "\u2029", "\ufeff", "\U0010ffff"]:
        assert _quote(f"a{char}b").encode() == orjson.dumps(f"a{char}b"), repr(char)


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


def test_values_orjson_refuses_go_through_the_dicts_path() -> None:
    """Surrogates, huge ints, non-str keys, cycles, NaN, dates, objects: each line equals the
    dict path's (which repairs or falls back), and one odd entry leaves its neighbours alone."""
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    odd_fields: list[Any] = [
        {"big": 2**80},
        {1: "one", (2, 3): "tuple key"},
        cycle,
        {"nan": math.nan, "inf": -math.inf},
        {"when": dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC), "d": dt.date(2026, 1, 2)},
        {"obj": _Odd(), "dec": decimal.Decimal("1.5"), "set": {1}},
        {"surrogate": "\ud800"},
        {},
    ]
    builder = EntryBuilder(None, Masker())
    records: list[Record] = [
        (LOG, "s", i, 1_795_000_000_000_000_000 + i, 20, "m", f, 0)
        for i, f in enumerate(odd_fields)
    ]
    records.append((LOG, "s\ud800", 99, 1_795_000_000_000_000_000, 20, "lone \udc80", None, 0))
    direct, via_dicts = _both(builder, records)
    assert direct == via_dicts
    assert direct.count(b"\n") == len(records)


def test_other_records_and_a_colliding_extra_use_the_dicts() -> None:
    """Gap records, and an extra that would replace a schema key, are encoded from their
    dicts; start and close records beside them: the same bytes as before."""
    now = 1_795_000_000_123_456_789
    records: list[Record] = [
        (START, "s", 0, now, 20, "Session started", {"user": "u", "password": "p"}, 0),
        (LOG, "s", 1, now, 20, "m", ({"a": 1}, {"message": "replaced?"}), 0),
        (GAP, "s", 2, now, 30, "gap", {"dropped": 3, "dropped_seqs": [1, 2, 3]}, 0),
        (CLOSE, "s", 3, now, 20, "Session closed", {"duration_s": 1.5, "status": "closed"}, 0),
    ]
    builder = EntryBuilder(None, Masker())
    direct, via_dicts = _both(builder, records)
    assert direct == via_dicts


def test_masked_fields_are_masked_in_the_direct_lines() -> None:
    """A secret key, flat or nested, is masked in the bytes (the dict path's rule)."""
    builder = EntryBuilder(None, Masker())
    records: list[Record] = [
        (LOG, "s", 1, 0, 20, "m", {"user": "u"}, 0),
        (LOG, "s", 2, 0, 20, "m", {"password": "hunter2"}, 0),
        (LOG, "s", 3, 0, 20, "m", {"user": {"token": "t0k"}}, 0),
    ]
    direct = builder.encode_records(records)
    assert b"hunter2" not in direct and b"t0k" not in direct
    assert direct.count(b'"***"') == 2


class _Recording(Sink):
    """A sink that keeps each batch it was handed."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Batch] = []

    async def write_batch(self, batch: Batch) -> None:
        self.batches.append(batch)


def test_a_file_only_logger_never_builds_dicts_and_a_dict_sink_gets_equal_ones(
    tmp_path: Path,
) -> None:
    """Beside a FileSink, a sink that reads the dicts gets the same entries the file holds;
    a batch nobody asks for dicts stays unbuilt."""
    recording = _Recording()
    path = tmp_path / "app.jsonl"
    with SessionLogger(sinks=[FileSink(path), recording], dead_letter_path=None) as logger:
        logger.start_session("s", {"user": "u"})
        for i in range(500):
            logger.log_entry("s", f"step {i}", "INFO", {"i": i, "password": "p"})
        logger.close_session("s")
        logger.save_logs()
        assert all(b._entries is None for b in recording.batches)  # nobody asked yet
        entries = [e for b in recording.batches for e in b.entries]
    assert entries == list(read_entries(path))
    assert all(e.get("custom_fields", {}).get("password", "***") == "***" for e in entries)


def test_a_deferred_batch_builds_the_same_dicts_from_any_thread() -> None:
    """Dicts built later, in another thread while the writer formats the next second, carry
    the timestamps the lines carry."""
    builder = EntryBuilder(None, Masker())
    base = 1_795_000_000_000_000_000
    first: list[Record] = [(LOG, "s", i, base + i * 10**8, 20, "m", {"i": i}, 0) for i in range(30)]
    later: list[Record] = [(LOG, "s", i, base + 7 * 10**9 + i, 20, "m", None, 0) for i in range(9)]
    data = builder.encode_records(first)
    build = builder.build_later(first)
    built: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: built.extend(build()))
    thread.start()
    for _ in range(200):
        builder.encode_records(later)  # moves the writer's own clock meanwhile
    thread.join()
    assert builder.encode(built) == data


def test_heads_entry_and_level_filter_without_the_dicts() -> None:
    """A deferred batch (and its selections and joins) gives each entry's session, event and
    level, one entry decoded from its line, and a level filter, all without building the
    dicts; each equals what the built dicts say."""
    builder = EntryBuilder(None, Masker())
    now = 1_795_000_000_123_456_789
    records: list[Record] = [
        (START, "a", 0, now, 20, "Session started", {"user": "u"}, 0),
        (LOG, "a", 1, now, 10, "debug", {"i": 1}, 0),
        (LOG, "b", 1, now, 40, "error", ({"i": 2}, {"exception": "Traceback..."}), 0),
        (GAP, "a", 2, now, 30, "gap", {"dropped": 1, "dropped_seqs": [2]}, 0),
        (CLOSE, "a", 3, now, 20, "Session closed", {"duration_s": 0.5, "status": "closed"}, 0),
    ]

    def deferred() -> Batch:
        return Batch.deferred(
            builder.build_later(records),
            len(records),
            builder.encode_records(records),
            builder.heads_later(records),
        )

    lazy, built = deferred(), deferred()
    dicts = built.entries
    expected = [(e["session_id"], e["event"], e["levelno"]) for e in dicts]
    assert lazy.heads() == expected
    assert [lazy.entry(i) for i in range(len(lazy))] == dicts
    picked, joined = lazy.select([4, 0, 2]), Batch.concat([deferred(), lazy.select([1])])
    assert picked.heads() == [expected[4], expected[0], expected[2]]
    assert joined.heads() == [*expected, expected[1]]
    errors = lazy.at_least(40)
    assert errors.heads() == [expected[0], expected[2], expected[3], expected[4]]
    assert lazy._entries is None and picked._entries is None and errors._entries is None
    assert errors.entries == [dicts[0], dicts[2], dicts[3], dicts[4]]
    assert joined.entries == [*dicts, dicts[1]]
    assert Batch(dicts, built.data).heads() == expected  # a batch made of dicts says the same
    calls: list[int] = []
    make_heads = builder.heads_later(records)

    def counted() -> list[tuple[str, str, int]]:
        calls.append(1)
        return make_heads()

    once = Batch.deferred(builder.build_later(records), len(records), built.data, counted)
    for _ in range(3):  # a level filter, the MQTT planner, its retry after a reconnect
        assert once.heads() == expected
    assert once.at_least(40).heads() == [expected[0], expected[2], expected[3], expected[4]]
    assert calls == [1]


def test_sessions_and_events_without_a_tuple_per_entry() -> None:
    """A deferred batch from the writer (and a join of such) names its distinct sessions and
    events, and each entry's session, without ``heads()``: the MQTT planner asks every
    batch, and the heads would keep a tuple per entry alive while the sink waits for the
    broker (issue 15: the collections that cost). Any other batch says the same from its
    heads or dicts."""
    builder = EntryBuilder(None, Masker())
    now = 1_795_000_000_123_456_789
    records: list[Record] = [
        (START, "a", 0, now, 20, "Session started", {"user": "u"}, 0),
        (LOG, "a", 1, now, 10, "debug", {"i": 1}, 0),
        (LOG, "b", 1, now, 40, "error", None, 0),
        (CLOSE, "a", 2, now, 20, "Session closed", {"duration_s": 0.5, "status": "closed"}, 0),
    ]
    logs: list[Record] = [(LOG, "c", i, now, 20, "m", None, 0) for i in range(5)]

    def no_heads() -> list[tuple[str, str, int]]:
        raise AssertionError("heads() was asked for")

    def deferred(chosen: list[Record]) -> Batch:
        return Batch.deferred(
            builder.build_later(chosen),
            len(chosen),
            builder.encode_records(chosen),
            no_heads,
            builder.kinds_later(chosen),
        )

    everything = {"session_start", "log", "session_close"}
    assert deferred(records).sessions_and_events() == ({"a", "b"}, everything)
    assert deferred(logs).sessions_and_events() == ({"c"}, {"log"})
    joined = Batch.concat([deferred(logs), deferred(records)])
    assert joined.sessions_and_events() == ({"a", "b", "c"}, everything)
    assert joined._head_list is None
    full = Batch.deferred(
        builder.build_later(records),
        len(records),
        builder.encode_records(records),
        builder.heads_later(records),
    )
    assert full.sessions_and_events() == ({"a", "b"}, everything)  # from its heads
    assert full.select([1, 2]).sessions_and_events() == ({"a", "b"}, {"log"})
    assert Batch(full.entries, full.data).sessions_and_events() == ({"a", "b"}, everything)
    # Each entry's session id, in order, the same four ways.
    ids = ["a", "a", "b", "a"]
    assert deferred(records).session_ids() == ids
    assert joined.session_ids() == ["c"] * 5 + ids
    assert full.session_ids() == ids and full.select([2, 0]).session_ids() == ["b", "a"]
    assert Batch(full.entries, full.data).session_ids() == ids
    assert joined._head_list is None and joined._entries is None


@settings(max_examples=300, deadline=None)
@given(_FIELDS, st.booleans())
def test_call_time_snapshot_writes_what_the_dict_would(
    fields: dict[Any, Any] | None, masking: bool
) -> None:
    """Custom fields snapshotted at call time (JSON text when flat and known safe, a copy
    otherwise) give the same line and the same dict as the plain copy would."""
    if fields is None:
        return
    masker = Masker() if masking else Masker(None)
    builder = EntryBuilder(None, masker)
    builder.build_all([(LOG, "s", 0, 0, 20, "m", dict(fields), 0)])  # the writer learns keys
    snap = masker.snapshot(fields)
    copied: list[Record] = [(LOG, "s", 1, 0, 20, "m", dict(fields), 0)]
    snapped: list[Record] = [(LOG, "s", 1, 0, 20, "m", snap, 0)]
    line = builder.encode(builder.build_all(copied))
    assert builder.encode_records(snapped) == line
    assert builder.encode(builder.build_all(snapped)) == line
    assert builder.build_all(snapped)[0] == builder.build_all(copied)[0]


def test_flat_safe_fields_become_text_and_the_record_is_not_tracked() -> None:
    """Known-safe flat fields are JSON text, so a queued record is not tracked by the garbage
    collector; anything that needs the writer's care stays a copy."""
    masker = Masker()
    masker.mask({"user": "u", "n": 1, "ok": True, "t": 0.5, "none": None})  # keys now known
    text = masker.snapshot({"user": "u", "n": 1, "ok": True, "t": 0.5, "none": None})
    assert text == '{"user":"u","n":1,"ok":true,"t":0.5,"none":null}'
    record = (LOG, "s", 1, 0, 20, "m", text, 0)
    gc.collect()
    assert not gc.is_tracked(record)
    kept_as_copies: list[dict[Any, Any]] = [
        {"password": "p"},  # a secret: masked by the writer
        {"fresh": 1},  # a key not seen yet: the writer decides
        {"user": {"token": "t"}},  # nested
        {"n": math.nan},  # JSON cannot say NaN: the writer's rules
        {"n": 2**70},  # past 64 bits
        {"user": "\ud800"},  # a lone surrogate
        {"user": _Odd()},  # an object
    ]
    for fields in kept_as_copies:
        copy = masker.snapshot(fields)
        assert type(copy) is dict and copy == fields and copy is not fields, fields
    assert Masker(None).snapshot({"anything": 1}) == '{"anything":1}'  # masking off
    for fields in ({"n": math.nan}, {"n": -math.inf}, {"user": {"token": "t"}}, {"u": _Odd()}):
        copy = Masker(None).snapshot(fields)  # masking off: the same rule for the values
        assert type(copy) is dict and copy == fields and copy is not fields, fields


@settings(max_examples=300, deadline=None)
@given(_records())
def test_an_extra_encoded_once_writes_what_its_dict_would(records: list[Record]) -> None:
    """Top-level extras queued as JSON text (an ``Origin``'s, made once per call site) give
    the same line, and the same dict, as the dict they encode."""
    encoded: list[Record] = []
    for record in records:
        fields = record[6]
        if type(fields) is tuple and fields[1]:
            fields = (fields[0], orjson.dumps(fields[1]).decode())
        encoded.append((*record[:6], fields, record[7]))
    builder = EntryBuilder(None, Masker())
    line = builder.encode_records(records)
    assert builder.encode_records(encoded) == line
    assert builder.encode(builder.build_batch(encoded)) == builder.encode(
        builder.build_batch(records)
    )
    assert builder.encode(builder.build_batch(encoded)) == line


def test_a_record_with_an_encoded_origin_is_not_tracked() -> None:
    """What the stdlib bridge queues for a record with flat ``extra=`` fields holds only text
    and numbers: the garbage collector stops tracking it."""
    masker = Masker()
    masker.mask({"user": "u"})  # the key is known safe now
    origin = Origin({"logger": "app", "source": {"file": "f.py", "line": 1}})
    assert origin.json is not None
    record = (LOG, "s", 1, 0, 20, "m", (masker.snapshot({"user": "u"}), origin.json), 0)
    gc.collect()  # untracks the inner tuple (fields, extra)
    gc.collect()  # and then the record around it
    assert not gc.is_tracked(record)
    with_dict = (LOG, "s", 1, 0, 20, "m", (None, dict(origin)), 0)
    gc.collect()
    gc.collect()
    assert gc.is_tracked(with_dict)  # what a plain origin dict would have kept
