"""Turn the seed-style ``method=`` and keyword arguments into sink objects (no I/O)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ._errors import ConfigurationError
from .sinks import CustomSink, FileSink, Sink, StdoutSink

__all__ = ["METHODS", "build_sinks"]

METHODS = ("file", "stdout", "custom", "mqtt", "smtp")
_OPTION_KEYS = {"file", "stdout", "custom", "mqtt", "smtp", "path", "custom_handler"}

# method name -> (module, class) for the sinks whose client library is optional.
_OPTIONAL = {"mqtt": ("mqtt", "MqttSink", "aiomqtt"), "smtp": ("smtp", "SmtpSink", "aiosmtplib")}


def build_sinks(
    method: str | Sequence[str] | None,
    sinks: Sequence[Sink] | None,
    options: dict[str, Any],
) -> list[Sink]:
    """Return the sinks for ``method`` (a name or names) plus the ``sinks`` given as objects.

    Raises:
        ConfigurationError: unknown method or option, missing ``custom_handler``, duplicate names.
    """
    unknown = set(options) - _OPTION_KEYS
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(sorted(unknown))}; expected one of "
            f"{', '.join(sorted(_OPTION_KEYS))}, or sink objects in sinks=[...]"
        )
    if method is None:
        methods: list[str] = [] if sinks else ["file"]
    elif isinstance(method, str):
        methods = [method]
    else:
        methods = list(method)
    built: list[Sink] = []
    for name in methods:
        if name not in METHODS:
            raise ConfigurationError(
                f"unknown method {name!r}; expected one of {', '.join(METHODS)}"
            )
        built.append(_build_one(name, options))
    for sink in sinks or ():
        if not isinstance(sink, Sink):
            raise ConfigurationError(f"sinks must be Sink objects, got {sink!r}")
        built.append(sink)
    if not built:
        raise ConfigurationError("no sink configured: give method= or sinks=")
    names = [s.name for s in built]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigurationError(
            f"two sinks are named {', '.join(map(repr, dupes))}; give them distinct name="
        )
    return built


def _section(options: dict[str, Any], key: str) -> dict[str, Any]:
    section = options.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigurationError(f"{key}= must be a dict of {key} sink options")
    return dict(section)


def _build_one(name: str, options: dict[str, Any]) -> Sink:
    section = _section(options, name)
    try:
        if name == "file":
            if options.get("path") is not None:
                section.setdefault("path", options["path"])
            return FileSink(**section)
        if name == "stdout":
            return StdoutSink(**section)
        if name == "custom":
            handler = options.get("custom_handler") or section.pop("handler", None)
            if handler is None:
                raise ConfigurationError("method='custom' needs custom_handler=callable")
            return CustomSink(handler, **section)
        module_name, class_name, package = _OPTIONAL[name]
        try:
            module = importlib.import_module(f"async_session_logger.sinks.{module_name}")
        except ImportError as exc:
            raise ConfigurationError(
                f"method={name!r} needs the {class_name} sink and its client library "
                f"{package!r}: pip install 'async-session-logger[{name}]'"
            ) from exc
        sink: Sink = getattr(module, class_name)(**section)
        return sink
    except TypeError as exc:  # a misspelt sink keyword
        raise ConfigurationError(f"bad options for the {name} sink: {exc}") from exc
