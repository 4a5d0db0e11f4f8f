"""Planning a batch's MQTT messages: the cut for a batch of one session's log entries gives
what the entry-by-entry loop gives (issue 15), whatever the batch and the packet limit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_session_logger._entry import LOG, EntryBuilder, Masker, Record
from async_session_logger.sinks import Batch
from async_session_logger.sinks import _mqtt_payload as payload
from async_session_logger.sinks._mqtt_payload import Plan, build_messages

_EVENTS = st.sampled_from(["log", "log", "log", "session_start", "session_close"])
_IDS = st.sampled_from(["dev-1", "dev-2", "bad/topic", "x" * 70_000])
_ENTRY = st.tuples(_IDS, _EVENTS, st.text(max_size=400))


def _batch(rows: list[tuple[Any, str, str]]) -> Batch:
    entries: list[dict[str, Any]] = []
    for seq, (sid, event, message) in enumerate(rows):
        entry: dict[str, Any] = {"session_id": sid, "seq": seq, "event": event}
        entry["message"] = message
        if event == "session_start":
            entry["metadata"] = {"user": "u"}
            if seq % 3 == 0:  # a child session: its close status names the parent
                entry["parent_session_id"] = "dev-0"
        elif event == "session_close":
            entry.update(status="closed", duration_s=1.5, entries=seq, summary={"n": seq})
        entries.append(entry)
    data = b"".join(orjson.dumps(e) + b"\n" for e in entries)
    heads = [(e["session_id"], e["event"], 20) for e in entries]
    return Batch.deferred(lambda: entries, len(entries), data, lambda: heads)


def _plan(batch: Batch, per_message: int, **options: Any) -> Plan:
    return build_messages(batch, "fleet/{session_id}", per_message, status=True, **options)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_ENTRY, min_size=1, max_size=40),
    st.sampled_from(["one session's logs", "logs of sessions", "any"]),
    st.integers(2, 9),
    st.sampled_from([None, 300, 900, 4_000]),
    st.lists(st.sampled_from(["dev-1", "dev-2", "dev-3", "dev-4"]), min_size=40, max_size=40),
)
def test_the_cut_plans_what_the_loop_plans(
    rows: list[tuple[str, str, str]],
    shape: str,
    per_message: int,
    limit: int | None,
    sessions: list[str],
) -> None:
    """Same messages in the same order, rejections and closed sessions with the cut as
    entry by entry: for one session's log entries, for log entries of several sessions in
    any interleaving, for mixed batches (which the cut leaves to the loop), for ids that
    cannot be topics and for packet limits that split or refuse entries."""
    if shape == "one session's logs":
        rows = [("dev-1", "log", message) for _, _, message in rows]
    elif shape == "logs of sessions":
        rows = [(sid, "log", message) for sid, (_, _, message) in zip(sessions, rows, strict=False)]
    planned = _plan(_batch(rows), per_message, limit=limit)
    with pytest.MonkeyPatch.context() as patch:
        _loop_only(patch)
        looped = _plan(_batch(rows), per_message, limit=limit)
    assert planned == looped


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(["dev-1", "dev-2", "dev-3"]), min_size=1, max_size=60),
    st.integers(2, 6),
)
def test_the_cut_orders_several_sessions_messages_as_the_loop_does(
    sessions: list[str], per_message: int
) -> None:
    """Log entries of several sessions in any interleaving, nothing too large: the cut
    plans every batch, and sends each message where the loop sends it (a full one at its
    last entry, however the sessions' entries cross; the rest at the end)."""
    rows = [(sid, "log", f"m{i}") for i, sid in enumerate(sessions)]
    cut = payload._logs_only(_batch(rows), "fleet/{session_id}", per_message, _sizer())
    assert cut is not None
    with pytest.MonkeyPatch.context() as patch:
        _loop_only(patch)
        looped = build_messages(_batch(rows), "fleet/{session_id}", per_message, status=False)
    assert cut == looped


def test_the_cut_takes_log_entries_and_leaves_the_rest() -> None:
    """The cut plans a batch of log entries, of one session or several (packed as the loop
    would pack them, in its order); a start, an id that cannot be a topic or an entry to
    skip leave the batch to the loop."""
    logs = [("dev-1", "log", f"m{i}") for i in range(25)]
    cut = payload._logs_only(_batch(logs), "fleet/{session_id}", 10, _sizer())
    assert cut is not None
    assert [m.entries for m in cut.messages] == [10, 10, 5]
    assert cut.messages[2].indices == (20, 21, 22, 23, 24)
    assert cut.messages[0].payload.count(b"\n") == 9
    assert {m.topic for m in cut.messages} == {"fleet/dev-1"}
    mixed = [(f"dev-{i % 3}", "log", f"m{i}") for i in range(25)] + [("dev-9", "log", "x")]
    cut = payload._logs_only(_batch(mixed), "fleet/{session_id}", 4, _sizer())
    assert cut is not None
    # Full messages where their fourth entry came, then the rest in their first entries' order.
    assert [m.indices for m in cut.messages] == [
        (0, 3, 6, 9),
        (1, 4, 7, 10),
        (2, 5, 8, 11),
        (12, 15, 18, 21),
        (13, 16, 19, 22),
        (14, 17, 20, 23),
        (24,),
        (25,),
    ]
    assert cut.messages[0].payload == b"\n".join(_batch(mixed).lines()[i] for i in (0, 3, 6, 9))
    assert cut.messages[6].topic == "fleet/dev-0" and cut.messages[7].topic == "fleet/dev-9"
    # dev-1's message starts first but fills last: dev-2's goes first, as the loop sends it.
    crossing = [("dev-1", "log", "a"), *[("dev-2", "log", "b")] * 4, *[("dev-1", "log", "c")] * 3]
    cut = payload._logs_only(_batch(crossing), "fleet/{session_id}", 4, _sizer())
    assert cut is not None
    assert [m.indices for m in cut.messages] == [(1, 2, 3, 4), (0, 5, 6, 7)]
    for other in (
        [("dev-1", "session_start", "s"), *logs],
        [*logs, ("dev-2", "session_close", "m")],
        [("bad/topic", "log", "m")],
        [*logs, ("bad/topic", "log", "m")],
    ):
        assert payload._logs_only(_batch(other), "fleet/{session_id}", 10, _sizer()) is None
    with pytest.MonkeyPatch.context() as patch:
        calls: list[int] = []
        patch.setattr(payload, "_logs_only", lambda *a: calls.append(1))
        _plan(_batch(logs), 10, skip=[3])
        assert calls == []  # an entry to skip: the loop plans the batch


def test_the_cut_keeps_no_tuple_per_entry_for_a_writers_batch() -> None:
    """The writer's batches say which sessions and events they hold without ``heads()``:
    the cut plans one session's logs without a tuple per entry, which the batch would keep
    alive while the sink waits for the broker's acknowledgements (issue 15: those tuples
    made the garbage collector run ~100 more times per 100,000 entries)."""
    builder = EntryBuilder(None, Masker())
    records: list[Record] = [(LOG, "dev-1", i, 10**18, 20, f"m{i}", None, 0) for i in range(25)]

    def no_heads() -> list[tuple[str, str, int]]:
        raise AssertionError("heads() was asked for")

    batch = Batch.deferred(
        builder.build_later(records),
        len(records),
        builder.encode_records(records),
        no_heads,
        builder.kinds_later(records),
    )
    plan = _plan(batch, 10)
    assert [m.entries for m in plan.messages] == [10, 10, 5]
    assert b"\n".join(m.payload for m in plan.messages) + b"\n" == batch.data
    assert batch._head_list is None and batch._entries is None


_ANY_EVENT = st.sampled_from(["log", "log", "log", "log", "session_start", "session_close", "gap"])
_ANY_ID = st.sampled_from(["dev-1", "dev-2", "dev-3", "bad/topic", "x" * 70_000, 42])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(_ANY_ID, _ANY_EVENT, st.text(max_size=300)), min_size=1, max_size=60),
    st.integers(1, 9),
    st.sampled_from([None, 120, 131, 300, 900, 4_000]),
    st.booleans(),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
    st.data(),
)
def test_the_faster_loop_plans_what_the_loop_planned(
    rows: list[tuple[Any, str, str]],
    per_message: int,
    limit: int | None,
    status: bool,
    qos: int,
    v5: bool,
    data: st.DataObject,
) -> None:
    """The entry-by-entry planner, rewritten to cost half (a payload cap per topic, fewer
    dict steps per entry), plans exactly what it planned before: messages, rejections,
    closed sessions and the parents it notes, for any mix of sessions, events, packet
    limits, QoS, entries to skip and statuses not to build again."""
    positions = st.lists(st.integers(0, len(rows) - 1), max_size=5)
    skip, no_status = data.draw(positions), data.draw(positions)
    options = {"limit": limit, "qos": qos, "v5": v5, "skip": skip, "no_status": no_status}
    books = payload.ParentBook(), payload.ParentBook(), payload.ParentBook()

    def planned(planner: Callable[..., Plan], book: payload.ParentBook) -> Plan:
        return planner(
            _batch(rows), "fleet/{session_id}", per_message, status=status, parents=book, **options
        )

    was = planned(_loop_as_it_was, books[0])
    with pytest.MonkeyPatch.context() as patch:
        _loop_only(patch)
        now = planned(build_messages, books[1])
    assert now == was
    assert books[0]._parents == books[1]._parents
    # And with the cut, which takes what it can of the same batches.
    assert planned(build_messages, books[2]) == was
    assert books[2]._parents == books[0]._parents


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 300_000_000), st.integers(0, 70_000), st.sampled_from([0, 1, 2]), st.booleans()
)
def test_a_topics_payload_cap_is_the_largest_payload_that_fits(
    limit: int, topic_bytes: int, qos: int, v5: bool
) -> None:
    """``_Sizer.cap(topic)`` is the largest payload ``fits()`` accepts (-1: none), so one
    comparison per entry decides what ``fits()`` did, at every varint boundary."""
    sizer = payload._Sizer(limit or None, qos, v5)
    topic = "t" * topic_bytes
    cap = sizer.cap(topic)
    if cap >= 0:
        assert sizer.fits(topic, cap)
    else:
        assert not sizer.fits(topic, 0)
    assert not sizer.fits(topic, cap + 1)
    for boundary in (127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        payload_bytes = boundary - (2 + topic_bytes + (2 if qos else 0) + (1 if v5 else 0))
        for size in (payload_bytes - 1, payload_bytes, payload_bytes + 1):
            if size >= 0:
                assert sizer.fits(topic, size) == (size <= cap)


def _loop_only(patch: pytest.MonkeyPatch) -> None:
    """Leave every batch to the entry-by-entry loop (the cut's oracle)."""
    patch.setattr(payload, "_logs_only", lambda *args: None)


def _sizer() -> Any:
    return payload._Sizer(None, 1, True)


def _loop_as_it_was(
    batch: Batch,
    topic: str,
    entries_per_message: int,
    *,
    status: bool,
    limit: int | None = None,
    qos: int = 1,
    v5: bool = True,
    skip: Sequence[int] = (),
    no_status: Sequence[int] = (),
    parents: payload.ParentBook | None = None,
) -> Plan:
    """The entry-by-entry planner as it was before it was made faster (issue 15), kept as the
    reference the faster one must agree with."""
    sizer = payload._Sizer(limit, qos, v5)
    lines = batch.lines()
    skipped = set(skip)
    silent = set(no_status)
    plan = Plan()
    topics: dict[object, tuple[str | None, str]] = {}
    groups: dict[str, list[int]] = {}
    pending_status: dict[str, list[payload.Message]] = {}
    group_bytes: dict[str, int] = {}
    out = plan.messages
    book = parents if parents is not None else payload.ParentBook()
    ended: dict[str, bool] = {}

    def flush(t: str) -> None:
        group = groups.pop(t, None)
        group_bytes.pop(t, None)
        if group:
            body = b"\n".join(lines[i] for i in group)
            out.append(payload.Message(t, body, entries=len(group), indices=tuple(group)))
        out.extend(pending_status.pop(t, ()))

    # (session_id, event, levelno) per entry: the dicts are not built for this; the few entries a
    # status needs are read from their lines.
    for i, (sid, event, _) in enumerate(batch.heads()):
        if i in skipped:
            continue
        key = sid if isinstance(sid, str) else repr(sid)
        found = topics.get(key)
        if found is None:
            found = topics[key] = payload._topic_for(topic, sid)
        t, why = found
        if t is None:
            plan.reject(i, why)
            continue
        entry: dict[str, Any] = {}  # read from its line for a start or a close only
        # Before any size check: a start too large to publish still has a parent to name.
        if event == "session_start":
            entry = batch.entry(i)
            book.started(key, payload._parent_of(entry))
            ended[key] = False
        elif event == "session_close":
            entry = batch.entry(i)
            ended[key] = True
        line = lines[i]
        if not sizer.fits(t, len(line)):
            plan.reject(i, f"entry of {len(line)} bytes exceeds the broker's packet limit")
            continue
        wants_status = status and event in ("session_start", "session_close") and i not in silent
        if entries_per_message == 1:
            out.append(payload.Message(t, line, indices=(i,)))
            if wants_status:
                out.append(payload._status_message(t, entry, i, sizer, book.get(key)))
            continue
        # Packed: one more line costs its bytes plus a separator; past the limit, send first.
        size = group_bytes.get(t, -1) + 1 + len(line)
        if t in groups and not sizer.fits(t, size):
            flush(t)
            size = len(line)
        groups.setdefault(t, []).append(i)
        group_bytes[t] = size
        if wants_status:
            pending_status.setdefault(t, []).append(
                payload._status_message(t, entry, i, sizer, book.get(key))
            )
        if event == "session_close" or len(groups[t]) >= entries_per_message:
            flush(t)
    for t in list(groups):
        flush(t)
    for t in list(pending_status):
        flush(t)
    plan.closed = [sid for sid, closed in ended.items() if closed]
    return plan
