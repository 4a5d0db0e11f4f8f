"""Sinks: where entries go. Each does I/O only; the logger's lanes own policy and stats.

``MqttSink`` and ``SmtpSink`` import their client libraries in their own modules only.
"""

from ._base import Batch, PartialWriteError, Sink
from .custom import CustomHandler, CustomSink
from .file import FileSink
from .memory import MemorySink
from .stdout import StdoutSink

__all__ = [
    "Batch",
    "CustomHandler",
    "CustomSink",
    "FileSink",
    "MemorySink",
    "PartialWriteError",
    "Sink",
    "StdoutSink",
]
