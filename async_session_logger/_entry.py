"""Entry schema v1: the call-time record, and how the writer turns it into a dict and a line."""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Collection, Iterable, Mapping
from json.encoder import encode_basestring as _quote
from operator import itemgetter
from typing import Any, Final

import orjson
from orjson import loads as _loads

from ._encode import DUMPS_OPTIONS, describe, encode_entry, json_default
from ._reader import entry_problem
from ._validate import _LEVEL_NAMES, level_name

__all__ = [
    "CLOSE",
    "DEFAULT_MASK_KEYS",
    "EVENTS",
    "GAP",
    "LOG",
    "START",
    "EntryBuilder",
    "Extra",
    "Formatter",
    "Masker",
    "Record",
    "format_timestamp",
]

SCHEMA_VERSION: Final = 1

START: Final = 0
LOG: Final = 1
CLOSE: Final = 2
GAP: Final = 3
EVENTS: Final = ("session_start", "log", "session_close", "gap")

Formatter = Callable[[dict[str, Any]], dict[str, Any]]

DEFAULT_MASK_KEYS: Final = (
    "password",
    "passwd",
    "token",
    "secret",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "credential",
    "private_key",
    "cookie",
)
MASK: Final = "***"
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_FLAT: Final = frozenset({str, int, bool, type(None)})  # _SCALARS but floats (NaN, infinities)
_MAX_DEPTH: Final = 64
_OPTIONS: Final = DUMPS_OPTIONS | orjson.OPT_APPEND_NEWLINE
_FIXED_KEYS: Final = frozenset(
    ("timestamp", "session_id", "seq", "event", "level", "levelno", "message", "custom_fields")
)
_START_KEYS: Final = _FIXED_KEYS | {"metadata"}


# What a call snapshots: everything but the encoding, which the writer does later:
# (kind, session_id, seq, time_ns, levelno, message, fields, run), where fields is the
# metadata (start), custom_fields (log), the close summary (close) or the drop report (gap),
# and run tells apart the sessions of a reused id (not written).
# A plain tuple on purpose: a NamedTuple's Python-level __new__ costs ~0.3 us per entry.
Record = tuple[int, str, int, int, int, str, Any, int]
# A log entry's top-level keys beyond the schema's (exception, origin, trace ids), queued as
# (custom_fields, extra) in a record's fields: a dict, or the JSON text of one (a
# ``_core.Origin``'s, made once), which the writer splices and the GC never tracks.
Extra = dict[str, Any] | str | None


# "000".."999": the fraction as two table lookups. An f-string format spec (":06d") costs
# about three times as much, and the timestamp was a third of the writer's per-entry work.
_DIGITS3: Final = tuple(f"{i:03d}" for i in range(1000))


def _members(obj: dict[str, Any]) -> str:
    """The members of ``obj`` encoded, after a comma, to splice into an entry's top level
    (``""`` when it has none); raises what ``orjson.dumps`` raises."""
    text = orjson.dumps(obj, default=json_default, option=DUMPS_OPTIONS)
    return "," + text[1:-1].decode() if len(text) > 2 else ""


_KIND_OF: Final = itemgetter(0)
_SESSION_OF: Final = itemgetter(1)
_dumps: Final = orjson.dumps  # a module global: one lookup less per snapshot


class _Clock:
    """Format nanosecond timestamps as RFC 3339 UTC, reusing the date part within one second."""

    __slots__ = ("base", "prefix")

    def __init__(self) -> None:
        # Start valid (the epoch's first second) so no sentinel can ever match a real time.
        self.base = 0  # the first ns of the second ``prefix`` names
        self.prefix = "1970-01-01T00:00:00."  # "YYYY-MM-DDTHH:MM:SS." of that second

    def format(self, time_ns: int) -> str:
        rest = time_ns - self.base
        if not 0 <= rest < 1_000_000_000:
            second, rest = divmod(time_ns, 1_000_000_000)
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self.base = time_ns - rest
        return f"{self.prefix}{_DIGITS3[rest // 1_000_000]}{_DIGITS3[rest // 1000 % 1000]}Z"


_default_clock = _Clock()


def format_timestamp(time_ns: int) -> str:
    """Return ``time_ns`` (ns since the epoch) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return _default_clock.format(time_ns)


class Masker:
    """Replace the values of secret-looking keys (substring match, case-insensitive) by ``***``."""

    def __init__(self, keys: Iterable[str] | None = DEFAULT_MASK_KEYS) -> None:
        self.patterns = tuple(k.lower() for k in keys) if keys is not None else ()
        self._cache: dict[str, bool] = {}
        # Keys seen and found not secret: lets the writer skip mask() with one subset test.
        self.safe_keys: set[str] = set()
        # What snapshot() tests keys against: None when masking is off (any key will do).
        self._check_keys = self.safe_keys if self.patterns else None

    def _is_secret(self, key: object) -> bool:
        if not isinstance(key, str):
            if not isinstance(key, bytes):
                return False  # ints, tuples...: never a secret's name
            key = key.decode("latin-1")
        hit = self._cache.get(key)
        if hit is None:
            low = key.lower()
            hit = any(p in low for p in self.patterns)
            if len(self._cache) < 4096:  # bounded: keys are usually a small vocabulary
                self._cache[key] = hit
                if not hit:
                    self.safe_keys.add(key)
        return hit

    def known_safe(self, fields: Mapping[Any, Any]) -> bool:
        """Whether ``fields`` needs no masking: every key seen before and found not secret,
        every value a scalar (a nested value could hide a secret key)."""
        safe_keys = self.safe_keys
        for key, value in fields.items():
            if key not in safe_keys or type(value) not in _SCALARS:
                return False
        return True

    def snapshot(self, fields: dict[Any, Any]) -> str | dict[Any, Any]:
        """Return the call-time snapshot of a ``custom_fields`` dict.

        Flat fields that need no masking (every key seen before and found not secret, every
        value a str, int, bool, None or finite float) become their JSON text: the record then
        holds only text and numbers, which the garbage collector stops tracking (a queued dict
        kept each record tracked: collections took 1.3-1.7 us per entry flat out, against
        0.4-0.6 us for entries without fields), and the writer
        copies the text into the line as it is. Anything else is a shallow copy, masked and
        encoded by the writer as before.
        """
        # known_safe()'s rule (its key test skipped when masking is off) plus finite floats,
        # in one pass: this runs at the call site. A float is the one scalar type tested twice.
        safe_keys = self._check_keys
        if safe_keys is None:
            for value in fields.values():
                kind = type(value)
                if kind not in _FLAT and (kind is not float or value - value != 0.0):
                    return dict(fields)
        else:
            for key, value in fields.items():
                kind = type(value)
                if key not in safe_keys or (
                    kind not in _FLAT and (kind is not float or value - value != 0.0)
                ):
                    return dict(fields)  # nested, an object, NaN or an infinity: as before
        try:
            return _dumps(fields).decode()
        except Exception:  # a key that is not a str, an int past 64 bits, a lone surrogate
            return dict(fields)

    def mask(self, value: Any, depth: int = 0, _path: frozenset[int] = frozenset()) -> Any:
        """Return ``value`` with secrets masked; unchanged objects are returned as they are.

        Looks into mappings, lists, tuples and dataclass instances (which JSON writes as
        objects); other objects are written by ``repr`` and not looked into. A container that
        contains itself becomes ``"<cycle>"`` there (as the encoder writes it), and one deeper
        than 64 levels ``"<too deep>"``, rather than being written unchecked.
        """
        if not self.patterns or type(value) in _SCALARS:
            return value
        if depth > _MAX_DEPTH:
            return "<too deep>"
        if isinstance(value, Mapping | list | tuple):
            ident = id(value)
            if ident in _path:
                return "<cycle>"
            path = _path | {ident}
            if isinstance(value, Mapping):
                out: dict[Any, Any] | None = None
                for key, item in value.items():
                    new = MASK if self._is_secret(key) else self.mask(item, depth + 1, path)
                    if new is not item:
                        if out is None:
                            out = dict(value)
                        out[key] = new
                return value if out is None else out
            items = [self.mask(item, depth + 1, path) for item in value]
            if any(a is not b for a, b in zip(items, value, strict=True)):
                return items
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
            masked = self.mask(fields, depth, _path)
            return value if masked is fields else masked
        return value


class EntryBuilder:
    """Turn records into schema-v1 dicts and JSON lines: the writer's I/O-free half."""

    def __init__(self, formatter: Formatter | None, masker: Masker) -> None:
        self.formatter = formatter
        self.masker = masker
        self._clock = _Clock()

    def build(self, record: Record, clock: _Clock | None = None) -> dict[str, Any]:
        """Return the entry dict for ``record``, formatted by the user's formatter if any."""
        return self.build_all([record], clock)[0]

    def build_safely(self, record: Record, clock: _Clock | None = None) -> dict[str, Any]:
        """:meth:`build`, but a record it cannot build becomes its entry without custom fields
        and a ``build_error`` (one bad record must not take its batch down)."""
        try:
            return self.build(record, clock)
        except Exception:
            entry = self.build((*record[:6], None, record[7]), clock)
            entry["build_error"] = traceback.format_exc(limit=1).strip().splitlines()[-1]
            return entry

    def build_batch(
        self, records: list[Record], clock: _Clock | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`build_all`, falling back to :meth:`build_safely` record by record."""
        try:
            return self.build_all(records, clock)
        except Exception:  # defensive: one bad record must not take the batch down
            return [self.build_safely(r, clock) for r in records]

    @staticmethod
    def heads_later(records: list[Record]) -> Callable[[], list[tuple[str, str, int]]]:
        """Return a function that gives each record's ``(session_id, event, levelno)`` (no
        formatter: the dicts would say the same), for a deferred :class:`Batch`."""
        return lambda: [(record[1], EVENTS[record[0]], record[4]) for record in records]

    @staticmethod
    def kinds_later(records: list[Record]) -> Callable[[bool], tuple[Collection[str], set[str]]]:
        """Return a deferred :class:`Batch`'s ``kinds(per_entry)``: the distinct events of
        ``records`` with their distinct session ids, or each record's, without a tuple per
        record."""

        def kinds(per_entry: bool) -> tuple[Collection[str], set[str]]:
            ids = map(_SESSION_OF, records)
            events = {EVENTS[kind] for kind in set(map(_KIND_OF, records))}
            return (list(ids) if per_entry else set(ids)), events

        return kinds

    def build_later(self, records: list[Record]) -> Callable[[], list[dict[str, Any]]]:
        """Return a function that builds the dicts of ``records`` when called (a deferred
        :class:`Batch`'s), with a clock of its own: a sink may call it from another thread."""
        return lambda: self.build_batch(records, _Clock())

    def encode_records(self, records: list[Record]) -> bytes:
        """Encode ``records`` as JSON Lines without building their dicts (no formatter).

        Byte for byte what :meth:`encode` makes of :meth:`build_batch`'s dicts. A log entry's
        line is one f-string: the message quoted by the json module's C string encoder (its
        escapes are orjson's, checked for every code point in the tests), the extras and
        custom fields as the JSON text the call made, or encoded here. The batch is encoded
        to UTF-8 once. Any other record, and a log entry whose parts orjson refuses or whose
        line UTF-8 cannot hold (a lone surrogate), goes through its dict.
        """
        lines: list[str] = []
        append = lines.append
        quote = _quote
        dumps = orjson.dumps
        default = json_default
        options = DUMPS_OPTIONS
        fixed = _FIXED_KEYS
        masker = self.masker
        mask = masker.mask if masker.patterns else None
        clock = self._clock
        base = clock.base
        prefix = clock.prefix
        digits = _DIGITS3
        ids: dict[str, str] = {}
        levels: dict[int, str] = {}
        # The previous log entry's id and level and their text: a run of entries of one
        # session at one level (the usual batch) skips both lookups.
        last_id: object = None
        last_levelno: object = None
        sid = level = ""
        for record in records:
            kind, session_id, seq, time_ns, levelno, message, fields, _run = record
            rest = time_ns - base
            if not 0 <= rest < 1_000_000_000:  # a new second (or an earlier one): new prefix
                sec, rest = divmod(time_ns, 1_000_000_000)
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
                base = time_ns - rest
            if kind == LOG:
                try:
                    # The constant text around the id and the level goes with them: fewer
                    # pieces for the f-string to join.
                    if session_id is not last_id:
                        known = ids.get(session_id)
                        if known is None:
                            known = f'Z","session_id":{quote(session_id)},"seq":'
                            ids[session_id] = known
                        sid, last_id = known, session_id
                    if levelno is not last_levelno:
                        known = levels.get(levelno)
                        if known is None:
                            name = _LEVEL_NAMES.get(levelno) or level_name(levelno)
                            known = levels[levelno] = (
                                f',"event":"log","level":{quote(name)},"levelno":{levelno},'
                                '"message":'
                            )
                        level, last_levelno = known, levelno
                    if type(fields) is str:  # flat custom fields as JSON text: the usual entry
                        append(
                            f'{{"timestamp":"{prefix}{digits[rest // 1_000_000]}'
                            f"{digits[rest // 1000 % 1000]}{sid}{seq}{level}{quote(message)}"
                            f',"custom_fields":{fields}}}\n'
                        )
                        continue
                    more = ""
                    if fields is not None:
                        if type(fields) is tuple:  # (custom_fields, top-level extras...)
                            fields, extra = fields
                            if type(extra) is str:  # an Origin's JSON, its keys checked
                                more = "," + extra[1:-1]
                            else:
                                if not fixed.isdisjoint(extra):
                                    raise ValueError("an extra key would replace a schema key")
                                more = _members(extra)
                        if type(fields) is str:  # Masker.snapshot()'s JSON text
                            more += ',"custom_fields":' + fields
                        elif fields is not None:
                            # A dict here is rarely flat and known safe (Masker.snapshot()
                            # made those text): the call costs less than an inline copy.
                            if mask is not None and not masker.known_safe(fields):
                                fields = mask(fields)
                            more += (
                                ',"custom_fields":'
                                + dumps(fields, default=default, option=options).decode()
                            )
                    append(
                        f'{{"timestamp":"{prefix}{digits[rest // 1_000_000]}'
                        f"{digits[rest // 1000 % 1000]}{sid}{seq}{level}{quote(message)}{more}}}\n"
                    )
                    continue
                except Exception:
                    pass  # through its dict, as encode() would write it
            elif kind != GAP:  # START or CLOSE
                try:
                    stamp = f"{prefix}{digits[rest // 1_000_000]}{digits[rest // 1000 % 1000]}"
                    append(self._session_line(record, stamp, mask))
                    continue
                except Exception:
                    pass
            append(self.encode([self.build_safely(record)]).decode())
        clock.base = base
        clock.prefix = prefix
        text = "".join(lines)
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate (orjson refuses it): that entry's dict
            pairs = zip(lines, records, strict=True)
            return b"".join([self._encode_line(line, record) for line, record in pairs])

    def _session_line(self, record: Record, stamp: str, mask: Callable[[Any], Any] | None) -> str:
        """A start or close entry's line, byte for byte what :meth:`build_all`'s dict encodes
        to; raises where that dict must be built (a key that would replace a schema key, a
        value orjson refuses), and :meth:`encode_records` builds it."""
        kind, session_id, seq, _time_ns, levelno, message, fields, _run = record
        more = ""
        if kind == START:
            if type(fields) is tuple:  # (metadata, parent id and trace ids)
                fields, extra = fields
                if type(extra) is not dict or not _START_KEYS.isdisjoint(extra):
                    raise ValueError("an extra key would replace a schema key")
                more = _members(extra)
            if not fields:
                fields = {}
            elif mask is not None and not self.masker.known_safe(fields):
                fields = mask(fields)
            metadata = orjson.dumps(fields, default=json_default, option=DUMPS_OPTIONS).decode()
            more += ',"metadata":' + metadata
        else:  # CLOSE: its fields are top-level keys (duration_s, entries, status, levels...)
            if type(fields) is not dict or not _FIXED_KEYS.isdisjoint(fields):
                raise ValueError("a close field would replace a schema key")
            if mask is not None and "summary" in fields:
                fields = {**fields, "summary": mask(fields["summary"])}
            more = _members(fields)
        name = _LEVEL_NAMES.get(levelno) or level_name(levelno)
        return (
            f'{{"timestamp":"{stamp}Z","session_id":{_quote(session_id)},"seq":{seq},'
            f'"event":"{EVENTS[kind]}","level":{_quote(name)},"levelno":{levelno},'
            f'"message":{_quote(message)}{more}}}\n'
        )

    def _encode_line(self, line: str, record: Record) -> bytes:
        try:
            return line.encode()
        except UnicodeEncodeError:
            return self.encode([self.build_safely(record)])

    def build_all(self, records: list[Record], clock: _Clock | None = None) -> list[dict[str, Any]]:
        """Return the entry dicts for ``records`` (the writer's hot loop: locals on purpose)."""
        out: list[dict[str, Any]] = []
        append = out.append
        mask = self.masker.mask if self.masker.patterns else None
        safe_keys = self.masker.safe_keys
        formatter = self.formatter
        if clock is None:
            clock = self._clock
        base = clock.base
        prefix = clock.prefix
        digits = _DIGITS3
        for kind, session_id, seq, time_ns, levelno, message, fields, _run in records:
            rest = time_ns - base
            if not 0 <= rest < 1_000_000_000:  # a new second (or an earlier one): new prefix
                sec, rest = divmod(time_ns, 1_000_000_000)
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
                base = time_ns - rest
            entry: dict[str, Any] = {
                "timestamp": f"{prefix}{digits[rest // 1_000_000]}{digits[rest // 1000 % 1000]}Z",
                "session_id": session_id,
                "seq": seq,
                "event": EVENTS[kind],
                "level": _LEVEL_NAMES.get(levelno) or level_name(levelno),
                "levelno": levelno,
                "message": message,
            }
            if kind == LOG:
                if type(fields) is tuple:  # (custom_fields, top-level extras: exception...)
                    fields, extra = fields
                    entry.update(extra if type(extra) is dict else _loads(extra))
                if type(fields) is str:  # Masker.snapshot()'s JSON text: needs no masking
                    entry["custom_fields"] = _loads(fields)
                elif fields is not None:
                    if mask is not None:
                        # Masker.known_safe() written out: a call per entry costs ~0.1 us.
                        for key, value in fields.items():
                            if key not in safe_keys or type(value) not in _SCALARS:
                                fields = mask(fields)
                                break
                    entry["custom_fields"] = fields
            elif kind == START:
                if type(fields) is tuple:  # (metadata, trace ids)
                    fields, extra = fields
                    entry.update(extra)
                if not fields:
                    fields = {}
                elif mask is not None and not self.masker.known_safe(fields):
                    fields = mask(fields)
                entry["metadata"] = fields
            else:  # CLOSE: duration_s, entries, status, levels...; GAP: dropped, dropped_seqs...
                entry.update(fields)
                if mask is not None and "summary" in fields:
                    entry["summary"] = mask(fields["summary"])  # annotate(): masked like fields
            if formatter is not None:
                entry = self._format(entry)
            append(entry)
        clock.base = base
        clock.prefix = prefix
        return out

    def _format(self, entry: dict[str, Any]) -> dict[str, Any]:
        try:
            # The formatter gets a copy: if it mutates and then raises, the entry stays clean.
            out = self.formatter(dict(entry))  # type: ignore[misc]
        except Exception as exc:
            entry["formatter_error"] = describe(exc)
            return entry
        if not isinstance(out, dict):
            entry["formatter_error"] = f"formatter returned {type(out).__name__}, expected dict"
            return entry
        problem = entry_problem(out)
        if problem is not None:
            # A line the readers refuse would be "delivered" yet lost: keep the unformatted
            # entry, as for a formatter that raises. The rule is the reader's own.
            entry["formatter_error"] = f"formatter output is not a readable entry: {problem}"
            return entry
        return out

    def encode(self, entries: list[dict[str, Any]]) -> bytes:
        """Encode entries as JSON Lines, one buffer for the batch (each line ends with LF)."""
        # One growing buffer, not a list of orjson results: each result pins a ~4 KiB buffer,
        # and holding thousands of them made encoding 40x slower (page faults) and fat.
        buf = bytearray()
        extend = buf.extend
        dumps = orjson.dumps
        for entry in entries:
            try:
                extend(dumps(entry, default=json_default, option=_OPTIONS))
            except Exception:
                extend(encode_entry(entry))
                extend(b"\n")
        return bytes(buf)
