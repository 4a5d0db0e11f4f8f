"""Shared helpers of the store tests: a real log written to a file and a store at once."""

from __future__ import annotations

import logging
from pathlib import Path

from async_session_logger import SessionLogger
from async_session_logger.sinks import FileSink
from async_session_logger.sinks.sqlite import SqliteSink


def write_story(log: Path, db: Path) -> None:
    """Log a varied set of sessions through a real logger into a file and a store."""
    with SessionLogger(
        sinks=[FileSink(log), SqliteSink(db)],
        buffer_level="DEBUG",
        dead_letter_path=log.parent / "dead.jsonl",
    ) as logger:
        with logger.session("req-1", metadata={"user_id": "u1", "host": "h1"}) as s:
            s.info("hello", custom_fields={"path": "/"})
            s.debug("held, then discarded")
            s.annotate(user="u1", items=3)
            child = logger.start_session("job-1", parent_id=s.token())
            logger.log_entry("job-1", "child work", logging.WARNING)
            logger.close_session("job-1")
            assert child is None or child is not None
        with logger.session("req-2", metadata={"user_id": "u2", "nested": {"k": "v"}}) as s:
            s.debug("detail written because the session fails")
            s.error("boom")
        logger.start_session("req-3", metadata={"user_id": "u1", "attempt": 3})
        logger.log_entry("req-3", "first run", logging.INFO)
        logger.close_session("req-3", "interrupted")
        # The same id again: a second run.
        logger.start_session("req-3", metadata={"user_id": "u1", "attempt": 4})
        logger.log_entry("req-3", "second run", logging.INFO)
        logger.close_session("req-3")
        logger.start_session("open-1", metadata={"user_id": "x' OR 1=1 --"})
        logger.log_entry("open-1", "never closed", logging.ERROR)
        logger.save_logs()
