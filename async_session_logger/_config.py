"""Turn the seed-style ``method=`` and keyword arguments into sink objects (no I/O)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ._engine import Engine
from ._entry import DEFAULT_MASK_KEYS, EntryBuilder, Formatter, Masker
from ._errors import ConfigurationError
from ._intake import OVERFLOW_POLICIES, Overflow
from ._report import ErrorHandler
from .sinks import CustomSink, FileSink, Sink, StdoutSink

__all__ = ["DEFAULT_DEAD_LETTER_PATH", "METHODS", "build_engine", "build_sinks"]

DEFAULT_DEAD_LETTER_PATH: Final = "dead_letters.jsonl"

METHODS = ("file", "stdout", "custom", "mqtt", "smtp", "sqlite")
_OPTION_KEYS = {"file", "stdout", "custom", "mqtt", "smtp", "sqlite", "path", "custom_handler"}
DEFAULT_SQLITE_PATH = "sessions.db"

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
        built.append(_build_one(name, options, path_is_files="file" in methods))
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


def _build_one(name: str, options: dict[str, Any], *, path_is_files: bool) -> Sink:
    section = _section(options, name)
    try:
        if name == "sqlite":
            # path= names the SQLite file when no file sink claims it; else sqlite={"path": ...}.
            if options.get("path") is not None and not path_is_files:
                section.setdefault("path", options["path"])
            section.setdefault("path", DEFAULT_SQLITE_PATH)
            from .sinks.sqlite import SqliteSink  # stdlib sqlite3: imported only when used

            return SqliteSink(**section)
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


# The queue's default bound. With overflow="block" a full queue costs the caller a short
# wait (the writer frees room in a batch's time), and a small queue keeps memory low: 2,000
# queued entries are ~0.5 MB, 10,000 were ~2.5 MB of a script's peak RSS, with no throughput
# gained (benchmarks/throughput.py), and the 10,000-task storm ran faster with it. With a drop
# policy a full queue costs entries: the larger default absorbs a burst, e.g. the ~5 ms a
# thread logs flat out before the writer's thread gets the GIL.
DEFAULT_MAX_QUEUE: Final = 2_000
DEFAULT_MAX_QUEUE_DROPPING: Final = 10_000


def build_engine(
    method: str | Sequence[str] | None,
    custom_formatter: Formatter | None,
    *,
    sinks: Sequence[Sink] | None = None,
    max_queue: int | None = None,
    overflow: Overflow = "block",
    batch_size: int = 1_000,
    linger: float = 0.002,
    mask_keys: Iterable[str] | None = DEFAULT_MASK_KEYS,
    on_error: ErrorHandler | None = None,
    dead_letter_path: str | os.PathLike[str] | None = DEFAULT_DEAD_LETTER_PATH,
    close_timeout: float = 10.0,
    max_message_chars: int | None = 1_000_000,
    buffer_level: int | str | None = None,
    buffer_max: int = 1_000,
    idle_timeout: float | None = None,
    max_open_sessions: int | None = None,
    **options: Any,
) -> Engine:
    """Check the options both faces take and build their engine (no I/O).

    Raises:
        ConfigurationError: an invalid option.
    """
    if custom_formatter is not None and not callable(custom_formatter):
        raise ConfigurationError("custom_formatter must be callable")
    if max_queue is None:
        max_queue = DEFAULT_MAX_QUEUE if overflow == "block" else DEFAULT_MAX_QUEUE_DROPPING
    if max_queue < 1 or batch_size < 1:
        raise ConfigurationError("max_queue and batch_size must be >= 1")
    if not 0 <= linger <= 1:
        raise ConfigurationError("linger must be between 0 and 1 second")
    if close_timeout <= 0:
        raise ConfigurationError("close_timeout must be > 0")
    if overflow not in OVERFLOW_POLICIES:
        raise ConfigurationError(
            f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, got {overflow!r}"
        )
    return Engine(
        build_sinks(method, sinks, options),
        EntryBuilder(custom_formatter, Masker(mask_keys)),
        max_queue=max_queue,
        overflow=overflow,
        batch_size=batch_size,
        linger=linger,
        dead_letter_path=dead_letter_path,
        on_error=on_error,
        close_timeout=close_timeout,
        sessions={
            "max_message_chars": max_message_chars,
            "buffer_level": buffer_level,
            "buffer_max": buffer_max,
            "idle_timeout": idle_timeout,
            "max_open_sessions": max_open_sessions,
        },
    )
