"""Standard output: the seed README's "Standard Output" snippet, run as it is.

Prints the session's three entries (start, log, close) as JSON lines on standard output.
"""

import logging

from async_session_logger import SessionLogger

# The seed's snippet, verbatim: "fmt: off" keeps the formatter from requoting it.
# fmt: off
# Initialize the logger with standard output
logger = SessionLogger(method='stdout')

# Start a session
logger.start_session("001")

# Log entries
logger.log_entry("001", "This is a standard output log entry.", logging.INFO)

# Close the session
logger.close_session("001")

# Save logs
logger.save_logs()
# fmt: on
