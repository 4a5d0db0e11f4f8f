"""Human-readable output: entry lines coloured by level, indented fields, aligned tables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson

from .._reader import parent_of, recorded_levels
from .._validate import level_name

__all__ = [
    "Style",
    "choose_colour",
    "entry_lines",
    "escape",
    "format_duration",
    "format_keys",
    "format_levels",
    "format_time",
    "format_value",
    "is_safe",
    "json_text",
    "plural",
    "table",
]

# Keys rendered on the entry's own line (or in the header of `show`); any other key of an
# entry (a formatter's addition, `exception`, `formatter_error`) is shown indented below it.
_HEADLINE_KEYS: Final = frozenset(
    (
        "timestamp",
        "session_id",
        "seq",
        "event",
        "level",
        "levelno",
        "message",
        "custom_fields",
        "metadata",
        "duration_s",
        "entries",
        "status",
        "dropped",
        "logger",
    )
)
_RESET: Final = "\x1b[0m"
_LEVEL_COLOURS: Final = ((50, "\x1b[1;31m"), (40, "\x1b[31m"), (30, "\x1b[33m"), (20, ""))
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
# What a log must never send to a terminal raw (collect stores publishers' lines byte for byte):
# C0 controls (ESC starts escape sequences; CR, BS and LF overwrite or forge lines; BEL rings),
# DEL, C1 controls (U+009B is a one-character CSI on some terminals), the Unicode line and
# paragraph separators, and the bidi embeddings, overrides and isolates that reorder what is
# shown ("Trojan Source").
_BIDI_AND_SEPARATORS: Final = "\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE: Final = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}]")
# Multi-line fields (messages, tracebacks) keep their line breaks: entry_lines indents them.
_UNSAFE_BUT_LF: Final = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}]")
# orjson escapes C0 itself; the rest can only stand inside JSON strings, where \uXXXX is valid.
_UNSAFE_IN_JSON: Final = re.compile(f"[\x7f-\x9f{_BIDI_AND_SEPARATORS}]")
_SHORT: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Level counts shown compactly (``E1 W2 I5``): the standard names by their initial, most severe
# first; other names in full (cut at _NAME_WIDTH characters, then escaped), after them.
_LEVEL_INITIALS: Final = (
    ("CRITICAL", "C"),
    ("ERROR", "E"),
    ("WARNING", "W"),
    ("INFO", "I"),
    ("DEBUG", "D"),
)
_NAME_WIDTH: Final = 16
# Width of the compact cells of a `sessions` row (level counts, summary keys) before "+N".
CELL_WIDTH: Final = 40


def choose_colour(mode: str, stream: TextIO) -> bool:
    """Decide on colour: ``always``, ``never``, or ``auto`` (a terminal, and no ``NO_COLOR``)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Style:
    """ANSI colour by level, or plain text."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def level(self, levelno: int, text: str) -> str:
        """Colour ``text`` for ``levelno``: dim debug, plain info, yellow, red, bold red."""
        if not self.colour:
            return text
        code = _DIM
        for floor, colour in _LEVEL_COLOURS:
            if levelno >= floor:
                code = colour
                break
        return f"{code}{text}{_RESET}" if code else text

    def dim(self, text: str) -> str:
        """Render secondary text (field names)."""
        return f"{_DIM}{text}{_RESET}" if self.colour else text

    def bold(self, text: str) -> str:
        """Render a heading."""
        return f"{_BOLD}{text}{_RESET}" if self.colour else text


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str, *, multiline: bool = False) -> str:
    """Return text from a log safe for a terminal: controls and bidi overrides shown visibly.

    ESC becomes the four characters ``\\x1b``, CR ``\\r``, U+202E ``\\u202e``, as in a Python
    literal. Every CLI output path passes log values through here (``format_value``,
    ``json_text`` and the stderr messages of ``_common`` included).

    Args:
        text: The value as read from the log.
        multiline: Keep LF, for fields rendered as indented continuation lines.
    """
    return (_UNSAFE_BUT_LF if multiline else _UNSAFE).sub(_visible, text)


def json_text(value: Any, option: int = 0) -> str:
    """Return ``value`` as JSON whose text is terminal-safe: unsafe characters as ``\\uXXXX``.

    The result is equivalent JSON: a reader gets the very same strings back.
    """
    text = orjson.dumps(value, option=option).decode()
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def is_safe(text: str) -> bool:
    """Return whether ``text`` holds nothing :func:`escape` would change."""
    return _UNSAFE.search(text) is None


def format_value(value: Any) -> str:
    """Render a field value, escaped: strings as they are (lines kept), the rest as JSON."""
    if isinstance(value, str):
        return escape(value, multiline=True)
    try:
        return escape(orjson.dumps(value).decode())
    except TypeError:
        return escape(repr(value))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fitted(parts: Iterable[str], total: int, sep: str, width: int) -> str:
    """Join parts while they fit in ``width``; name how many more there are after that."""
    shown: list[str] = []
    used = 0
    for part in parts:
        cost = len(part) + (len(sep) if shown else 0)
        if shown and used + cost > width:
            break
        shown.append(part if shown else _clip(part, width))
        used += cost
    more = total - len(shown)
    return sep.join(shown) + (f" +{more}" if more else "")


def format_levels(levels: dict[str, int], width: int = CELL_WIDTH) -> str:
    """Render level counts compactly, most severe first: ``E1 W2 I5`` (``-`` when none)."""
    counts = {name: n for name, n in levels.items() if n}
    parts = [f"{initial}{counts.pop(name)}" for name, initial in _LEVEL_INITIALS if name in counts]
    for name, n in counts.items():
        # A name of its own is shown in full, escaped, with no space that would split the cell.
        parts.append(f"{escape(_clip(name, _NAME_WIDTH)).replace(' ', '_')}:{n}")
    return _fitted(parts, len(parts), " ", width) if parts else "-"


def format_keys(mapping: dict[str, Any], width: int = CELL_WIDTH) -> str:
    """Render the keys of a mapping, escaped, as many as fit: ``rows, user +3`` (``-`` if none)."""
    if not mapping:
        return "-"
    # Only the keys that can fit are rendered: a summary of 100,000 keys costs no more.
    keys = (escape(str(key)) for _, key in zip(range(width // 2 + 1), mapping, strict=False))
    return _fitted(keys, len(mapping), ", ", width)


def format_time(moment: datetime | None) -> str:
    """Render a UTC time to the second, or ``-``."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """Render a duration compactly: ``0.042s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def plural(count: int, one: str, many: str) -> str:
    """Return ``1 entry``, ``2 entries``."""
    return f"{count} {one if count == 1 else many}"


def _levelno(entry: dict[str, Any]) -> int:
    value = entry.get("levelno")
    return value if isinstance(value, int) and not isinstance(value, bool) else 20


def _indented(name: str, value: Any, style: Style, indent: str = "    ") -> list[str]:
    text = format_value(value).split("\n")
    first = f"{indent}{style.dim(escape(str(name)) + ':')} {text[0]}"
    return [first, *(f"{indent}  {more}" for more in text[1:])]


def entry_lines(
    entry: dict[str, Any],
    style: Style,
    *,
    with_session: bool = False,
    with_metadata: bool = False,
) -> list[str]:
    """Render one entry: a headline coloured by level, then its fields indented below."""
    levelno = _levelno(entry)
    level = entry.get("level")
    level_text = escape(level) if isinstance(level, str) else level_name(levelno)
    message = format_value(entry.get("message", ""))
    event = entry.get("event")
    # The keys of this entry rendered on its headline (or, for a close, in the header of
    # `show`); a malformed value is left to be shown as it is, indented below.
    shown_keys: set[str] = set()
    if event == "session_close":
        details = [escape(str(entry.get("status", "closed")))]
        duration = entry.get("duration_s")
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            details.append(format_duration(float(duration)))
        if isinstance(entry.get("entries"), int):
            details.append(plural(entry["entries"], "entry", "entries"))
        levels = entry.get("levels")
        if isinstance(levels, dict) and recorded_levels(entry) == levels:
            shown_keys.add("levels")
            if any(levels.values()):
                details.append(format_levels(levels, width=1_000))
        discarded = entry.get("discarded")
        if type(discarded) is int and discarded >= 0:  # not a bool, not a float
            shown_keys.add("discarded")
            details.append(f"{discarded} discarded")
        if isinstance(entry.get("summary"), dict) and not with_metadata:
            shown_keys.add("summary")  # `show` prints it in its header
        message += f" ({', '.join(details)})"
    elif event == "session_start" and parent_of(entry) is not None:
        shown_keys.add("parent_session_id")
        message += f" (child of {escape(entry['parent_session_id'])})"
    elif event == "gap":
        message += f" ({escape(str(entry.get('dropped', '?')))} entries dropped)"
    logger = entry.get("logger")
    if isinstance(logger, str):  # a stdlib record's logger name, as stdlib formats put it
        message = f"{escape(logger)}: {message}"
    lines = message.split("\n")
    session = f"{escape(str(entry.get('session_id')))}  " if with_session else ""
    seq = escape(str(entry.get("seq", "?")))
    head = (
        f"{escape(str(entry.get('timestamp', '-')))}  {session}#{seq:<4} {level_text:<8} {lines[0]}"
    )
    out = [style.level(levelno, head)]
    out += [style.level(levelno, f"    {more}") for more in lines[1:]]
    if with_metadata and event == "session_start":
        metadata = entry.get("metadata")
        if isinstance(metadata, dict):
            for key, value in metadata.items():
                out += _indented(f"metadata.{key}", value, style)
    if with_metadata and event == "session_close":
        summary = entry.get("summary")
        if isinstance(summary, dict):
            shown_keys.add("summary")
            for key, value in summary.items():
                out += _indented(f"summary.{key}", value, style)
    fields = entry.get("custom_fields")
    if isinstance(fields, dict):
        for key, value in fields.items():
            out += _indented(key, value, style)
    for key, value in entry.items():
        if key not in _HEADLINE_KEYS and key not in shown_keys:
            out += _indented(key, _source_text(value) if key == "source" else value, style)
    return out


def _source_text(value: Any) -> Any:
    # The stdlib bridge's {"file", "line", "function", "module"} as "file:line in function".
    if isinstance(value, dict) and {"file", "line", "function"} <= value.keys():
        return f"{value['file']}:{value['line']} in {value['function']}"
    return value


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> list[str]:
    """Return aligned rows (numeric columns right-aligned) under a header."""
    body = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in body)]
