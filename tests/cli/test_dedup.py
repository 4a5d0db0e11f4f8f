"""The collector's dedup memory: exact within its bounds, bounded whatever arrives."""

from __future__ import annotations

import random
from collections.abc import Iterable

from async_session_logger.cli._dedup import Seen, SeqRanges, Tracker


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

    def load(session_id: str, entry: dict[str, object]) -> Iterable[Seen] | None:
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


# -- runs of a reused session id ------------------------------------------------------------
def _at(minute: int, micro: int = 0) -> str:
    return f"2026-01-01T00:{minute:02d}:00.{micro:06d}Z"


def _entry(seq: int, at: str, event: str = "log") -> dict[str, object]:
    return {"session_id": "job", "seq": seq, "event": event, "timestamp": at}


def _run(minute: int, logs: int) -> list[dict[str, object]]:
    """A whole run: its start, ``logs`` log entries a microsecond apart, its close."""
    return [
        _entry(0, _at(minute), "session_start"),
        *(_entry(seq, _at(minute, seq)) for seq in range(1, logs + 1)),
        _entry(logs + 1, _at(minute, logs + 1), "session_close"),
    ]


def _new(tracker: Tracker, entries: list[dict[str, object]]) -> list[bool]:
    return [tracker.is_new("job", int(str(e["seq"])), e, now=0.0) for e in entries]


def test_a_reused_id_is_a_new_run_and_late_copies_of_the_old_run_stay_duplicates() -> None:
    """Run 2 restarts at seq 0: new. Run 1's entries re-sent meanwhile: duplicates, even those
    whose seq run 2 has not reached yet (they would take run 2's place)."""
    tracker = Tracker(lambda sid, entry: None)
    first, second = _run(0, 9), _run(1, 9)
    assert all(_new(tracker, first))
    assert all(_new(tracker, second[:6]))  # start and seqs 1-5 of the second run
    assert not any(_new(tracker, first[3:]))  # a publisher's replay window: seqs 3-10
    assert all(_new(tracker, second[6:]))  # seqs 6-10 of the second run all arrive
    assert not any(_new(tracker, second[:1] + second[3:4]))
    (runs,) = tracker.sessions.values()
    assert [len(run.ranges) for run in runs.runs] == [1, 1]


def test_runs_are_rebuilt_from_the_file_when_a_session_comes_back() -> None:
    """After a restart (or forgetting), the file's runs come back: both dedup as before."""
    first, second = _run(0, 4), _run(1, 4)
    on_disk = [(int(str(e["seq"])), e["event"], e["timestamp"]) for e in first + second[:3]]
    tracker = Tracker(lambda sid, entry: iter(on_disk))
    assert _new(tracker, [first[4], second[2], second[3], first[5]]) == [False, False, True, False]
    assert tracker.reloaded == 1
    third = _run(2, 1)
    assert all(_new(tracker, third)) and not any(_new(tracker, second[:4] + first))
    assert len(tracker.sessions["job"].runs) == 3


def test_preload_of_a_day_file_builds_the_same_runs() -> None:
    """A day file read back (--per day): both runs known, the next one new."""
    tracker = Tracker(lambda sid, entry: None)
    found = [
        ("job", int(str(e["seq"])), e["event"], e["timestamp"]) for e in _run(0, 2) + _run(1, 2)
    ]
    tracker.preload(found, now=0.0)
    assert not any(_new(tracker, _run(0, 2) + _run(1, 2)))
    assert all(_new(tracker, _run(2, 2)))


def test_a_run_joined_mid_way_takes_its_late_start_and_a_new_run_after_it() -> None:
    """The collector started mid-run: its start, re-sent later, joins it; a later start is new."""
    tracker = Tracker(lambda sid, entry: None)
    first = _run(0, 9)
    assert all(_new(tracker, first[5:8]))
    assert all(_new(tracker, first[:5]))  # the replay window brings the start and seqs 1-4
    assert not any(_new(tracker, first[:8]))
    assert all(_new(tracker, first[8:] + _run(1, 9)))
    assert len(tracker.sessions["job"].runs) == 2
    # An entry older than every known start: an earlier run whose start was never seen.
    assert _new(tracker, [_entry(3, "2025-12-31T23:00:00.000000Z")]) == [True]
    assert _new(tracker, [_entry(3, "2025-12-31T23:00:00.000000Z")]) == [False]


def test_a_close_and_the_next_start_in_the_same_microsecond() -> None:
    """Run 1's close shares run 2's start stamp: a re-sent copy stays run 1's."""
    tracker = Tracker(lambda sid, entry: None)
    first = [_entry(0, _at(0), "session_start"), _entry(1, _at(0, 1)), _entry(2, _at(0, 5))]
    first[2]["event"] = "session_close"
    second = [_entry(0, _at(0, 5), "session_start"), _entry(1, _at(0, 5)), _entry(2, _at(0, 6))]
    assert all(_new(tracker, first + second[:2]))  # seq 1 logged in the start's microsecond
    assert _new(tracker, [first[2]]) == [False]  # run 1's close again
    assert _new(tracker, [second[2]]) == [True]  # would have been lost to that close copy
    assert not any(_new(tracker, first + second))


def test_runs_per_id_are_bounded() -> None:
    """Ten runs of one id: four kept; a copy of a forgotten run is written again, not lost."""
    tracker = Tracker(lambda sid, entry: None, max_runs=4)
    runs = [_run(minute, 2) for minute in range(10)]
    for run in runs:
        assert all(_new(tracker, run))
    assert len(tracker.sessions["job"].runs) == 4
    assert not any(_new(tracker, runs[9] + runs[6]))
    assert _new(tracker, runs[0][1:2]) == [True]
    assert len(tracker.sessions["job"].runs) == 4
