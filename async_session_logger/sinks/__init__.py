"""Sinks: where entries go. Each does I/O only; the logger's lanes own policy and stats.

``MqttSink`` and ``SmtpSink`` are imported on first use, so that their client libraries
(aiomqtt, aiosmtplib: the ``[mqtt]`` and ``[smtp]`` extras) load only when used; so is
``SqliteSink`` (stdlib ``sqlite3``).
"""

from typing import TYPE_CHECKING, Any

from ._base import Batch, PartialWriteError, Sink
from .custom import CustomHandler, CustomSink
from .file import FileSink
from .memory import MemorySink
from .stdout import StdoutSink

if TYPE_CHECKING:
    from .mqtt import MqttSink
    from .smtp import SmtpSink
    from .sqlite import SqliteSink

__all__ = [
    "Batch",
    "CustomHandler",
    "CustomSink",
    "FileSink",
    "MemorySink",
    "MqttSink",
    "PartialWriteError",
    "Sink",
    "SmtpSink",
    "SqliteSink",
    "StdoutSink",
]

_LAZY = {"MqttSink": "mqtt", "SmtpSink": "smtp", "SqliteSink": "sqlite"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
