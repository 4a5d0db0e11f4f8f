"""Remember which entries were written, in bounded memory: ``(session_id, run, seq)``.

A session id may be used again after its session closed: the new run restarts at seq 0. Runs
of one id are told apart by their start, the timestamp of their ``session_start`` entry, as
``read_sessions`` does ("a second, different start entry begins a new session"). An entry
belongs to the newest run started at or before its timestamp: a run's entries are never older
than its start, and an earlier run's entry re-sent after a new run began (a publisher's replay
window) is older than the new start. See :class:`Runs` for the details and the limits.

Per run, the seqs seen are kept as a short sorted list of ranges: entries arriving in order
extend the last range, so a session of a million entries costs two ints. A hole (an entry not
yet arrived, filtered by the publisher's ``min_level``, or dropped) splits a range; past
``max_ranges`` ranges the two oldest are merged, i.e. the oldest hole is given up: an entry
arriving for it later is taken for a duplicate. Sessions idle for ``forget_after`` seconds, and
the least recently active beyond ``max_sessions``, are forgotten; when one of them comes back,
its runs are loaded again from what was written (see ``collect``).
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from .._reader import parse_timestamp

__all__ = ["Runs", "Seen", "SeqRanges", "Tracker"]

_START = "session_start"
_CLOSE = "session_close"

# What dedup needs of one entry: (seq, event, timestamp).
Seen = tuple[int, object, object]


class SeqRanges:
    """The seqs seen for one session, as disjoint inclusive ranges."""

    __slots__ = ("ends", "given_up", "starts")

    def __init__(self) -> None:
        # Machine ints (8 bytes each), not lists of int objects (~36 bytes each).
        self.starts = array("q")
        self.ends = array("q")
        self.given_up = 0

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self.starts, seq) - 1
        return i >= 0 and seq <= self.ends[i]

    def add(self, seq: int, max_ranges: int) -> bool:
        """Record ``seq``; return False if it was seen already."""
        starts, ends = self.starts, self.ends
        if ends and seq == ends[-1] + 1:  # the usual case: the next entry, in order
            ends[-1] = seq
            return True
        i = bisect.bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
            if len(starts) > max_ranges:
                # Give up the oldest hole: merge the two lowest ranges.
                self.given_up += starts[1] - ends[0] - 1
                ends[0] = ends[1]
                del starts[1], ends[1]
        return True

    def __len__(self) -> int:
        return len(self.starts)


class _Run:
    """One run of a session id: its start and the seqs seen."""

    __slots__ = ("close", "earliest", "ranges", "start")

    def __init__(self, start: datetime | None) -> None:
        self.start = start  # the timestamp of its session_start entry; None: not seen (yet)
        self.earliest: datetime | None = None  # its oldest entry's timestamp, while start-less
        self.close = -1  # the seq of its session_close entry, once seen
        self.ranges = SeqRanges()


class Runs:
    """The runs of one session id, oldest first, at most ``max_runs`` of them.

    Which run an entry belongs to:

    - A ``session_start`` whose timestamp is a known run's start belongs to that run (a copy).
      Another one begins a new run, placed by its timestamp, unless the oldest run is
      start-less and holds no entry older than it: then it is that run's own start, late.
    - Any other entry belongs to the newest run whose start is at or before its timestamp.
      If every known start is after it, it belongs to a start-less oldest run (an earlier run
      whose start was not seen: the collector started mid-run, a day file of a run that began
      the day before), made for it if there is none. An entry without a readable timestamp
      belongs to the newest run.
    - A close and the next run's start can share a microsecond, and so can a start and the
      entries logged right after it: an entry stamped with a run's very start belongs to the
      run before if it is a copy of that run's close, or if its seq was seen in the newer run
      but not in the one before.

    Limits: past ``max_runs`` runs, the oldest is forgotten, and a re-sent entry of it is
    written again (``read_sessions`` skips such repeats). Two runs of one id that are open at
    the same time (two processes using the same id), or a publisher whose clock stepped back
    to before the start of the id's previous run, cannot be told apart: an entry may then be
    taken for a duplicate of the other run.
    """

    __slots__ = ("last_active", "runs")

    def __init__(self) -> None:
        self.runs: list[_Run] = []
        self.last_active = 0.0

    def add(
        self, seq: int, event: object, timestamp: object, max_ranges: int, max_runs: int
    ) -> bool:
        """Record an entry in its run; return False if it was seen already."""
        stamp = parse_timestamp(timestamp)
        run = self._run_of(seq, event, stamp, max_runs)
        if run.start is None and stamp is not None:
            run.earliest = stamp if run.earliest is None else min(run.earliest, stamp)
        if event == _CLOSE:
            run.close = seq
        return run.ranges.add(seq, max_ranges)

    def _run_of(self, seq: int, event: object, stamp: datetime | None, max_runs: int) -> _Run:
        runs = self.runs
        if stamp is None:
            return runs[-1] if runs else self._insert(0, _Run(None), max_runs)
        if event == _START:
            for run in runs:
                if run.start == stamp:
                    return run
            oldest = runs[0] if runs else None
            if (
                oldest is not None
                and oldest.start is None
                and (oldest.earliest is None or oldest.earliest >= stamp)
                and (len(runs) == 1 or _start(runs[1]) > stamp)
            ):
                oldest.start, oldest.earliest = stamp, None  # its own start, arriving late
                return oldest
            at = sum(1 for run in runs if run.start is None or run.start < stamp)
            return self._insert(at, _Run(stamp), max_runs)
        for i in range(len(runs) - 1, -1, -1):  # the newest first: usually the one
            run = runs[i]
            if run.start is not None and run.start <= stamp:
                if run.start == stamp and i and _previous_close(seq, event, run, runs[i - 1]):
                    return runs[i - 1]
                return run
        if runs and runs[0].start is None:
            return runs[0]
        return self._insert(0, _Run(None), max_runs)

    def _insert(self, at: int, run: _Run, max_runs: int) -> _Run:
        self.runs.insert(at, run)
        if len(self.runs) > max_runs:
            # Forget the oldest run (maybe the one just made: it then records this entry only).
            del self.runs[0]
        return run

    @property
    def given_up(self) -> int:
        """Return how many holes' seqs were given up to keep the bound."""
        return sum(run.ranges.given_up for run in self.runs)


def _previous_close(seq: int, event: object, run: _Run, previous: _Run) -> bool:
    """Return whether an entry stamped in the microsecond ``run`` started is ``previous``'s close.

    A close and the next run's start can share a timestamp; so can a start and the entries
    logged right after it.
    """
    if seq in previous.ranges:
        return event == _CLOSE and seq == previous.close and seq not in run.ranges
    return seq in run.ranges


def _start(run: _Run) -> datetime:
    assert run.start is not None  # every run but the oldest has a start
    return run.start


class Tracker:
    """Decide for each entry whether it is new, forgetting idle sessions."""

    def __init__(
        self,
        load: Callable[[str, dict[str, Any]], Iterable[Seen] | None],
        *,
        max_sessions: int = 100_000,
        max_ranges: int = 64,
        max_runs: int = 4,
        forget_after: float = 3600.0,
    ) -> None:
        self.load = load
        self.max_sessions = max_sessions
        self.max_ranges = max_ranges
        self.max_runs = max_runs
        self.forget_after = forget_after
        self.sessions: OrderedDict[str, Runs] = OrderedDict()
        self.forgotten = 0
        self.reloaded = 0

    def is_new(self, session_id: str, seq: int, entry: dict[str, Any], now: float) -> bool:
        """Record the entry; return False for a duplicate."""
        runs = self.sessions.get(session_id)
        if runs is None:
            runs = Runs()
            found = self.load(session_id, entry)
            if found is not None:
                for old_seq, event, timestamp in found:
                    runs.add(old_seq, event, timestamp, self.max_ranges, self.max_runs)
                if runs.runs:
                    self.reloaded += 1
            runs.last_active = now
            self.sessions[session_id] = runs
            self._forget(now)
        else:
            runs.last_active = now
            self.sessions.move_to_end(session_id)
        return runs.add(
            seq, entry.get("event"), entry.get("timestamp"), self.max_ranges, self.max_runs
        )

    def preload(self, found: Iterable[tuple[str, int, object, object]], now: float) -> None:
        """Record entries found on disk, ``(session_id, seq, event, timestamp)`` (a day file
        read for the first time in this run)."""
        for session_id, seq, event, timestamp in found:
            runs = self.sessions.get(session_id)
            if runs is None:
                runs = self.sessions[session_id] = Runs()
                runs.last_active = now
                if len(self.sessions) > self.max_sessions:
                    self._forget(now)
            runs.add(seq, event, timestamp, self.max_ranges, self.max_runs)
        self._forget(now)

    def _forget(self, now: float) -> None:
        # Ordered by last activity, oldest first: only the front can be due.
        sessions = self.sessions
        while sessions:
            sid, oldest = next(iter(sessions.items()))
            if len(sessions) <= self.max_sessions and now - oldest.last_active < self.forget_after:
                break
            del sessions[sid]
            self.forgotten += 1

    @property
    def given_up(self) -> int:
        """Return how many holes' seqs were given up to keep the bound (tracked sessions)."""
        return sum(r.given_up for r in self.sessions.values())
