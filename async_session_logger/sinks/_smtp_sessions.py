"""SmtpSink's session book: entries filed per session, each consumed exactly once."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

from ._smtp_digest import Alert, Key, MailFormat, SessionDigest

__all__ = ["SessionBook"]

_CLOSED_MEMORY: Final = 4096


class SessionBook:
    """Open sessions' digests, fed entry by entry in the order the lane delivers them.

    An entry is identified by ``(timestamp, seq)``. The lane re-sends a batch only after
    ``write_batch`` raised; an entry at or below the last seq seen for its session (open, or
    among the last 4,096 closed), or older than that session's start (an earlier session of
    the same id), is skipped, so no digest counts an entry twice and no session is digested
    twice. Within a session only seq grows: entries held by ``buffer_level`` and written when
    it fails keep their call-time timestamps, older than those of entries with lower seqs.
    """

    def __init__(self, fmt: MailFormat, digest_on: str | None, alert_level: int | None) -> None:
        self.format = fmt
        self.digest_on = digest_on
        self.alert_level = alert_level
        self.open: dict[str, SessionDigest] = {}
        self._closed: OrderedDict[str, tuple[Key | None, Key | None]] = OrderedDict()
        self.skipped = 0  # closed sessions that digest_on left without a digest

    def absorb(
        self, entry: dict[str, Any], line: bytes
    ) -> tuple[bool, Alert | None, SessionDigest | None]:
        """File one entry.

        Returns:
            Whether it fit its digest's attachment (re-sent entries count as fitting), the
            alert it raises, and its session's digest when it closed the session and the
            session qualifies for a mail.
        """
        sid = entry.get("session_id")
        sid = sid if isinstance(sid, str) else "unknown"
        ts, seq = entry.get("timestamp"), entry.get("seq")
        key = (ts, seq) if isinstance(ts, str) and isinstance(seq, int) else None
        event = entry.get("event")
        session = self.open.get(sid)
        if key is not None and self._seen(sid, key, event == "session_start", session):
            return True, None, None
        if session is None or event == "session_start":
            session = self.open[sid] = SessionDigest(sid, self.format)
        fits = session.add(entry, line, key, self.format)
        alert = None
        levelno = entry.get("levelno")
        if (
            self.alert_level is not None
            and event == "log"
            and isinstance(levelno, int)
            and levelno >= self.alert_level
        ):
            session.alerted = True
            alert = Alert(line, sid, levelno)
        done = self.finish(session) if event == "session_close" else None
        return fits, alert, done

    def _seen(self, sid: str, key: Key, start: bool, session: SessionDigest | None) -> bool:
        closed = self._closed.get(sid)
        if start:
            return key == (session and session.start_key) or key == (closed and closed[0])
        if session is not None:
            first, last = session.start_key, session.last_key
        elif closed is not None:
            first, last = closed
        else:
            return False
        # An entry logged before this session's start belongs to an earlier one of the same id.
        if first is not None and key[0] < first[0]:
            return True
        return last is not None and key[1] <= last[1]

    def finish(self, session: SessionDigest) -> SessionDigest | None:
        """Close a session's book; return its digest if ``digest_on`` wants a mail."""
        sid = session.session_id
        self.open.pop(sid, None)
        self._closed[sid] = (session.start_key, session.last_key)
        self._closed.move_to_end(sid)
        if len(self._closed) > _CLOSED_MEMORY:
            self._closed.popitem(last=False)
        if self.digest_on is not None and session.qualifies(self.digest_on):
            return session
        self.skipped += 1
        return None

    def finish_all(self) -> list[SessionDigest]:
        """Close every open session (their status stays ``open``); return the digests due."""
        done = [self.finish(session) for session in list(self.open.values())]
        return [d for d in done if d is not None]
