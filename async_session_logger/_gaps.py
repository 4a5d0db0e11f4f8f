"""Entries dropped by an overflow policy, per session, until a ``gap`` entry reports them.

A dropped entry's seq stays a hole in its session's stream. The ``gap`` entry that reports a
run of drops takes the seq of the first entry it stands for, so every seq of a session is
either an entry that was written or listed in a gap entry's ``dropped_seqs``. The gap entry
goes out just before the session's next record that follows the dropped seqs (at the latest
its close entry, which is never dropped), so it sits where the loss happened.
"""

from __future__ import annotations

import bisect
from typing import Any, Final

__all__ = ["Gaps"]

_GAP: Final = 3  # _entry.GAP
_WARNING: Final = 30


class _Pending:
    __slots__ = ("ranges", "time_ns")

    def __init__(self, time_ns: int) -> None:
        self.time_ns = time_ns
        # Sorted, disjoint, non-adjacent [lo, hi] runs of dropped seqs.
        self.ranges: list[list[int]] = []

    def add(self, seq: int) -> None:
        ranges = self.ranges
        i = bisect.bisect_left(ranges, [seq, seq])
        if i > 0 and ranges[i - 1][1] >= seq - 1:
            ranges[i - 1][1] = max(ranges[i - 1][1], seq)
            if i < len(ranges) and ranges[i][0] == seq + 1:
                ranges[i - 1][1] = ranges[i][1]
                del ranges[i]
        elif i < len(ranges) and ranges[i][0] == seq + 1:
            ranges[i][0] = seq
        else:
            ranges.insert(i, [seq, seq])


class Gaps:
    """Dropped seqs per session, and the ``gap`` records that report them.

    Keyed by ``(session_id, run)``: a reused id's new session may lose entries while the old
    one's close entry is still queued. Not locked: the Intake calls it under its own lock.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.dropped = 0  # entries dropped since the logger started
        self.reported = 0  # gap records handed to the writer
        self._pending: dict[tuple[str, int], _Pending] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __len__(self) -> int:
        """Sessions with drops not reported yet."""
        return len(self._pending)

    def note(self, record: tuple[Any, ...]) -> None:
        """Count the log ``record`` as dropped; its seq becomes a hole to report."""
        key = (record[1], record[7])
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(record[3])
        pending.add(record[2])
        self.dropped += 1

    def insert(self, items: list[Any]) -> list[Any]:
        """Return ``items`` with a gap record before each record that follows a drop."""
        out: list[Any] = []
        pending = self._pending
        for item in items:
            if type(item) is tuple and pending:
                key = (item[1], item[7])
                gap = pending.get(key)
                if gap is not None and gap.ranges[0][0] < item[2]:
                    out.append(self._record(key, gap, item[2], item[3]))
            out.append(item)
        return out

    def _record(
        self, key: tuple[str, int], gap: _Pending, before: int, before_ns: int
    ) -> tuple[Any, ...]:
        # Report the runs below `before`; later runs (dropped after this record was queued)
        # wait for a record that follows them.
        split = bisect.bisect_left(gap.ranges, [before, before])
        runs, gap.ranges = gap.ranges[:split], gap.ranges[split:]
        time_ns = gap.time_ns
        if gap.ranges:
            # The later runs were dropped after the record at `before` was logged.
            gap.time_ns = max(time_ns, before_ns)
        else:
            del self._pending[key]
        count = sum(hi - lo + 1 for lo, hi in runs)
        self.reported += 1
        fields = {"dropped": count, "dropped_seqs": runs, "overflow": self.policy}
        message = f"{count} entries dropped (overflow={self.policy})"
        session_id, run = key
        return (_GAP, session_id, runs[0][0], time_ns, _WARNING, message, fields, run)
