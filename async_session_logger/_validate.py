"""Call-site checks: session ids, levels and field dicts (I/O-free, shared by both faces)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from ._errors import InvalidFieldsError, InvalidLevelError, InvalidSessionIdError

__all__ = ["LEVELS_BY_NAME", "check_fields", "check_session_id", "level_name", "resolve_level"]

MAX_SESSION_ID_LENGTH = 128

# Control characters (C0, DEL, C1), the Unicode line/paragraph separators and lone surrogates
# (not encodable as UTF-8: no file name or topic can hold them), plus the characters that are
# special in paths and MQTT topics. Any id may reach a file name or a topic later.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff/\\+#]")


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a safe identifier.

    Raises:
        InvalidSessionIdError: not a str, empty, longer than 128 chars, ``.``/``..``, or holding a
            control character or one of ``/ \\ + #``.
    """
    if not isinstance(session_id, str):
        raise InvalidSessionIdError(
            f"session id must be a str, not {type(session_id).__name__}", session_id=session_id
        )
    if not session_id:
        raise InvalidSessionIdError("session id must not be empty", session_id=session_id)
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionIdError(
            f"session id is {len(session_id)} characters long, the limit is "
            f"{MAX_SESSION_ID_LENGTH}",
            session_id=session_id[:32] + "...",
        )
    if session_id in (".", ".."):
        raise InvalidSessionIdError(f"session id must not be {session_id!r}", session_id=session_id)
    bad = _FORBIDDEN.search(session_id)
    if bad is not None:
        raise InvalidSessionIdError(
            f"session id {session_id!r} contains the forbidden character {bad.group()!r} "
            "(control characters, lone surrogates and / \\ + # are refused: ids reach file "
            "names and topics)",
            session_id=session_id,
        )
    return session_id


# The standard names, as written: the verbs look a str level up here before resolve_level().
LEVELS_BY_NAME: dict[str, int] = {
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "NOTSET": logging.NOTSET,
}
_LEVEL_NAMES: dict[int, str] = {  # shared with _entry: the writer reads it directly
    logging.CRITICAL: "CRITICAL",
    logging.ERROR: "ERROR",
    logging.WARNING: "WARNING",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
    logging.NOTSET: "NOTSET",
}


def resolve_level(level: object) -> int:
    """Return the numeric level for a stdlib int level or a level name (case-insensitive).

    Raises:
        InvalidLevelError: a bool, a negative int, an unknown name, or another type.
    """
    if type(level) is int:
        if level >= 0:
            return level
        raise InvalidLevelError(f"level must be >= 0, got {level}")
    if isinstance(level, str):
        found = LEVELS_BY_NAME.get(level)  # "INFO" as written: no upper()
        if found is not None:
            return found
        name = level.upper()
        found = LEVELS_BY_NAME.get(name)
        if found is None:
            # Levels registered with logging.addLevelName() are accepted too.
            registered = logging.getLevelNamesMapping().get(name)
            if registered is None:
                raise InvalidLevelError(
                    f"unknown level name {level!r}; use one of "
                    "DEBUG, INFO, WARNING, ERROR, CRITICAL or an int"
                )
            found = registered
        return found
    if isinstance(level, int) and not isinstance(level, bool) and int(level) >= 0:
        return int(level)  # IntEnum and other int subclasses
    raise InvalidLevelError(f"level must be an int or a level name, not {type(level).__name__}")


def level_name(levelno: int) -> str:
    """Return the stdlib-style name of ``levelno`` (``"Level 25"`` when unregistered)."""
    name = _LEVEL_NAMES.get(levelno)
    if name is None:
        name = logging.getLevelName(levelno)
        if not name.startswith("Level "):  # not cached: addLevelName() may register it later
            _LEVEL_NAMES[levelno] = name
    return name


def check_fields(fields: object, what: str) -> dict[str, Any] | None:
    """Return a shallow copy of ``fields`` (the call-time snapshot), or None.

    Raises:
        InvalidFieldsError: ``fields`` is neither None nor a mapping.
    """
    if fields is None:
        return None
    if isinstance(fields, dict):
        return dict(fields)
    if isinstance(fields, Mapping):
        return dict(fields)
    raise InvalidFieldsError(f"{what} must be a dict, not {type(fields).__name__}")
