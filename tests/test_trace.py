"""OpenTelemetry correlation: entries in a span carry its trace_id and span_id."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from async_session_logger import AsyncSessionLogger, SessionLogger, read_sessions
from async_session_logger.stdlib import install, uninstall

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def tracer() -> Iterator[trace.Tracer]:
    """A real SDK tracer (a private provider: the global one can be set only once)."""
    provider = TracerProvider()
    yield provider.get_tracer("tests")
    provider.shutdown()


def _ids(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_sync_entries_in_a_span_carry_its_ids(tmp_path: Path, tracer: trace.Tracer) -> None:
    """Start, log and close entries inside a span carry its ids; entries outside none."""
    path = tmp_path / "l.jsonl"
    with SessionLogger(path=str(path), dead_letter_path=None) as log:
        log.start_session("outside")
        log.log_entry("outside", "no span")
        log.close_session("outside")
        with tracer.start_as_current_span("job") as span:
            trace_id, span_id = _ids(span)
            with log.session("traced") as s:
                s.info("in the span")
                with tracer.start_as_current_span("child") as child:
                    s.info("in the child span")
                    child_ids = _ids(child)
    sessions = {s.session_id: s for s in read_sessions(path)}
    assert all("trace_id" not in e and "span_id" not in e for e in sessions["outside"].entries)
    traced = sessions["traced"]
    first, second = traced.entries
    start, close = traced.start, traced.close
    assert start is not None and close is not None
    for entry in (start, first, close):
        assert (entry["trace_id"], entry["span_id"]) == (trace_id, span_id)
    assert (second["trace_id"], second["span_id"]) == child_ids
    assert child_ids[0] == trace_id  # one trace
    assert HEX32.fullmatch(trace_id) and HEX16.fullmatch(span_id)


async def test_async_and_stdlib_entries_carry_ids(tmp_path: Path, tracer: trace.Tracer) -> None:
    """The async face and stdlib records through the bridge carry the ids at call time."""
    path = tmp_path / "l.jsonl"
    async with AsyncSessionLogger(path=str(path), dead_letter_path=None) as alog:
        handler = install(alog)
        try:
            async with alog.session("req") as s:
                with tracer.start_as_current_span("handler") as span:
                    ids = _ids(span)
                    await s.info("direct")
                    logging.getLogger("tests.trace").warning("through stdlib")
                await s.info("after the span")
        finally:
            uninstall(handler)
    (session,) = read_sessions(path)
    direct, bridged, after = (e for e in session.entries if e["event"] == "log")
    assert (direct["trace_id"], direct["span_id"]) == ids
    assert (bridged["trace_id"], bridged["span_id"]) == ids
    assert bridged["logger"] == "tests.trace"
    assert "trace_id" not in after


def test_unsampled_span_still_correlates(tmp_path: Path) -> None:
    """A valid but unsampled (non-recording) span's trace id is still written."""
    provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer = provider.get_tracer("tests")
    path = tmp_path / "l.jsonl"
    with (
        SessionLogger(path=str(path), dead_letter_path=None) as log,
        log.session("s") as s,
        tracer.start_as_current_span("off") as span,
    ):
        assert not span.is_recording()
        s.info("unsampled")
        ids = _ids(span)
    (session,) = read_sessions(path)
    entry = next(e for e in session.entries if e["event"] == "log")
    assert (entry["trace_id"], entry["span_id"]) == ids
