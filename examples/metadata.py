"""Sessions with metadata, sessions as ``with`` blocks, and reading sessions back.

The start entry of a session carries its metadata (values of secret-looking keys are masked);
the close entry its duration, entry count and status. ``read_sessions`` rebuilds the sessions
from the JSON Lines file.
"""

import json
import logging
import tempfile
from pathlib import Path

from async_session_logger import SessionLogger, read_sessions

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "sessions.jsonl"
    with SessionLogger(method="file", path=path) as logger:
        # Metadata given to start_session: the api_token value is written as "***".
        logger.start_session(
            "001", metadata={"user_id": "u-17", "client": "ios/5.2", "api_token": "s3cr3t"}
        )
        logger.log_entry("001", "Checkout started", logging.INFO, {"cart_items": 3})
        logger.log_entry("001", "Payment declined", logging.ERROR, {"code": "card_declined"})
        logger.close_session("001", status="error")  # "closed" (default), "error", "interrupted"

        # A ``with`` block starts the session and closes it on exit (status "closed").
        with logger.session("002", metadata={"user_id": "u-42", "client": "web"}) as s:
            s.info("Report requested", custom_fields={"report": "monthly"})
            s.warning("Report is large", custom_fields={"rows": 120_000})

        # A block that raises closes its session with status "error", after an ERROR entry
        # that carries the traceback.
        try:
            with logger.session("003", metadata={"user_id": "u-7", "client": "cli"}) as s:
                s.info("Import started")
                raise ValueError("bad CSV header")
        except ValueError:
            pass
    # Leaving the outer ``with`` closed the logger: every entry is in the file.

    for session in read_sessions(path):
        seconds = session.duration_s  # None while a session has no close entry
        duration = "-" if seconds is None else f"{seconds * 1000:.2f} ms"
        print(
            f"session {session.session_id}: status={session.status} "
            f"entries={len(session.entries)} duration={duration}"
        )
        print(f"  metadata: {json.dumps(session.metadata)}")
        for entry in session.entries:
            fields = entry.get("custom_fields")
            suffix = f" {json.dumps(fields)}" if fields else ""
            if "exception" in entry:
                suffix += " (traceback in the entry's 'exception' key)"
            print(f"  {entry['level']:<8} {entry['message']}{suffix}")
