"""Custom formatter: add fields to every entry (lifecycle entries included) before it is written.

``custom_formatter(entry)`` gets each entry as a dict and returns the dict to write. It runs on
the logger's writer, off your code's path: keep it fast and free of I/O.
"""

import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

from async_session_logger import SessionLogger


def custom_formatter(entry: dict[str, Any]) -> dict[str, Any]:
    """Stamp each entry with the application's name and this machine's host name."""
    entry["app"] = "demo"
    entry["host"] = socket.gethostname()
    return entry


with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "formatted.jsonl"
    with SessionLogger(method="file", path=path, custom_formatter=custom_formatter) as logger:
        logger.start_session("001")
        logger.log_entry("001", "Formatted entry.", logging.INFO, {"custom_field": "custom_value"})
        logger.close_session("001")
    # Leaving the ``with`` block closed the logger: every entry is in the file.
    print(path.read_text(encoding="utf-8"), end="")
