"""The pytest plugin (entry point ``pytest11``): the ``session_log`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import SessionCapture, capture_sessions

__all__ = ["session_log"]


@pytest.fixture
def session_log() -> Iterator[SessionCapture]:
    """Capture every session entry logged during the test (see ``capture_sessions``)."""
    with capture_sessions() as capture:
        yield capture
