"""`serve`'s live events: server-sent `session` and `entry` events as real loggers write."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from async_session_logger import SessionLogger

from .conftest import Served, write_story
from .test_api import _events, _get, _ids, _one_session, _wait

Serve = Callable[..., Served]


def _listen(served: Served, path: str) -> tuple[list[dict[str, Any]], threading.Event]:
    """Read ``path``'s events in a thread into a list; set the event to stop."""
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    threading.Thread(target=_events, args=(served, path, seen, stop), daemon=True).start()
    return seen, stop


def test_live_events_follow_a_growing_and_rotated_file(serve: Serve, tmp_path: Path) -> None:
    """Entries a real logger appends, and a new file after a rotation, reach an open stream."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_events, args=(served, "/api/events", seen, stop))
    reader.start()
    try:
        time.sleep(0.3)  # the stream is open
        with SessionLogger(method="file", path=log, dead_letter_path=None) as logger:
            logger.start_session("late-1", metadata={"n": 1})
            logger.log_entry("late-1", "appended", logging.INFO)
            logger.save_logs()
            _wait(lambda: any(e.get("session_id") == "late-1" for e in seen), "late-1")
            logger.close_session("late-1", "interrupted")
        _wait(
            lambda: any(
                e.get("session_id") == "late-1" and e.get("status") == "interrupted" for e in seen
            ),
            "late-1 closed",
        )
        os.rename(log, tmp_path / "app.jsonl.1")  # rotation: a new file at the path
        _one_session("after-rotation", "new file", method="file", path=log, dead_letter_path=None)
        _wait(lambda: any(e.get("session_id") == "after-rotation" for e in seen), "new file")
    finally:
        stop.set()
    assert "late-1" in _ids(_get(served, "/api/sessions", q="appended"))
    assert served.stop() == 0  # SIGTERM with a stream open: a clean, prompt exit
    reader.join(timeout=15)


def test_a_directory_picks_up_new_files(serve: Serve, tmp_path: Path) -> None:
    """A served directory lists the sessions of every log in it, and of files created later."""
    out = tmp_path / "collected"
    out.mkdir()
    write_story(out / "a.jsonl", sessions=2)
    served = serve(out)
    assert sorted(_ids(_get(served, "/api/sessions"))) == sorted(
        ["req-0", "req-1", "parent-1", "child-1"]
    )
    _one_session("from-b", "b", method="file", path=out / "b.jsonl", dead_letter_path=None)
    _wait(lambda: "from-b" in _ids(_get(served, "/api/sessions")), "from-b")


def test_entry_events_and_a_stream_for_one_session(serve: Serve, tmp_path: Path) -> None:
    """Each new entry comes as an `entry` event; `?session=ID` hears that session only."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log)
    every, stop_every = _listen(served, "/api/events")
    watched, stop_watched = _listen(served, "/api/events?session=nobody")
    time.sleep(0.3)  # both streams are open
    try:
        with SessionLogger(method="file", path=log, dead_letter_path=None) as logger:
            logger.start_session("other")
            logger.log_entry("other", "not for the watcher", logging.INFO)
            logger.close_session("other")
            logger.save_logs()
            _wait(lambda: any(e.get("session_id") == "other" for e in every), "other")
            logger.start_session("watched\u00e9")
            logger.log_entry("watched\u00e9", "<b>seen</b>", logging.WARNING, {"k": 1})
            logger.close_session("watched\u00e9", "error")
        # Wait for the close's own entry event: a poll sends the changed sessions' rows
        # first and their entries after, so the row's "error" status alone can come before
        # the entry events read in the same poll (seen once the writer batched the close
        # with the entry before it: linger).
        _wait(
            lambda: (
                any(e.get("status") == "error" for e in every)
                and any(
                    e["event"] == "entry" and e["entry"]["event"] == "session_close"
                    for e in every
                    if e.get("session_id") == "watched\u00e9"
                )
            ),
            "the watched session's close",
        )
    finally:
        stop_every.set()
    entries = [e for e in every if e["event"] == "entry"]
    mine = [e for e in entries if e["session_id"] == "watched\u00e9"]
    assert [e["entry"]["event"] for e in mine] == ["session_start", "log", "session_close"]
    assert mine[1]["run"] == 1
    assert mine[1]["entry"]["message"] == "<b>seen</b>"
    assert mine[1]["entry"]["custom_fields"] == {"k": 1}
    assert any(e["entry"].get("message") == "not for the watcher" for e in entries)
    # Nothing from another id reaches a stream opened for one (here an id nobody logs).
    stop_watched.set()
    assert watched == []
    assert "watched\u00e9" in _ids(_get(served, "/api/sessions", status="error"))


def test_the_stream_for_one_session_hears_it(serve: Serve, tmp_path: Path) -> None:
    """A stream opened with `?session=ID` gets that session's session and entry events."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log)
    weird = "job 7?&=\u00e9"
    watched, stop = _listen(served, "/api/events?session=" + quote(weird))
    time.sleep(0.3)
    try:
        _one_session("noise", "x", method="file", path=log, dead_letter_path=None)
        _one_session(weird, "done", method="file", path=log, dead_letter_path=None)
        _wait(
            lambda: any(e["event"] == "session" and e["status"] == "closed" for e in watched),
            "the watched session",
        )
    finally:
        stop.set()
    assert {e["session_id"] for e in watched} == {weird}
    assert {e["event"] for e in watched} == {"session", "entry"}
