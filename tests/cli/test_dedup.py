"""The collector's dedup memory: exact within its bounds, bounded whatever arrives."""

from __future__ import annotations

import random

from async_session_logger.cli._dedup import SeqRanges, Tracker


def test_in_order_seqs_cost_one_range_and_repeats_are_caught() -> None:
    """A million in-order seqs are one range; any repeat is a duplicate."""
    ranges = SeqRanges()
    assert all(ranges.add(seq, 64) for seq in range(1_000_000))
    assert len(ranges) == 1
    assert not ranges.add(0, 64) and not ranges.add(999_999, 64) and not ranges.add(500_000, 64)


def test_out_of_order_arrivals_are_exact_and_holes_close() -> None:
    """Shuffled seqs (a replay after a reconnect): each new once, ranges merge back to one."""
    order = list(range(5_000))
    random.Random(7).shuffle(order)
    ranges = SeqRanges()
    new = [seq for seq in order + order[:100] if ranges.add(seq, 10_000)]
    assert sorted(new) == list(range(5_000))
    assert len(ranges) == 1 and ranges.given_up == 0


def test_holes_past_the_bound_are_given_up_oldest_first() -> None:
    """Every other seq missing (a min_level filter): ranges stay <= max, oldest holes given up."""
    ranges = SeqRanges()
    for seq in range(0, 2_000, 2):
        assert ranges.add(seq, 64)
    assert len(ranges) == 64
    assert ranges.given_up == 1_000 - 64
    # A late entry inside a recent hole is still new; inside a given-up hole it counts as seen.
    assert ranges.add(1_997, 64)
    assert not ranges.add(1, 64)


def test_tracker_forgets_idle_sessions_and_reloads_them() -> None:
    """Idle past forget_after or beyond max_sessions: forgotten, reloaded when seen again."""
    loads: list[str] = []

    def load(session_id: str, entry: dict[str, object]) -> SeqRanges | None:
        loads.append(session_id)
        return None

    tracker = Tracker(load, max_sessions=3, forget_after=10.0)
    for i, sid in enumerate("abcd"):
        assert tracker.is_new(sid, 0, {}, now=float(i))
    assert list(tracker.sessions) == ["b", "c", "d"] and tracker.forgotten == 1
    assert not tracker.is_new("b", 0, {}, now=4.0)
    assert tracker.is_new("e", 0, {}, now=12.5)  # c (active at 2.0) is idle for 10.5 s
    assert list(tracker.sessions) == ["d", "b", "e"]
    assert loads == ["a", "b", "c", "d", "e"]
