"""Quickstart: the seed README's "Basic Usage" snippet, run as it is.

Run it from any directory: it writes one session (a start entry, two log entries, a close entry)
to ``log_YYYY-MM-DD.jsonl`` (today's UTC date) in the working directory.
"""

import logging
from datetime import UTC, datetime

from async_session_logger import SessionLogger

# The seed's snippet, verbatim: "fmt: off" keeps the formatter from requoting or rewrapping it.
# fmt: off
# Initialize the logger with file output
logger = SessionLogger(method='file')

# Start a session
logger.start_session("001")

# Log entries
logger.log_entry("001", "This is the first log entry.", logging.INFO)
logger.log_entry("001", "This is the second log entry.", logging.WARNING, {"custom_field": "custom_value"})  # noqa: E501

# Close the session
logger.close_session("001")

# Save logs
logger.save_logs()
# fmt: on

# The file sink names the file after the entries' UTC date.
print(f"Session 001 written to log_{datetime.now(UTC):%Y-%m-%d}.jsonl")
