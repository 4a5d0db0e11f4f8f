"""JSON encoding that always produces one valid line, whatever the entry holds."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import os
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["DUMPS_OPTIONS", "describe", "encode_entry", "json_default", "sanitize"]

# Dates and times go through json_default (isoformat): orjson 3.13 writes a datetime.time with
# 10,000-99,999 microseconds with five digits ("00:00:00.10000"), which reads back as 0.1 s.
DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME

_MAX_DEPTH = 64
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception:  # a __repr__ that raises must not lose the entry
        return f"<unrepresentable {type(obj).__qualname__}>"


def json_default(obj: Any) -> Any:
    """Encode what orjson cannot: bytes, sets, decimals, paths, timedeltas, exceptions, objects."""
    if isinstance(obj, _dt.datetime | _dt.date | _dt.time):
        return obj.isoformat()
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, set | frozenset):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, tuple | list):  # subclasses orjson refuses
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, decimal.Decimal | uuid.UUID | complex):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}" if str(obj) else type(obj).__name__
    return _safe_repr(obj)


def sanitize(value: Any, _depth: int = 0, _seen: frozenset[int] = frozenset()) -> Any:
    """Return a copy of ``value`` that orjson can always encode.

    Cycles become ``"<cycle>"``, keys become str, ints out of the 64-bit range become str, and
    anything else unknown goes through :func:`json_default`.
    """
    if isinstance(value, str):
        return _valid_str(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return int(value) if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if _depth >= _MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):  # its value may itself need sanitizing
        return sanitize(value.value, _depth + 1, _seen)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # What orjson writes for a dataclass on the fast path: an object of its fields.
        fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        return sanitize(fields, _depth + 1, _seen)
    if isinstance(value, dict | list | tuple | set | frozenset | Mapping):
        ident = id(value)
        if ident in _seen:
            return "<cycle>"
        seen = _seen | {ident}
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            try:
                items = list(value.items())
            except Exception as exc:
                return f"<unreadable mapping: {type(exc).__name__}>"
            for key, item in items:
                skey = _valid_str(key if isinstance(key, str) else _key_str(key))
                out[skey] = sanitize(item, _depth + 1, seen)
            return out
        return [sanitize(item, _depth + 1, seen) for item in value]
    converted = json_default(value)
    if isinstance(converted, str):
        return _valid_str(converted)
    return sanitize(converted, _depth + 1, _seen)


def _key_str(key: object) -> str:
    if key is None or isinstance(key, bool | int | float):
        return orjson.dumps(key).decode() if not isinstance(key, int | float) else str(key)
    if isinstance(key, _dt.datetime | _dt.date):
        return key.isoformat()
    try:
        return str(key)
    except Exception:
        return _safe_repr(key)


def encode_entry(entry: dict[str, Any]) -> bytes:
    """Encode one entry as a JSON line (without the newline); never raises."""
    try:
        return orjson.dumps(entry, default=json_default, option=DUMPS_OPTIONS)
    except Exception:
        pass
    try:
        return orjson.dumps(sanitize(entry))
    except Exception as exc:  # last resort: keep the fields a reader needs
        minimal = {
            key: sanitize(entry.get(key))
            for key in ("timestamp", "session_id", "seq", "event", "level", "levelno")
        }
        minimal["message"] = _valid_str(_safe_str(entry.get("message")))
        minimal["encode_error"] = _valid_str(f"{type(exc).__name__}: {_safe_str(exc)}")
        return orjson.dumps(minimal)


def _safe_str(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _valid_str(value: str) -> str:
    # Lone surrogates are legal in Python str but not in UTF-8: orjson refuses them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def describe(exc: BaseException) -> str:
    """Return ``"Type: message"`` (``"Type"`` when the message is empty) for an exception, even
    one whose ``__str__`` raises."""
    text = _safe_str(exc)
    return _valid_str(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
