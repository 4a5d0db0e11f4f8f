"""Planning a batch's MQTT messages: the cut for a batch of one session's log entries gives
what the entry-by-entry loop gives (issue 15), whatever the batch and the packet limit."""

from __future__ import annotations

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


def _batch(rows: list[tuple[str, str, str]]) -> Batch:
    entries: list[dict[str, Any]] = []
    for seq, (sid, event, message) in enumerate(rows):
        entry: dict[str, Any] = {"session_id": sid, "seq": seq, "event": event}
        entry["message"] = message
        if event == "session_start":
            entry["metadata"] = {"user": "u"}
        elif event == "session_close":
            entry.update(status="closed", duration_s=1.5, entries=seq)
        entries.append(entry)
    data = b"".join(orjson.dumps(e) + b"\n" for e in entries)
    heads = [(e["session_id"], e["event"], 20) for e in entries]
    return Batch.deferred(lambda: entries, len(entries), data, lambda: heads)


def _plan(batch: Batch, per_message: int, **options: Any) -> Plan:
    return build_messages(batch, "fleet/{session_id}", per_message, status=True, **options)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_ENTRY, min_size=1, max_size=40),
    st.booleans(),
    st.integers(2, 9),
    st.sampled_from([None, 300, 900, 4_000]),
)
def test_the_cut_plans_what_the_loop_plans(
    rows: list[tuple[str, str, str]], one_session: bool, per_message: int, limit: int | None
) -> None:
    """Same messages, rejections and closed sessions with the cut as entry by entry: for
    one session's log entries, for mixed batches (which the cut leaves to the loop), for
    ids that cannot be topics and for packet limits that split or refuse entries."""
    if one_session:
        rows = [("dev-1", "log", message) for _, _, message in rows]
    planned = _plan(_batch(rows), per_message, limit=limit)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(payload, "_one_session_of_logs", lambda *args: None)
        looped = _plan(_batch(rows), per_message, limit=limit)
    assert planned == looped


def test_the_cut_takes_one_sessions_logs_and_leaves_the_rest() -> None:
    """The cut plans a batch of one session's log entries (packed as the loop would pack
    them); a start, a second session or an entry to skip leave the batch to the loop."""
    logs = [("dev-1", "log", f"m{i}") for i in range(25)]
    cut = payload._one_session_of_logs(_batch(logs), "fleet/{session_id}", 10, _sizer())
    assert cut is not None
    assert [m.entries for m in cut.messages] == [10, 10, 5]
    assert cut.messages[2].indices == (20, 21, 22, 23, 24)
    assert cut.messages[0].payload.count(b"\n") == 9
    assert {m.topic for m in cut.messages} == {"fleet/dev-1"}
    for other in (
        [("dev-1", "session_start", "s"), *logs],
        [*logs, ("dev-2", "log", "m")],
        [("bad/topic", "log", "m")],
    ):
        assert (
            payload._one_session_of_logs(_batch(other), "fleet/{session_id}", 10, _sizer()) is None
        )
    with pytest.MonkeyPatch.context() as patch:
        calls: list[int] = []
        patch.setattr(payload, "_one_session_of_logs", lambda *a: calls.append(1))
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


def _sizer() -> Any:
    return payload._Sizer(None, 1, True)
