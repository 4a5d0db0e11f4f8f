"""SmtpSink's I/O-free half: per-session digest buffers and the emails built from them."""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any, Final

import orjson

from .._errors import InvalidLevelError
from .._validate import level_name, resolve_level

__all__ = ["Alert", "Key", "MailFormat", "SessionDigest", "compose", "safe_header"]

Key = tuple[str, int]

_LIFECYCLE: Final = frozenset(("session_start", "session_close", "gap"))
# Control characters (C0, DEL, C1) and Unicode line separators: none may reach a header.
_HEADER_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# In the plain-text body, line breaks are re-indented and other controls made visible.
_BODY_BREAK: Final = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")
_BODY_UNSAFE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f]")
_MAX_SUBJECT: Final = 200
# The summary table's bounds: the close entry in the attachment holds the whole summary.
_MAX_SUMMARY_ROWS: Final = 50
_MAX_SUMMARY_KEY: Final = 40
_MAX_SUMMARY_VALUE: Final = 300
# Distinct level names counted per session (a formatter could invent one per entry).
_MAX_LEVEL_NAMES: Final = 32
# Statuses that are no clean end: digest_on="error" mails them (any status but these two).
_CLEAN: Final = frozenset(("closed", "open"))
_WHY_CLOSED: Final = {
    "timeout": "Closed by idle_timeout: no activity for that long.",
    "evicted": "Closed by max_open_sessions: the least recently active session when a new "
    "one would have exceeded the bound.",
    "interrupted": "Interrupted: still open when its task was cancelled or the logger closed.",
}


def safe_header(text: str) -> str:
    """Return ``text`` on one line (controls become spaces), at most 200 characters."""
    text = _HEADER_UNSAFE.sub(" ", text).strip()
    return text if len(text) <= _MAX_SUBJECT else text[: _MAX_SUBJECT - 3] + "..."


def _body_text(text: str) -> str:
    text = _BODY_BREAK.sub("\n      ", text)  # first: a CR of CRLF is a line break
    return _BODY_UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True)
class MailFormat:
    """What every mail of one sink shares: addresses, subjects, body limits."""

    sender: str
    recipients: tuple[str, ...]
    subject: str
    alert_subject: str
    digest_level: int
    max_digest_entries: int
    max_attachment_bytes: int


class SessionDigest:
    """One session's entries as the sink received them, bounded, ready to become a digest.

    The attachment keeps every entry's JSON line up to ``max_attachment_bytes`` (the session's
    start and close entries always fit); the body lists at most ``max_digest_entries`` entries
    at or above ``digest_level``: the first half and the last half, the middle counted.
    """

    __slots__ = (
        "alerted",
        "below_level",
        "close_levels",
        "counted_levels",
        "data",
        "discarded",
        "duration_s",
        "entries",
        "errors",
        "head",
        "last_key",
        "listable",
        "log_entries",
        "overflow",
        "overflow_seqs",
        "parent_session_id",
        "session_id",
        "start_key",
        "status",
        "summary",
        "tail",
    )

    def __init__(self, session_id: str, fmt: MailFormat) -> None:
        self.session_id = session_id
        self.data = bytearray()
        self.entries = 0  # lines in ``data``
        self.log_entries = 0
        self.errors = 0
        self.alerted = False
        # (timestamp, seq) of the start and of the latest entry: what was already consumed.
        self.start_key: Key | None = None
        self.last_key: Key | None = None
        self.status = "open"
        self.duration_s: float | None = None
        self.parent_session_id: str | None = None
        self.close_levels: dict[str, Any] | None = None  # the close entry's counts
        self.counted_levels: dict[str, list[int]] = {}  # name -> [levelno, count] seen here
        self.summary: dict[str, Any] = {}
        self.discarded = 0
        self.listable = 0
        self.below_level = 0
        self.overflow = 0  # entries that did not fit the attachment (dead-lettered)
        self.overflow_seqs: list[int] = []  # first and last such seq
        half = (fmt.max_digest_entries + 1) // 2
        self.head: list[tuple[int, int]] = []  # (start, end) offsets of listed lines
        self.tail: deque[tuple[int, int]] = deque(maxlen=fmt.max_digest_entries - half)

    def add(self, entry: dict[str, Any], line: bytes, key: Key | None, fmt: MailFormat) -> bool:
        """Keep ``entry``; return False when it does not fit the attachment limit."""
        event = entry.get("event")
        levelno = entry.get("levelno", 0)
        levelno = levelno if isinstance(levelno, int) else 0
        seq = entry.get("seq")
        if key is not None:
            self.last_key = key
        if event == "log":
            self.log_entries += 1
            if levelno >= logging.ERROR:
                self.errors += 1
            self._count_level(entry.get("level"), levelno)
        elif event == "session_start":
            self.start_key = key
            parent = entry.get("parent_session_id")
            self.parent_session_id = parent if isinstance(parent, str) else None
        elif event == "session_close":
            self._closed_by(entry)
        lifecycle = event in _LIFECYCLE
        if not lifecycle and len(self.data) + len(line) + 1 > fmt.max_attachment_bytes:
            self.overflow += 1
            if isinstance(seq, int):  # the first and the last seq that did not fit
                self.overflow_seqs = [*self.overflow_seqs[:1], seq]
            return False
        start = len(self.data)
        self.data += line
        self.data += b"\n"
        self.entries += 1
        if levelno >= fmt.digest_level or lifecycle:
            self.listable += 1
            span = (start, start + len(line))
            if len(self.head) < (fmt.max_digest_entries + 1) // 2:
                self.head.append(span)
            else:
                self.tail.append(span)
        else:
            self.below_level += 1
        return True

    def _count_level(self, name: object, levelno: int) -> None:
        if not isinstance(name, str):
            return
        seen = self.counted_levels.get(name)
        if seen is not None:
            seen[1] += 1
        elif len(self.counted_levels) < _MAX_LEVEL_NAMES:
            self.counted_levels[name] = [levelno, 1]

    def _closed_by(self, entry: dict[str, Any]) -> None:
        """Take the close entry's status, duration, level counts, summary and discards."""
        status = entry.get("status")
        self.status = status if isinstance(status, str) else "closed"
        duration = entry.get("duration_s")
        self.duration_s = duration if isinstance(duration, int | float) else None
        levels = entry.get("levels")
        self.close_levels = levels if isinstance(levels, dict) else None
        summary = entry.get("summary")
        self.summary = summary if isinstance(summary, dict) else {}
        discarded = entry.get("discarded")
        if isinstance(discarded, int) and not isinstance(discarded, bool) and discarded > 0:
            self.discarded = discarded

    def levels(self) -> list[tuple[str, object]]:
        """Return ``(level name, count)`` pairs, least severe first.

        The close entry's counts when it has them, else the entries this digest received.
        """
        if self.close_levels is not None:
            return sorted(self.close_levels.items(), key=lambda kv: _severity(kv[0]))
        counted = sorted(self.counted_levels.items(), key=lambda kv: kv[1][0])
        return [(name, count) for name, (_, count) in counted]

    def qualifies(self, digest_on: str) -> bool:
        """Whether this session gets a digest under ``digest_on``.

        ``"error"``: it logged ERROR or worse, raised an alert, or did not end cleanly (any
        status but ``closed``: ``error``, ``interrupted``, ``timeout``, ``evicted``).
        """
        if digest_on == "always":
            return True
        return self.errors > 0 or self.alerted or self.status not in _CLEAN

    @property
    def filename(self) -> str:
        """The attachment's file name (one line, whatever a formatter put in the id)."""
        return safe_header(f"{self.session_id}.jsonl")

    def subject(self, template: str) -> str:
        """Return the subject from the sink's template."""
        return template.format(
            session_id=self.session_id,
            status=self.status,
            entries=self.log_entries,
            errors=self.errors,
            parent_session_id=self.parent_session_id or "",
            discarded=self.discarded,
        )

    def render(self, fmt: MailFormat) -> str:
        """Return the digest's plain-text section."""
        duration = f", {self.duration_s:.3f} s" if self.duration_s is not None else ""
        lines = [
            f"Session {self.session_id}: status {self.status}{duration}, "
            f"{self.log_entries} entries, {self.errors} at ERROR or worse",
        ]
        if self.status in _WHY_CLOSED:
            lines.append(_WHY_CLOSED[self.status])
        if self.parent_session_id is not None:
            lines.append(f"Child session of {self.parent_session_id}")
        levels = self.levels()
        if levels:
            lines.append("Levels: " + ", ".join(f"{name} {n}" for name, n in levels))
        spans = [*self.head, *self.tail]
        first = orjson.loads(self.data[spans[0][0] : spans[0][1]]) if spans else {}
        if first.get("event") == "session_start" and first.get("metadata"):
            lines.append(f"Metadata: {_json(first['metadata'])}")
        if self.summary:
            lines.extend(_summary_table(self.summary))
        lines = [_body_text(line) for line in lines]
        lines.append("")
        lines.extend(_entry_line(orjson.loads(self.data[a:b])) for a, b in self.head)
        skipped = self.listable - len(self.head) - len(self.tail)
        if skipped:
            lines.append(
                f"  ... {skipped} more entries not listed (max_digest_entries="
                f"{fmt.max_digest_entries}); they are in the attachment ..."
            )
        lines.extend(_entry_line(orjson.loads(self.data[a:b])) for a, b in self.tail)
        lines.append("")
        if self.below_level:
            lines.append(
                f"{self.below_level} entries below {level_name(fmt.digest_level)} are not "
                "listed; they are in the attachment."
            )
        if self.discarded:
            lines.append(_discarded_note(self.discarded, self.status, self.errors))
        lines.append(f"The attachment {self.filename} holds {self.entries} entries (JSON Lines).")
        if self.overflow:
            seqs = "-".join(map(str, self.overflow_seqs))
            lines.append(
                f"{self.overflow} entries (seq {seqs}) did not fit the attachment limit of "
                f"{fmt.max_attachment_bytes} bytes: they were written to the logger's "
                "dead-letter file."
            )
        return "\n".join(lines)


def _severity(name: object) -> tuple[int, str]:
    """Order level names by their number; names no level knows go last."""
    try:
        return resolve_level(name), str(name)
    except InvalidLevelError:
        return 1 << 30, str(name)


def _summary_table(summary: dict[str, Any]) -> list[str]:
    """Return the summary as aligned ``key  value`` rows, bounded (values are masked)."""
    rows = list(summary.items())
    keys = [_cut(str(k), _MAX_SUMMARY_KEY) for k, _ in rows[:_MAX_SUMMARY_ROWS]]
    width = max(map(len, keys), default=0)
    out = ["Summary:"]
    for key, (_, value) in zip(keys, rows, strict=False):
        text = value if isinstance(value, str) else _json(value)
        out.append(f"  {key:<{width}}  {_cut(text, _MAX_SUMMARY_VALUE)}")
    if len(rows) > _MAX_SUMMARY_ROWS:
        out.append(
            f"  ... {len(rows) - _MAX_SUMMARY_ROWS} more fields: the close entry in the "
            "attachment holds them all"
        )
    return out


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _discarded_note(discarded: int, status: str, errors: int) -> str:
    """Say why entries held by ``buffer_level`` are in no file (they are not lost)."""
    held = f"{discarded} entries held back by buffer_level were not written"
    # The logger writes held entries when the session fails: an ERROR entry, or a close with
    # status error or interrupted (timeout and evicted are no failure: they are discarded).
    if errors or status in ("error", "interrupted"):
        return f"{held}: the oldest held entries, evicted past buffer_max before it failed."
    return f"{held}: the session did not fail."


@dataclass
class Alert:
    """An entry at or above the sink's ``alert_level``, waiting for a mail."""

    line: bytes
    session_id: str
    levelno: int


def compose(
    digests: Sequence[SessionDigest],
    alerts: Sequence[Alert],
    unlisted_alerts: int,
    fmt: MailFormat,
) -> EmailMessage:
    """Build one email from digests and alerts (the rate limit may combine several)."""
    msg = EmailMessage()
    msg["From"] = fmt.sender
    msg["To"] = ", ".join(fmt.recipients)
    msg["Subject"] = safe_header(_subject(digests, alerts, unlisted_alerts, fmt))
    msg["Date"] = formatdate(usegmt=True)
    # make_msgid() would ask DNS for this host's name (slow where DNS is): use the sender's.
    domain = parseaddr(fmt.sender)[1].rpartition("@")[2]
    msg["Message-ID"] = make_msgid(domain=domain or "localhost")
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to log mail
    sections: list[str] = []
    if alerts or unlisted_alerts:
        sections.append(_render_alerts(alerts, unlisted_alerts))
    sections.extend(d.render(fmt) for d in digests)
    msg.set_content("\n\n".join(sections) + "\n")
    if alerts:
        data = b"".join(a.line + b"\n" for a in alerts)
        msg.add_attachment(data, maintype="application", subtype="jsonl", filename="alerts.jsonl")
    for digest in digests:
        msg.add_attachment(
            bytes(digest.data), maintype="application", subtype="jsonl", filename=digest.filename
        )
    return msg


def _subject(
    digests: Sequence[SessionDigest], alerts: Sequence[Alert], unlisted: int, fmt: MailFormat
) -> str:
    count = len(alerts) + unlisted
    if len(digests) == 1 and not count:
        return digests[0].subject(fmt.subject)
    if not digests:
        worst = max(alerts, key=lambda a: a.levelno) if alerts else None
        return fmt.alert_subject.format(
            level=level_name(worst.levelno) if worst else "ALERT",
            count=count,
            session_id=alerts[0].session_id if alerts else "?",
        )
    if len(digests) == 1:
        return f"{digests[0].subject(fmt.subject)} (+{count} alerts)"
    statuses = sorted({d.status for d in digests})
    return f"[{'/'.join(statuses)}] {len(digests)} session digests" + (
        f" and {count} alerts" if count else ""
    )


def _render_alerts(alerts: Sequence[Alert], unlisted: int) -> str:
    lines = [f"ALERTS ({len(alerts) + unlisted})", ""]
    lines.extend(_entry_line(orjson.loads(a.line), with_session=True) for a in alerts)
    if unlisted:
        lines.append(
            f"  ... and {unlisted} more alerts, not listed (each is in its session's digest)"
        )
    if alerts:
        lines.append("")
        lines.append("The attachment alerts.jsonl holds the listed alerts (JSON Lines).")
    return "\n".join(lines)


def _entry_line(entry: dict[str, Any], *, with_session: bool = False) -> str:
    level = str(entry.get("level", ""))
    where = f"[{entry.get('session_id')}] " if with_session else ""
    text = f"  {entry.get('timestamp', '')}  {level:<8}  {where}{entry.get('message', '')}"
    fields = entry.get("custom_fields")
    if fields:
        text += f"  {_json(fields)}"
    if entry.get("exception"):
        text += f"\n{entry['exception']}"
    return _body_text(text)


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
