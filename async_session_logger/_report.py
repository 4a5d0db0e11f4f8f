"""Delivery reports and stats: what each sink did with the entries it was given."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._errors import SinkError

__all__ = ["DeliveryReport", "ErrorHandler", "SinkStats", "print_error"]


@dataclass
class SinkStats:
    """Counters of one sink since the logger started (entries, not batches).

    Every entry given to the sink ends in exactly one of ``delivered``, ``dead_lettered`` or
    ``lost`` (dead-lettering itself failed), or is still ``pending``. ``dropped`` counts the
    entries the logger's overflow policy dropped before any sink got them (the same for every
    sink; ``gap`` entries stand in for them).
    """

    name: str
    delivered: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    lost: int = 0
    retried: int = 0
    filtered: int = 0
    pending: int = 0
    failures: int = 0
    incidents: int = 0
    last_error: str | None = None
    healthy: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Entries this sink gave up on (dead-lettered or lost)."""
        return self.dead_lettered + self.lost

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as a plain dict (for JSON)."""
        out = asdict(self)
        out["failed"] = self.failed
        return out


@dataclass
class DeliveryReport:
    """What ``save_logs()`` returns: per-sink counters at the flush barrier.

    ``ok`` is true when no sink has given up on any entry, nothing is pending and the
    overflow policy dropped nothing. ``accepted`` counts the entries the logger took in;
    ``dropped`` those of them a drop policy discarded (``gap`` entries, which each sink gets
    in their place, count in the sinks' ``delivered``).
    """

    accepted: int
    dropped: int = 0
    sinks: dict[str, SinkStats] = field(default_factory=dict)
    dead_letter_path: str | None = None
    interrupted_sessions: int = 0

    @property
    def ok(self) -> bool:
        """Whether every accepted entry reached every sink."""
        return not self.dropped and all(
            s.failed == 0 and s.pending == 0 for s in self.sinks.values()
        )

    @property
    def failed(self) -> int:
        """Entries given up on, summed over sinks."""
        return sum(s.failed for s in self.sinks.values())

    def __getitem__(self, sink_name: str) -> SinkStats:
        return self.sinks[sink_name]

    def as_dict(self) -> dict[str, Any]:
        """Return the report as a plain dict (for JSON)."""
        return {
            "ok": self.ok,
            "accepted": self.accepted,
            "dropped": self.dropped,
            "dead_letter_path": self.dead_letter_path,
            "interrupted_sessions": self.interrupted_sessions,
            "sinks": {name: s.as_dict() for name, s in self.sinks.items()},
        }

    def __str__(self) -> str:
        parts = [
            f"{s.name}: {s.delivered} delivered"
            + (f", {s.dead_lettered} dead-lettered" if s.dead_lettered else "")
            + (f", {s.lost} lost" if s.lost else "")
            + (f", {s.pending} pending" if s.pending else "")
            for s in self.sinks.values()
        ]
        dropped = f", {self.dropped} dropped by the overflow policy" if self.dropped else ""
        head = f"{'ok' if self.ok else 'NOT OK'}: {self.accepted} accepted{dropped}; "
        return head + "; ".join(parts)


ErrorHandler = Callable[[SinkError], None]


def print_error(error: SinkError) -> None:
    """Write one line about a sink incident to stderr (the default ``on_error``)."""
    cause = error.__cause__
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    try:
        print(f"async_session_logger: {error}{detail}", file=sys.stderr, flush=True)
    except Exception:  # stderr closed at exit: nothing better to do
        pass
