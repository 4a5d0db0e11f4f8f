"""OpenTelemetry correlation: the current span's ``trace_id`` and ``span_id`` for an entry.

Never imports OpenTelemetry: the recorder calls :func:`trace_fields` only once the
application has imported ``opentelemetry.trace`` (no span can exist before), so a program
without it pays one ``sys.modules`` lookup per entry.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson

__all__ = ["trace_fields"]


def trace_fields(
    otel_trace: ModuleType, extra: dict[str, Any] | str | None
) -> dict[str, Any] | str | None:
    """Return ``extra`` plus ``trace_id``/``span_id`` when a valid span is current.

    ``extra`` may be a dict or the JSON text of one (an ``Origin``'s); with ids added, the
    result is a dict.

    The names and the lower-case hex forms are those of the OpenTelemetry log data model.
    A valid but unsampled span counts too (as in OpenTelemetry's own ``LoggingHandler``): its
    trace id still joins the entry to the other services' logs of the same request.
    """
    try:
        context = otel_trace.get_current_span().get_span_context()
        if not context.is_valid:
            return extra
        ids = {
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
        }
    except Exception:  # an SDK that misbehaves never breaks a log call
        return extra
    if extra is None:
        return ids
    out: dict[str, Any] = orjson.loads(extra) if isinstance(extra, str) else dict(extra)
    out.update(ids)
    return out
