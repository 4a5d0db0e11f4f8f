"""Remember which ``(session_id, seq)`` pairs were written, in bounded memory.

Per session, the seqs seen are kept as a short sorted list of ranges: entries arriving in order
extend the last range, so a session of a million entries costs two ints. A hole (an entry not
yet arrived, filtered by the publisher's ``min_level``, or dropped) splits a range; past
``max_ranges`` ranges the two oldest are merged, i.e. the oldest hole is given up: an entry
arriving for it later is taken for a duplicate. Sessions idle for ``forget_after`` seconds, and
the least recently active beyond ``max_sessions``, are forgotten; when one of them comes back,
its ranges are loaded again from what was written (see ``collect``).
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["SeqRanges", "Tracker"]


class SeqRanges:
    """The seqs seen for one session, as disjoint inclusive ranges."""

    __slots__ = ("ends", "given_up", "last_active", "starts")

    def __init__(self) -> None:
        # Machine ints (8 bytes each), not lists of int objects (~36 bytes each).
        self.starts = array("q")
        self.ends = array("q")
        self.given_up = 0
        self.last_active = 0.0

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


class Tracker:
    """Decide for each ``(session_id, seq)`` whether it is new, forgetting idle sessions."""

    def __init__(
        self,
        load: Callable[[str, dict[str, object]], SeqRanges | None],
        *,
        max_sessions: int = 100_000,
        max_ranges: int = 64,
        forget_after: float = 3600.0,
    ) -> None:
        self.load = load
        self.max_sessions = max_sessions
        self.max_ranges = max_ranges
        self.forget_after = forget_after
        self.sessions: OrderedDict[str, SeqRanges] = OrderedDict()
        self.forgotten = 0
        self.reloaded = 0

    def is_new(self, session_id: str, seq: int, entry: dict[str, object], now: float) -> bool:
        """Record the pair; return False for a duplicate."""
        ranges = self.sessions.get(session_id)
        if ranges is None:
            ranges = self.load(session_id, entry)
            if ranges is None:
                ranges = SeqRanges()
            else:
                self.reloaded += 1
            ranges.last_active = now
            self.sessions[session_id] = ranges
            self._forget(now)
        else:
            ranges.last_active = now
            self.sessions.move_to_end(session_id)
        return ranges.add(seq, self.max_ranges)

    def preload(self, pairs: Iterable[tuple[str, int]], now: float) -> None:
        """Record pairs found on disk (a day file read for the first time in this run)."""
        for session_id, seq in pairs:
            ranges = self.sessions.get(session_id)
            if ranges is None:
                ranges = self.sessions[session_id] = SeqRanges()
                ranges.last_active = now
                if len(self.sessions) > self.max_sessions:
                    self._forget(now)
            ranges.add(seq, self.max_ranges)
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
