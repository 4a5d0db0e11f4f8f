"""Reading logs back: read_entries streams entries, read_sessions groups them into sessions."""

from __future__ import annotations

import gzip
import json
import random
import re
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from async_session_logger._errors import SessionLoggerError
from async_session_logger._reader import (
    CorruptLogError,
    ReaderWarning,
    Session,
    SessionBuilder,
    SummaryBuilder,
    entry_problem,
    parse_timestamp,
    read_entries,
    read_sessions,
)

DAY = "2026-11-24T06:23"


def stamp(second: int, micro: int = 0) -> str:
    """Return a schema-v1 timestamp within one fixed minute."""
    return f"{DAY}:{second:02d}.{micro:06d}Z"


def start(sid: str, *, second: int = 0, **metadata: Any) -> dict[str, Any]:
    """Return a session_start entry."""
    return {
        "timestamp": stamp(second),
        "session_id": sid,
        "seq": 0,
        "event": "session_start",
        "level": "INFO",
        "levelno": 20,
        "message": "Session started",
        "metadata": metadata,
    }


def log(
    sid: str, seq: int, message: str = "", *, levelno: int = 20, second: int = 1
) -> dict[str, Any]:
    """Return a log entry."""
    return {
        "timestamp": stamp(second, seq),
        "session_id": sid,
        "seq": seq,
        "event": "log",
        "level": {20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(levelno, "DEBUG"),
        "levelno": levelno,
        "message": message or f"{sid} #{seq}",
    }


def close(
    sid: str, seq: int, *, status: str = "closed", duration: float = 1.5, second: int = 2
) -> dict[str, Any]:
    """Return a session_close entry."""
    return {
        "timestamp": stamp(second),
        "session_id": sid,
        "seq": seq,
        "event": "session_close",
        "level": "ERROR" if status == "error" else "INFO",
        "levelno": 40 if status == "error" else 20,
        "message": "Session closed",
        "duration_s": duration,
        "entries": seq - 1,
        "status": status,
    }


def child(sid: str, parent: Any, *, second: int = 0) -> dict[str, Any]:
    """Return the start entry of a child session (``parent`` as the file holds it)."""
    return {**start(sid, second=second), "parent_session_id": parent}


def gap(sid: str, seq: int, dropped: int) -> dict[str, Any]:
    """Return a gap entry."""
    return {
        "timestamp": stamp(1, seq),
        "session_id": sid,
        "seq": seq,
        "event": "gap",
        "level": "WARNING",
        "levelno": 30,
        "message": f"{dropped} entries dropped",
        "dropped": dropped,
    }


def encode(entries: Iterable[dict[str, Any]]) -> bytes:
    """Return entries as JSON Lines bytes, each line ending with LF."""
    return b"".join(json.dumps(e).encode() + b"\n" for e in entries)


def write(path: Path, entries: Iterable[dict[str, Any]], tail: bytes = b"") -> Path:
    """Write entries as JSON Lines (then ``tail`` verbatim) with plain open()."""
    with open(path, "wb") as fh:
        fh.write(encode(entries) + tail)
    return path


def write_gz(path: Path, entries: Iterable[dict[str, Any]]) -> Path:
    """Write entries as gzip-compressed JSON Lines."""
    with gzip.open(path, "wb") as fh:
        fh.write(encode(entries))
    return path


def seqs(session: Session) -> list[int]:
    """Return the seqs of a session's entries, in list order."""
    return [e["seq"] for e in session.entries]


def test_round_trip_of_interleaved_sessions(tmp_path: Path) -> None:
    """Entries come back exactly as written; sessions group them in order of first appearance."""
    written = [
        start("a", user="ann"),
        start("b", second=1, user="bob"),
        log("a", 1, "a one"),
        log("b", 1, "b one"),
        {**log("a", 2, "a two"), "custom_fields": {"k": [1, 2]}, "host": "web-1"},
        close("a", 3, duration=2.25),
        log("b", 2, "b two", levelno=40),
        start("c", second=3),
    ]
    path = write(tmp_path / "log.jsonl", written)

    assert list(read_entries(path)) == written

    a, b, c = read_sessions(str(path))
    assert [s.session_id for s in (a, b, c)] == ["a", "b", "c"]
    assert a.metadata == {"user": "ann"}
    assert a.start == written[0]
    assert [e["message"] for e in a.entries] == ["a one", "a two"]
    assert a.entries[1]["custom_fields"] == {"k": [1, 2]}
    assert a.entries[1]["host"] == "web-1"  # a formatter's extra key survives
    assert a.close == written[5]
    assert (a.status, a.duration_s, a.missing_seqs, a.duplicates, a.errors) == (
        "closed",
        2.25,
        [],
        0,
        0,
    )
    assert b.metadata == {"user": "bob"}
    assert [e["message"] for e in b.entries] == ["b one", "b two"]
    assert (b.status, b.close, b.duration_s, b.errors) == ("open", None, None, 1)
    assert c.entries == []
    assert c.metadata == {}
    assert c.missing_seqs == []


def test_read_entries_reads_files_in_the_order_given(tmp_path: Path) -> None:
    """Entries of several files come file by file, each file in line order."""
    first = write(tmp_path / "1.jsonl", [log("a", 2), log("a", 1)])
    second = write(tmp_path / "2.jsonl", [log("b", 1)])

    got = [(e["session_id"], e["seq"]) for e in read_entries(second, first)]

    assert got == [("b", 1), ("a", 2), ("a", 1)]


def test_read_entries_streams_before_reaching_a_corrupt_line(tmp_path: Path) -> None:
    """Entries before a corrupt line are yielded before the strict error is raised."""
    path = write(tmp_path / "log.jsonl", [start("a"), log("a", 1)], tail=b"{oops\n")

    it = read_entries(path, strict=True)

    assert next(it)["seq"] == 0
    assert next(it)["seq"] == 1
    with pytest.raises(CorruptLogError):
        next(it)


def test_torn_last_line_is_skipped_silently(tmp_path: Path) -> None:
    """A last line without LF that is not valid JSON is dropped with no warning."""
    path = write(tmp_path / "log.jsonl", [start("a"), log("a", 1)], tail=b'{"session_id": "a", "se')

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = list(read_entries(path, strict=True))
        sessions = read_sessions(path)

    assert [e["seq"] for e in entries] == [0, 1]
    assert len(sessions) == 1
    assert seqs(sessions[0]) == [1]


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    """A valid last line that merely lacks LF is an entry, not a torn write."""
    path = write(tmp_path / "log.jsonl", [start("a")], tail=json.dumps(log("a", 1)).encode())

    assert [e["seq"] for e in read_entries(path, strict=True)] == [0, 1]


def test_unterminated_invalid_line_in_the_middle_is_corrupt(tmp_path: Path) -> None:
    """A torn fragment followed by more lines is corrupt, not a silently skipped tail."""
    path = write(tmp_path / "log.jsonl", [start("a")], tail=b'{"sess\n' + encode([log("a", 1)]))

    with pytest.warns(ReaderWarning, match=r":2: not valid JSON"):
        entries = list(read_entries(path))

    assert [e["seq"] for e in entries] == [0, 1]


def test_corrupt_middle_line_warns_with_path_and_line_number(tmp_path: Path) -> None:
    """A corrupt line is skipped with a ReaderWarning naming path and line; the rest is read."""
    path = write(tmp_path / "log.jsonl", [start("a")], tail=b"not json\n" + encode([log("a", 1)]))

    with pytest.warns(ReaderWarning) as record:
        entries = list(read_entries(path))

    assert [e["seq"] for e in entries] == [0, 1]
    assert len(record) == 1
    assert str(record[0].message).startswith(f"{path}:2: not valid JSON")
    # The warning points at the code that iterates, not into the library.
    assert record[0].filename == __file__


def test_read_sessions_warning_points_at_its_caller(tmp_path: Path) -> None:
    """Warnings issued while read_sessions reads name the caller's file."""
    path = write(tmp_path / "log.jsonl", [start("a")], tail=b"[]\n")

    with pytest.warns(ReaderWarning, match=re.escape(f"{path}:2: ")) as record:
        sessions = read_sessions(path)

    assert record[0].filename == __file__
    assert [s.session_id for s in sessions] == ["a"]


def test_corrupt_middle_line_raises_when_strict(tmp_path: Path) -> None:
    """With strict=True a corrupt line raises CorruptLogError carrying path and line number."""
    path = write(
        tmp_path / "log.jsonl", [start("a"), log("a", 1)], tail=b"{]\n" + encode([log("a", 2)])
    )

    with pytest.raises(CorruptLogError) as info:
        list(read_entries(path, strict=True))
    with pytest.raises(CorruptLogError, match=re.escape(f"{path}:3: ")):
        read_sessions(path, strict=True)

    assert info.value.path == str(path)
    assert info.value.lineno == 3
    assert str(info.value).startswith(f"{path}:3: not valid JSON")
    assert isinstance(info.value, SessionLoggerError)
    assert isinstance(info.value, ValueError)


def test_non_object_json_lines_are_corrupt(tmp_path: Path) -> None:
    """Valid JSON that is not an object (array, string, number, null) is a corrupt line."""
    path = write(
        tmp_path / "log.jsonl", [], tail=b'[1, 2]\n"text"\n42\nnull\n' + encode([start("a")])
    )

    with pytest.warns(ReaderWarning) as record:
        entries = list(read_entries(path))
    with pytest.raises(CorruptLogError) as info:
        list(read_entries(path, strict=True))

    assert entries == [start("a")]
    assert [str(w.message) for w in record] == [
        f"{path}:1: not a JSON object (array)",
        f"{path}:2: not a JSON object (string)",
        f"{path}:3: not a JSON object (number)",
        f"{path}:4: not a JSON object (null)",
    ]
    assert info.value.lineno == 1


def test_objects_without_required_keys_or_with_wrong_types_are_corrupt(tmp_path: Path) -> None:
    """Objects lacking session_id/seq/event, or with ill-typed ones, are corrupt lines."""
    bad: list[dict[str, Any]] = [
        {"session_id": "a", "seq": 1},
        {"seq": 1, "event": "log"},
        {"session_id": "a", "seq": "1", "event": "log"},
        {"session_id": "a", "seq": -1, "event": "log"},
        {"session_id": "a", "seq": True, "event": "log"},
        {"session_id": 7, "seq": 1, "event": "log"},
        {"session_id": "a", "seq": 1, "event": None},
    ]
    path = write(tmp_path / "log.jsonl", [*bad, log("a", 1)])

    with pytest.warns(ReaderWarning) as record:
        entries = list(read_entries(path))

    assert entries == [log("a", 1)]
    assert [str(w.message).removeprefix(f"{path}:") for w in record] == [
        "1: entry lacks event",
        "2: entry lacks session_id",
        "3: seq is not a non-negative integer",
        "4: seq is not a non-negative integer",
        "5: seq is not a non-negative integer",
        "6: session_id is not a string",
        "7: event is not a string",
    ]


def test_missing_file_raises_file_not_found_at_call_time(tmp_path: Path) -> None:
    """A missing path raises the ordinary FileNotFoundError before anything is read."""
    present = write(tmp_path / "log.jsonl", [start("a")])
    missing = tmp_path / "nope.jsonl"

    with pytest.raises(FileNotFoundError) as info:
        read_entries(present, missing)  # not even iterated
    with pytest.raises(FileNotFoundError):
        read_sessions(present, missing)

    assert info.value.filename == str(missing)
    assert not isinstance(info.value, SessionLoggerError)


def test_gzip_file_is_read_transparently(tmp_path: Path) -> None:
    """A .gz file is decompressed on the fly and reads like the plain file."""
    written = [start("a", user="ann"), log("a", 1), close("a", 2)]
    path = write_gz(tmp_path / "log.jsonl.gz", written)

    assert list(read_entries(path)) == written
    (session,) = read_sessions(path)
    assert (session.metadata, seqs(session), session.status) == ({"user": "ann"}, [1], "closed")


def test_truncated_gzip_warns_and_keeps_what_was_decompressed(tmp_path: Path) -> None:
    """A truncated .gz yields its complete leading lines, then warns (or raises when strict)."""
    rng = random.Random(7)
    written = [log("a", i, f"{rng.getrandbits(128):032x}") for i in range(1, 2001)]
    data = gzip.compress(encode(written))
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])

    with pytest.warns(ReaderWarning, match="cannot decompress") as record:
        entries = list(read_entries(path))
    with pytest.raises(CorruptLogError, match="cannot decompress") as info:
        list(read_entries(path, strict=True))

    assert 0 < len(entries) < len(written)
    assert entries == written[: len(entries)]
    assert str(record[0].message).startswith(f"{path}:{len(entries) + 1}: ")
    assert info.value.lineno == len(entries) + 1


def test_file_named_gz_that_is_not_gzip_is_corrupt(tmp_path: Path) -> None:
    """A .gz name on plain data raises CorruptLogError at line 1 when strict."""
    path = write(tmp_path / "log.jsonl.gz", [start("a")])

    with pytest.raises(CorruptLogError) as info:
        list(read_entries(path, strict=True))
    with pytest.warns(ReaderWarning):
        assert list(read_entries(path)) == []

    assert (info.value.path, info.value.lineno) == (str(path), 1)


def test_session_spanning_two_files_is_one_session(tmp_path: Path) -> None:
    """A session rotated across files (one of them gzip) is reassembled whole."""
    older = write_gz(
        tmp_path / "log.1.jsonl.gz", [start("a", user="ann"), log("a", 1), log("a", 2)]
    )
    newer = write(tmp_path / "log.jsonl", [log("a", 3), close("a", 4)])

    (session,) = read_sessions(older, newer)

    assert session.start == start("a", user="ann")
    assert session.metadata == {"user": "ann"}
    assert seqs(session) == [1, 2, 3]
    assert session.close == close("a", 4)
    assert (session.status, session.missing_seqs, session.duplicates) == ("closed", [], 0)


def test_files_given_newest_first_still_form_one_session(tmp_path: Path) -> None:
    """A start read after the session's later entries joins them rather than starting anew."""
    older = write(tmp_path / "log.1.jsonl", [start("a", user="ann"), log("a", 1)])
    newer = write(tmp_path / "log.jsonl", [log("a", 2), close("a", 3)])

    (session,) = read_sessions(newer, older)

    assert session.metadata == {"user": "ann"}
    assert session.start is not None
    assert seqs(session) == [1, 2]
    assert session.status == "closed"


def test_session_without_start_entry(tmp_path: Path) -> None:
    """Entries whose start was rotated away still form a session, with seqs 0.. missing."""
    path = write(tmp_path / "log.jsonl", [log("a", 3), log("a", 4), close("a", 5)])

    (session,) = read_sessions(path)

    assert (session.start, session.metadata, session.started_at) == (None, {}, None)
    assert seqs(session) == [3, 4]
    assert session.missing_seqs == [0, 1, 2]
    assert session.status == "closed"


def test_duplicates_are_dropped_keeping_the_first_and_counted(tmp_path: Path) -> None:
    """Repeated (session_id, seq) entries are kept once, the first read, and counted."""
    redelivered = {**log("a", 1), "message": "second copy"}
    path = write(
        tmp_path / "log.jsonl",
        [
            start("a"),
            log("a", 1, "first copy"),
            start("a"),  # an identical start is a redelivery, not a reused id
            log("a", 2),
            redelivered,
            log("a", 2),
            close("a", 3),
            close("a", 3),
        ],
    )

    (session,) = read_sessions(path)

    assert seqs(session) == [1, 2]
    assert session.entries[0]["message"] == "first copy"
    assert session.duplicates == 4
    assert session.status == "closed"


def test_duplicates_across_files_are_counted(tmp_path: Path) -> None:
    """The same entries delivered into two files count as duplicates of one session."""
    written = [start("a"), log("a", 1), log("a", 2)]
    first = write(tmp_path / "1.jsonl", written)
    second = write(tmp_path / "2.jsonl", [*written[1:], close("a", 3)])

    (session,) = read_sessions(first, second)

    assert (seqs(session), session.duplicates, session.status) == ([1, 2], 2, "closed")


def test_reused_session_id_gives_two_sessions(tmp_path: Path) -> None:
    """A different session_start for an id that already has one begins a new Session."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("a", run=1),
            log("a", 1, "run 1"),
            close("a", 2),
            start("b", second=5),
            start("a", second=10, run=2),
            log("a", 1, "run 2", second=11),
            log("a", 1, "run 1"),  # a late redelivery of run 1's entry
        ],
    )

    first, b, second = read_sessions(path)

    assert [s.session_id for s in (first, b, second)] == ["a", "b", "a"]
    assert (first.metadata, second.metadata) == ({"run": 1}, {"run": 2})
    assert [e["message"] for e in first.entries] == ["run 1"]
    assert [e["message"] for e in second.entries] == ["run 2"]
    assert (first.status, second.status) == ("closed", "open")
    assert (first.duplicates, second.duplicates) == (1, 0)
    assert second.started_at == datetime(2026, 11, 24, 6, 23, 10, tzinfo=UTC)


def test_reused_id_after_a_start_less_earlier_run(tmp_path: Path) -> None:
    """A start later than a start-less session's entries begins a new Session (reused id)."""
    path = write(
        tmp_path / "log.jsonl",
        [
            log("a", 5, second=1),
            close("a", 6, second=2),
            start("a", second=9),
            log("a", 1, second=9),
        ],
    )

    earlier, later = read_sessions(path)

    assert (earlier.start, seqs(earlier), earlier.status) == (None, [5], "closed")
    assert (later.start, seqs(later), later.status) == (start("a", second=9), [1], "open")


def test_out_of_order_seqs_are_sorted(tmp_path: Path) -> None:
    """Session entries are ordered by seq, whatever order the file holds them in."""
    written = [log("a", 3), start("a"), log("a", 1), close("a", 4), log("a", 2)]
    path = write(tmp_path / "log.jsonl", written)

    (session,) = read_sessions(path)

    assert [e["seq"] for e in read_entries(path)] == [3, 0, 1, 4, 2]  # file order kept
    assert seqs(session) == [1, 2, 3]
    assert session.start == start("a")
    assert session.close == close("a", 4)


def test_missing_seqs_list_every_absent_seq(tmp_path: Path) -> None:
    """missing_seqs names each seq below the highest one seen that was not read."""
    path = write(
        tmp_path / "log.jsonl",
        [start("a"), log("a", 1), gap("a", 2, dropped=3), log("a", 6), log("a", 8), close("a", 10)],
    )

    (session,) = read_sessions(path)

    assert session.missing_seqs == [3, 4, 5, 7, 9]
    assert seqs(session) == [1, 2, 6, 8]
    assert session.entries[1]["dropped"] == 3


def test_status_open_closed_and_error(tmp_path: Path) -> None:
    """status is the close entry's status, or open; duration_s and closed_at follow the close."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("open"),
            start("ok"),
            close("ok", 1, duration=0.5, second=3),
            start("bad"),
            close("bad", 1, status="error"),
            start("cut"),
            close("cut", 1, status="interrupted"),
        ],
    )

    sessions = {s.session_id: s for s in read_sessions(path)}

    assert {sid: s.status for sid, s in sessions.items()} == {
        "open": "open",
        "ok": "closed",
        "bad": "error",
        "cut": "interrupted",
    }
    assert (sessions["open"].close, sessions["open"].closed_at) == (None, None)
    assert sessions["open"].duration_s is None
    assert sessions["ok"].duration_s == 0.5
    assert sessions["ok"].closed_at == datetime(2026, 11, 24, 6, 23, 3, tzinfo=UTC)


def test_started_at_is_an_aware_utc_datetime(tmp_path: Path) -> None:
    """started_at parses the start timestamp, microseconds included, as aware UTC."""
    entry = {**start("a"), "timestamp": "2026-11-24T06:23:13.123456Z"}
    path = write(tmp_path / "log.jsonl", [entry])

    (session,) = read_sessions(path)

    assert session.started_at == datetime(2026, 11, 24, 6, 23, 13, 123456, tzinfo=UTC)
    assert session.started_at is not None
    assert session.started_at.utcoffset() == timedelta(0)


def test_errors_counts_entries_at_error_level_and_above(tmp_path: Path) -> None:
    """errors counts log entries with levelno >= 40; the close entry is not counted."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("a"),
            log("a", 1, levelno=30),
            log("a", 2, levelno=40),
            log("a", 3, levelno=50),
            log("a", 4, levelno=39),
            close("a", 5, status="error"),
        ],
    )

    (session,) = read_sessions(path)

    assert session.errors == 2


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path: Path) -> None:
    """Blank and whitespace-only lines are skipped; line numbers stay physical."""
    body = b"\n" + encode([start("a")]) + b"   \n\r\n\t\n" + encode([log("a", 1)]) + b"\nnope\n"
    path = tmp_path / "log.jsonl"
    path.write_bytes(body)

    with pytest.warns(ReaderWarning) as record:
        entries = list(read_entries(path))

    assert [e["seq"] for e in entries] == [0, 1]
    assert [str(w.message).split(": ")[0] for w in record] == [f"{path}:8"]


def test_no_paths_reads_nothing() -> None:
    """Without paths there are no entries and no sessions."""
    assert list(read_entries()) == []
    assert read_sessions() == []


# -- builders for streaming callers (the CLI) -------------------------------------------------
def expected_summary(session: Session) -> dict[str, Any]:
    """Return what a SessionSummary must say, worked out from the full Session."""
    first = next(
        (
            parse_timestamp(e.get("timestamp"))
            for e in session.entries
            if parse_timestamp(e.get("timestamp")) is not None
        ),
        None,
    )
    return {
        "session_id": session.session_id,
        "metadata": session.metadata,
        "status": session.status,
        "started_at": session.started_at,
        "first_stamp": first,
        "closed_at": session.closed_at,
        "duration_s": session.duration_s,
        "logged": sum(1 for e in session.entries if e["event"] == "log"),
        "errors": session.errors,
        "dropped": session.dropped,
        "duplicates": session.duplicates,
        "missing": len(session.missing_seqs),
        "parent_session_id": session.parent_session_id,
        "levels": session.levels,
        "summary": session.summary,
        "discarded": session.discarded,
        "children": [(c.session_id, c.started_at) for c in session.children],
    }


def summaries(*paths: Path) -> list[dict[str, Any]]:
    """Return SummaryBuilder's summaries of the files, as dicts (children by id and start)."""
    builder = SummaryBuilder()
    for entry in read_entries(*paths):
        builder.add(entry)
    return [
        {**vars(s), "children": [(c.session_id, c.started_at) for c in s.children]}
        for s in builder.finish()
    ]


SCENARIOS: dict[str, list[list[dict[str, Any]]]] = {
    "interleaved": [
        [
            start("a", user="ann"),
            start("b", second=1),
            log("a", 1),
            log("b", 1, levelno=40),
            gap("a", 2, dropped=3),
            log("a", 6, levelno=50),
            close("a", 7, duration=2.25),
        ]
    ],
    "duplicates": [
        [
            start("a"),
            log("a", 1, "first copy"),
            start("a"),
            log("a", 2),
            {**log("a", 1), "message": "second copy"},
            close("a", 3),
            close("a", 3),
        ],
        [log("a", 2), log("a", 1)],
    ],
    "reused id with a late redelivery": [
        [
            start("a", run=1),
            log("a", 1, "run 1"),
            close("a", 2),
            start("a", second=10, run=2),
            log("a", 1, "run 2", second=11),
            log("a", 1, "run 1"),
        ]
    ],
    "reused id after a start-less run": [
        [
            log("a", 5, second=1),
            close("a", 6, second=2),
            start("a", second=9),
            log("a", 1, second=9),
        ]
    ],
    "newest file first": [
        [log("a", 2), close("a", 3, status="error")],
        [start("a", user="ann"), log("a", 1)],
    ],
    "out of order, start missing": [
        [log("a", 4), log("a", 2), close("a", 5, status="interrupted")]
    ],
    "children and the close entry's fields": [
        [
            start("p"),
            child("c2", "p", second=3),
            log("c2", 1, levelno=30),
            child("c1", "p", second=2),
            log("c1", 1, levelno=10),
            {**close("c1", 2), "levels": {"DEBUG": 1}, "summary": {"rows": 3}, "discarded": 4},
            close("p", 1, status="timeout"),
            child("orphan", "elsewhere"),
        ]
    ],
    "a reused parent id": [
        [
            start("p", second=0),
            close("p", 1, second=1),
            child("early", "p", second=1),
            start("p", second=5),
            child("late", "p", second=6),
        ]
    ],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_summary_builder_agrees_with_read_sessions(tmp_path: Path, name: str) -> None:
    """A summary says what the full Session says: same grouping, counts, times and status."""
    paths = [write(tmp_path / f"{i}.jsonl", part) for i, part in enumerate(SCENARIOS[name])]

    assert summaries(*paths) == [expected_summary(s) for s in read_sessions(*paths)]


def test_session_builder_fed_one_id_rebuilds_that_ids_sessions(tmp_path: Path) -> None:
    """SessionBuilder fed only one id's entries gives exactly read_sessions' runs of that id."""
    parts = SCENARIOS["reused id with a late redelivery"][0] + SCENARIOS["interleaved"][0]
    path = write(tmp_path / "log.jsonl", parts)
    builder = SessionBuilder()
    for entry in read_entries(path):
        if entry["session_id"] == "a" and entry_problem(entry) is None:
            builder.add(entry)

    runs = builder.finish()

    assert runs == [s for s in read_sessions(path) if s.session_id == "a"]
    assert [(s.metadata, s.duplicates) for s in runs] == [
        ({"run": 1}, 1),
        ({"run": 2}, 0),
        ({"user": "ann"}, 0),
    ]


def test_summary_seq_runs_match_a_set_in_any_insertion_order(tmp_path: Path) -> None:
    """Seqs arriving shuffled, repeated and with holes: duplicates and missing still exact."""
    rng = random.Random(10)
    seqs_written = [seq for seq in range(1, 400) if rng.random() > 0.1] * 2
    rng.shuffle(seqs_written)
    path = write(tmp_path / "log.jsonl", [start("a"), *(log("a", seq) for seq in seqs_written)])

    (summary,) = summaries(path)
    (session,) = read_sessions(path)

    assert summary == expected_summary(session)
    assert summary["duplicates"] == len(seqs_written) // 2
    assert summary["missing"] == 399 - len(set(seqs_written))


def test_entry_problem_and_parse_timestamp_are_the_readers_checks() -> None:
    """entry_problem accepts what the readers accept; parse_timestamp gives aware UTC or None."""
    assert entry_problem(log("a", 1)) is None
    assert entry_problem({"session_id": "a", "seq": True, "event": "log"}) == (
        "seq is not a non-negative integer"
    )
    assert entry_problem([1]) == "not a JSON object (array)"
    assert parse_timestamp("2026-11-24T06:23:13.5Z") == datetime(
        2026, 11, 24, 6, 23, 13, 500000, tzinfo=UTC
    )
    assert parse_timestamp("2026-11-24T07:23:13+01:00") == datetime(
        2026, 11, 24, 6, 23, 13, tzinfo=UTC
    )
    assert (parse_timestamp("yesterday"), parse_timestamp(17)) == (None, None)


# -- issue 12: children, level counts, summaries, buffered entries ----------------------------
def test_children_are_linked_in_start_order_and_unknown_parents_are_roots(tmp_path: Path) -> None:
    """A child is in its parent's children (by start time); a missing parent leaves a root."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("p"),
            child("b", "p", second=5),
            child("a", "p", second=3),
            child("grandchild", "a", second=4),
            child("orphan", "not-read"),
        ],
    )

    sessions = {s.session_id: s for s in read_sessions(path)}

    assert list(sessions) == ["p", "b", "a", "grandchild", "orphan"]  # every session listed
    assert [c.session_id for c in sessions["p"].children] == ["a", "b"]
    assert sessions["a"].children == [sessions["grandchild"]]
    assert sessions["a"].children[0] is sessions["grandchild"]
    assert (sessions["p"].parent_session_id, sessions["a"].parent_session_id) == (None, "p")
    assert sessions["orphan"].parent_session_id == "not-read"
    assert not any(sessions["orphan"] in s.children for s in sessions.values())


def test_a_child_of_a_reused_id_joins_the_run_started_before_it(tmp_path: Path) -> None:
    """With two runs of the parent id, each child goes to the last run started at or before it."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("p", second=0, run=1),
            child("early", "p", second=1),
            close("p", 1, second=2),
            start("p", second=5, run=2),
            child("late", "p", second=6),
        ],
    )

    first, early, second, late = read_sessions(path)

    assert (first.metadata, second.metadata) == ({"run": 1}, {"run": 2})
    assert first.children == [early] and second.children == [late]


def test_parent_cycles_are_read_as_roots_with_a_warning(tmp_path: Path) -> None:
    """a <-> b and a self-parent: no hang, no recursion, all roots, one ReaderWarning each."""
    path = write(
        tmp_path / "log.jsonl",
        [child("a", "b"), child("b", "a"), child("self", "self"), child("under-a", "a")],
    )

    with pytest.warns(ReaderWarning) as record:
        sessions = {s.session_id: s for s in read_sessions(path)}

    assert sorted(str(w.message) for w in record) == [
        "session 'self' names itself as its parent; read as a root",
        "sessions name each other as parent ('a' -> 'b' -> 'a'); read as roots",
    ]
    assert all(w.filename == __file__ for w in record)  # the warning names this caller
    assert sessions["b"].children == [] and sessions["self"].children == []
    # A child of a cycle member still hangs under it: only the cycle's own links are cut.
    assert sessions["a"].children == [sessions["under-a"]]


def test_a_chain_of_twenty_thousand_parents_is_linked_without_recursion(tmp_path: Path) -> None:
    """A deep chain (hostile or not) links in a loop, and a cycle closing it is found."""
    depth = 20_000
    chain = [start("s0")] + [child(f"s{n}", f"s{n - 1}") for n in range(1, depth)]
    path = write(tmp_path / "log.jsonl", chain)

    sessions = read_sessions(path)

    assert all(s.children == [sessions[n + 1]] for n, s in enumerate(sessions[:-1]))
    closed = write(tmp_path / "cycle.jsonl", [child("s0", f"s{depth - 1}"), *chain[1:]])
    with pytest.warns(ReaderWarning, match=rf"\('s0' -> .* \({depth} sessions\)\)"):
        assert all(s.children == [] for s in read_sessions(closed))


def test_close_entry_fields_and_the_new_statuses(tmp_path: Path) -> None:
    """levels, summary, discarded come from the close entry; timeout and evicted are statuses."""
    fields = {"levels": {"INFO": 2, "ERROR": 1}, "summary": {"rows": 7, "who": "***"}}
    path = write(
        tmp_path / "log.jsonl",
        [
            start("ok"),
            {**close("ok", 4), **fields, "discarded": 12},
            start("idle"),
            {**close("idle", 1, status="timeout"), "levels": {}},
            start("pushed"),
            {**close("pushed", 1, status="evicted"), "levels": {}},
            start("old"),
            log("old", 1),
            close("old", 2),  # a close written before levels existed
        ],
    )

    ok, idle, pushed, old = read_sessions(path)

    assert (ok.levels, ok.summary, ok.discarded) == (fields["levels"], fields["summary"], 12)
    assert (idle.status, pushed.status) == ("timeout", "evicted")
    assert (idle.levels, idle.summary, idle.discarded) == ({}, {}, 0)
    assert (old.levels, old.summary, old.discarded) == ({}, {}, 0)


def test_levels_of_a_session_without_close_are_counted_from_its_entries(tmp_path: Path) -> None:
    """No close entry: levels counts the log entries read by level name (gaps not counted)."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("a"),
            log("a", 1),
            log("a", 2, levelno=40),
            gap("a", 3, dropped=5),
            log("a", 4),
            {**log("a", 5), "level": 25},  # a mangled name: the levelno names it
        ],
    )

    (session,) = read_sessions(path)

    assert session.levels == {"INFO": 3, "ERROR": 1}


def test_hostile_issue_12_fields_are_read_without_crashing(tmp_path: Path) -> None:
    """Wrong types in parent id, levels, summary, discarded: ignored or filtered, never raised."""
    many = {f"L{n}": 1 for n in range(200)}
    path = write(
        tmp_path / "log.jsonl",
        [
            child("int-parent", 17),
            child("list-parent", ["p"]),
            child("empty-parent", ""),
            {
                **close("int-parent", 1),
                "levels": {"INFO": "3", "ERROR": True, "WARNING": -1, "DEBUG": 2, "x": None},
                "summary": ["not", "a", "dict"],
                "discarded": True,
            },
            {**close("list-parent", 1), "levels": [1, 2], "summary": "s", "discarded": -4},
            {**close("empty-parent", 1), "levels": many, "discarded": "9"},
        ],
    )

    a, b, c = read_sessions(path)

    assert [s.parent_session_id for s in (a, b, c)] == [None, None, None]
    assert (a.levels, a.summary, a.discarded) == ({"DEBUG": 2}, {}, 0)
    assert (b.levels, b.summary, b.discarded) == ({}, {}, 0)
    assert len(c.levels) == 64 and c.levels["(other)"] == 200 - 63
    assert sum(c.levels.values()) == 200


def test_a_flushed_buffer_has_older_timestamps_and_leaves_no_missing_seqs(tmp_path: Path) -> None:
    """Held entries written on failure take the next seqs with older stamps: nothing missing."""
    path = write(
        tmp_path / "log.jsonl",
        [
            start("a", second=0),
            log("a", 1, "info", second=5),
            log("a", 2, "held debug", levelno=10, second=1),  # called at 1 s, written at 6 s
            log("a", 3, "the failure", levelno=40, second=6),
            {**close("a", 4, status="error", second=7), "levels": {"INFO": 1, "DEBUG": 1}},
        ],
    )

    (session,) = read_sessions(path)
    (summary,) = summaries(path)

    assert session.missing_seqs == [] and summary["missing"] == 0
    assert [e["message"] for e in session.entries] == ["info", "held debug", "the failure"]
    assert session.started_at == parse_timestamp(stamp(0))
    assert summary == expected_summary(session)


def test_a_real_logger_writes_what_the_reader_reads(tmp_path: Path) -> None:
    """SessionLogger with parent_id/token, annotate, buffer_level, eviction: read back exactly."""
    from async_session_logger import SessionLogger

    path = tmp_path / "log.jsonl"
    with SessionLogger(
        method="file", path=path, dead_letter_path=None, buffer_level="DEBUG", max_open_sessions=3
    ) as logger:
        logger.start_session("job", metadata={"kind": "batch"})
        logger.log_entry("job", "detail", "DEBUG")  # held, then discarded at the clean close
        logger.log_entry("job", "step", "INFO")
        logger.annotate("job", rows=120, password="hunter2")
        logger.start_session("worker", parent_id=logger.token("job"))
        logger.log_entry("worker", "held", "DEBUG")
        logger.log_entry("worker", "failed", "ERROR")  # the held entry is written first
        logger.close_session("worker", status="error")
        with logger.session("step-2", parent="job") as handle:
            handle.warning("slow")
        logger.start_session("x")
        logger.start_session("y")
        logger.start_session("z")  # four open: the least recently active, "job", is evicted
        for sid in ("x", "y", "z"):
            logger.close_session(sid)

    sessions = {s.session_id: s for s in read_sessions(path)}
    job, worker, step = sessions["job"], sessions["worker"], sessions["step-2"]

    assert job.status == "evicted"
    assert [c.session_id for c in job.children] == ["worker", "step-2"]
    assert (worker.parent_session_id, step.parent_session_id) == ("job", "job")
    assert job.levels == {"INFO": 1} and job.discarded == 1
    assert job.summary["rows"] == 120 and job.summary["password"] != "hunter2"
    assert [e["message"] for e in worker.entries] == ["held", "failed"]
    assert worker.levels == {"DEBUG": 1, "ERROR": 1} and worker.missing_seqs == []
    assert step.levels == {"WARNING": 1}
    assert summaries(path) == [expected_summary(s) for s in read_sessions(path)]
