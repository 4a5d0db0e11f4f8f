"""Call-site checks: session ids, levels and field dicts."""

from __future__ import annotations

import logging

import pytest

from async_session_logger import InvalidLevelError, InvalidSessionIdError
from async_session_logger._validate import check_fields, check_session_id, level_name, resolve_level


@pytest.mark.parametrize(
    "bad",
    ["\u2028", "a\x85b", "x\x1by", "/", "\\", "#", "+", ".", "..", "", "a" * 129, "\ud800x"],
)
def test_refused_ids(bad: str) -> None:
    """Control characters (C0, C1, Unicode separators), lone surrogates (no file name or topic
    can hold one), path and topic specials are refused."""
    with pytest.raises(InvalidSessionIdError) as caught:
        check_session_id(bad)
    assert caught.value.session_id is not None


def test_error_message_shows_the_character() -> None:
    """The error names the offending character so the caller can fix the id."""
    with pytest.raises(InvalidSessionIdError, match=r"forbidden character '\\r'"):
        check_session_id("a\rb")


def test_long_id_error_is_truncated() -> None:
    """A 10 kB id is not echoed whole in the error."""
    with pytest.raises(InvalidSessionIdError) as caught:
        check_session_id("x" * 10_000)
    assert len(str(caught.value)) < 200


def test_registered_custom_level_names() -> None:
    """Names registered with logging.addLevelName resolve, and ints map back to them."""
    logging.addLevelName(25, "NOTICE")
    assert resolve_level("notice") == 25
    assert level_name(25) == "NOTICE"


def test_int_enum_levels() -> None:
    """IntEnum levels are accepted as their int value; bool is refused."""
    import enum

    class Lvl(enum.IntEnum):
        HIGH = 45

    assert resolve_level(Lvl.HIGH) == 45
    with pytest.raises(InvalidLevelError):
        resolve_level(False)


def test_check_fields_copies() -> None:
    """check_fields returns a shallow copy (the call-time snapshot)."""
    original = {"a": 1}
    copy = check_fields(original, "custom_fields")
    assert copy == original and copy is not original
    assert check_fields(None, "metadata") is None
