"""`serve`'s JSON API, live events and safety, against the real server and a real HTTP client."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from async_session_logger import SessionLogger, read_entries
from async_session_logger.sinks.sqlite import SqliteSink

from .conftest import HOSTILE, Served, write_story

Serve = Callable[..., Served]


def _one_session(session_id: str, message: str, **options: Any) -> None:
    """Log one closed session of one entry with a real logger made with ``options``."""
    with SessionLogger(**options) as logger, logger.session(session_id) as s:
        s.info(message)


def _get(served: Served, path: str, **params: Any) -> httpx.Response:
    return httpx.get(served.url.rstrip("/") + path, params=params, timeout=10)


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [s["session_id"] for s in response.json()["sessions"]]


def test_the_list_and_its_filters_on_a_file(serve: Serve, tmp_path: Path) -> None:
    """The list has every session with its fields; status, text, sort and pages filter it."""
    log = tmp_path / "app.jsonl"
    ids = write_story(log)
    served = serve(log)
    listed = _get(served, "/api/sessions").json()
    assert listed["total"] == len(ids) and sorted(_ids(_get(served, "/api/sessions"))) == sorted(
        ids
    )
    by_id = {s["session_id"]: s for s in listed["sessions"]}
    assert by_id["req-2"]["status"] == "error"
    assert by_id["req-2"]["levels"] == {"INFO": 1, "ERROR": 1}
    assert by_id["req-0"]["metadata"] == {"user_id": "u0", "path": "/items/0"}
    assert by_id["child-1"]["parent"] == "parent-1" and by_id["parent-1"]["children"] == 1
    assert sorted(_ids(_get(served, "/api/sessions", status="error"))) == ["req-2", "req-5"]
    both = _get(served, "/api/sessions", status="error,interrupted")
    assert sorted(_ids(both)) == ["req-2", "req-5"]
    assert _ids(_get(served, "/api/sessions", q="ITEMS/4")) == ["req-4"]  # metadata, any case
    assert _ids(_get(served, "/api/sessions", q="handling item 3")) == ["req-3"]  # a message
    assert _ids(_get(served, "/api/sessions", q="child-")) == ["child-1"]  # the id
    newest = _ids(_get(served, "/api/sessions", sort="-start"))
    assert newest == list(reversed(_ids(_get(served, "/api/sessions", sort="start"))))
    assert newest[0] == "parent-1" or newest[0] == "child-1"
    page = _get(served, "/api/sessions", sort="start", limit=3, offset=3).json()
    assert page["total"] == len(ids) and [s["session_id"] for s in page["sessions"]] == ids[3:6]
    assert _ids(_get(served, "/api/sessions", since="1h")) != []
    assert _ids(_get(served, "/api/sessions", until="2000-01-01")) == []


def test_one_session_with_entries_gaps_and_children(serve: Serve, tmp_path: Path) -> None:
    """A session in full: entries in seq order, a missing seq as a gap, the child tree."""
    log = tmp_path / "app.jsonl"
    write_story(log)
    # Remove parent-1's seq 2 from the file: a gap.
    lines = log.read_bytes().splitlines(keepends=True)
    kept = [
        line
        for line in lines
        if not (b'"session_id":"parent-1"' in line and orjson.loads(line)["seq"] == 2)
    ]
    assert len(kept) == len(lines) - 1
    log.write_bytes(b"".join(kept))
    served = serve(log)
    found = _get(served, "/api/sessions/parent-1").json()
    seqs = [e["seq"] for e in found["entries"]]
    assert seqs == sorted(seqs) and seqs[0] == 0 and 2 not in seqs
    assert found["gaps"] == [{"after_seq": 1, "missing": 1}]
    assert found["children"] == [
        {
            "session_id": "child-1",
            "status": "closed",
            "started": found["children"][0]["started"],
            "children": [],
        }
    ]
    assert found["parent"] is None
    child = _get(served, "/api/sessions/child-1").json()
    assert child["parent"] == {"session_id": "parent-1", "status": "closed"}
    assert child["session"]["parent"] == "parent-1"
    failed = _get(served, "/api/sessions/req-2").json()
    assert "ValueError: bad item 2" in failed["entries"][2]["exception"]
    assert _get(served, "/api/sessions/nope").status_code == 404
    assert _get(served, "/api/sessions/req-2", run="x").status_code == 400


def test_bad_requests_get_json_errors(serve: Serve, tmp_path: Path) -> None:
    """Bad parameters 400, unknown API paths 404, writes 405: all JSON, all with the headers."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log)
    for params in ({"status": "weird"}, {"sort": "x"}, {"limit": "0"}, {"since": "yesterday"}):
        response = _get(served, "/api/sessions", **params)
        assert response.status_code == 400 and "error" in response.json(), params
    assert _get(served, "/api/nothing").status_code == 404
    posted = httpx.post(served.url + "api/sessions", timeout=10)
    assert posted.status_code == 405 and posted.headers["Allow"] == "GET, HEAD"
    assert posted.headers["content-type"].startswith("application/json")


def test_security_headers_host_check_and_no_traversal(serve: Serve, tmp_path: Path) -> None:
    """CSP and nosniff on the page, the API and static files; foreign hosts and paths refused."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log)
    for path in ("/", "/sessions/req-0", "/api/sessions", "/static/app.js", "/static/style.css"):
        response = _get(served, path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert _get(served, "/static/app.js").headers["content-type"].startswith("text/javascript")
    rebinding = httpx.get(served.url + "api/sessions", headers={"Host": "evil.example"})
    assert rebinding.status_code == 421
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    for path in (
        "/static/..%2f..%2fapp.py",
        "/static/%2e%2e/app.py",
        "/static/" + "..%2F" * 8 + str(secret).lstrip("/").replace("/", "%2F"),
        "/static/.hidden.js",
        "/static/app.py",
    ):
        response = httpx.get(served.url.rstrip("/") + path, timeout=10)
        assert response.status_code == 404, path
        assert b"secret" not in response.content and b"import" not in response.content


def test_hostile_values_come_back_as_json_text(serve: Serve, tmp_path: Path) -> None:
    """HTML, control characters and odd ids travel as JSON strings; corrupt lines are counted."""
    log = tmp_path / "app.jsonl"
    write_story(log)
    weird = "ünï cödé ..x %2e%2e ?a=1&b"
    _one_session(weird, "x" * 200_000, method="file", path=log, dead_letter_path=None)
    with open(log, "ab") as fh:
        fh.write(b"{not json\n\xff\xfe binary\n")
    served = serve(log)
    found = _get(served, "/api/sessions/parent-1")
    assert found.headers["content-type"].startswith("application/json")
    messages = [e["message"] for e in found.json()["entries"]]
    assert HOSTILE in messages and "line one\x1b[31m\rfake line" in messages
    odd = httpx.get(served.url + "api/sessions/" + quote(weird, safe=""), timeout=10)
    assert odd.status_code == 200 and odd.json()["session"]["session_id"] == weird
    assert len(odd.json()["entries"][1]["message"]) == 200_000
    assert _get(served, "/api/status").json()["corrupt_lines"] == 2


def _events(served: Served, path: str, seen: list[dict[str, Any]], stop: threading.Event) -> None:
    with httpx.stream("GET", served.url.rstrip("/") + path, timeout=30) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event is not None:
                seen.append({"event": event, **orjson.loads(line[6:])})
            if stop.is_set():
                return


def _wait(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout  # a hang guard, not a timing assertion
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_sqlite_store(serve: Serve, tmp_path: Path) -> None:
    """The same API over a store written by SqliteSink: filters, a session, live changes."""
    db = tmp_path / "sessions.db"
    with SessionLogger(sinks=[SqliteSink(db)], dead_letter_path=None) as logger:
        for i in range(4):
            with logger.session(f"s{i}", metadata={"user_id": f"u{i}"}) as s:
                s.info(f"message {i}")
        logger.start_session("failed")
        logger.log_entry("failed", "boom <b>", logging.ERROR)
        logger.close_session("failed", "error")
    served = serve("--store", f"sqlite:///{db}")
    assert sorted(_ids(_get(served, "/api/sessions"))) == ["failed", "s0", "s1", "s2", "s3"]
    assert _ids(_get(served, "/api/sessions", status="error")) == ["failed"]
    assert _ids(_get(served, "/api/sessions", q="message 2")) == ["s2"]
    assert _ids(_get(served, "/api/sessions", q="u3")) == ["s3"]
    oldest_first = _ids(_get(served, "/api/sessions", sort="start"))
    assert oldest_first == ["s0", "s1", "s2", "s3", "failed"]
    assert _ids(_get(served, "/api/sessions")) == oldest_first[::-1]
    second = _get(served, "/api/sessions", sort="start", limit=2, offset=2).json()
    assert (second["total"], [s["session_id"] for s in second["sessions"]]) == (5, ["s2", "s3"])
    assert (
        _ids(_get(served, "/api/sessions", since="1h", status="closed,error")) == oldest_first[::-1]
    )
    assert _ids(_get(served, "/api/sessions", until="2000-01-01T00:00:00Z")) == []
    found = _get(served, "/api/sessions/failed").json()
    assert [e["message"] for e in found["entries"]][1] == "boom <b>"
    _one_session("later", "new", sinks=[SqliteSink(db)], dead_letter_path=None)
    _wait(lambda: "later" in _ids(_get(served, "/api/sessions")), "a new row")


def test_a_store_that_breaks_under_the_server_gives_json_500(serve: Serve, tmp_path: Path) -> None:
    """A store file overwritten with junk while served: requests answer 500 in JSON, with the
    security headers, and the server keeps serving (and stops cleanly)."""
    db = tmp_path / "sessions.db"
    _one_session("s", "x", sinks=[SqliteSink(db)], dead_letter_path=None)
    served = serve("--store", f"sqlite:///{db}")
    assert _ids(_get(served, "/api/sessions")) == ["s"]
    for name in ("sessions.db-wal", "sessions.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    db.write_bytes(b"not a database at all" * 1000)
    broken = _get(served, "/api/sessions/s")
    assert broken.status_code == 500 and "error" in broken.json()
    assert broken.headers["x-content-type-options"] == "nosniff"
    assert _get(served, "/api/status").status_code in (200, 500)


def test_a_session_page_across_rotations_and_a_rewritten_file(serve: Serve, tmp_path: Path) -> None:
    """A session whose entries span files a real FileSink rotated (and gzipped) while served
    comes back whole and in order; so does one after its file was truncated and rewritten."""
    log = tmp_path / "app.jsonl"
    write_story(log, sessions=1)
    served = serve(log)
    with SessionLogger(
        method="file",
        path=log,
        file={"rotate_bytes": 4_000, "compress": "gzip"},
        dead_letter_path=None,
    ) as logger:
        logger.start_session("long", metadata={"k": "v"})
        for i in range(60):
            logger.log_entry("long", f"line {i} " + "x" * 100, logging.INFO)
            if i % 10 == 9:
                logger.save_logs()
                time.sleep(0.3)  # the server reads between rotations
        logger.close_session("long")
    assert len(list(tmp_path.glob("app.*.jsonl.gz"))) >= 3, "the sink rotated the file"
    _wait(lambda: "long" in _ids(_get(served, "/api/sessions", status="closed")), "long closed")
    found = _get(served, "/api/sessions/long").json()
    assert [e["seq"] for e in found["entries"]] == list(range(62))
    assert found["gaps"] == []
    # The live file truncated and rewritten in place with other content: the offsets noted
    # for it now point into other lines, which the page must not show as "long"'s.
    log.write_bytes(b"")
    _one_session("rewritten", "new content", method="file", path=log, dead_letter_path=None)
    _wait(lambda: "rewritten" in _ids(_get(served, "/api/sessions")), "the rewritten file")
    again = _get(served, "/api/sessions/long").json()
    on_disk = sorted(
        e["seq"]
        for f in tmp_path.glob("app*.jsonl*")
        for e in read_entries(f)
        if e["session_id"] == "long"
    )
    assert 0 < len(on_disk) < 62  # the truncation took the live file's share
    assert [e["seq"] for e in again["entries"]] == on_disk
    assert [e["message"] for e in _get(served, "/api/sessions/rewritten").json()["entries"]][
        1
    ] == "new content"


def test_create_app_serves_a_source_in_process(tmp_path: Path) -> None:
    """`create_app(FileSource(...))` is a working aiohttp app on a real port, headers and all."""
    from aiohttp import web

    from async_session_logger.browser import FileSource, create_app

    log = tmp_path / "app.jsonl"
    write_story(log, sessions=2)

    async def main() -> tuple[int, dict[str, Any], str]:
        runner = web.AppRunner(create_app(FileSource([str(log)])))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            async with httpx.AsyncClient() as client:
                got = await client.get(f"http://127.0.0.1:{port}/api/sessions", params={"q": "u1"})
        finally:
            await runner.cleanup()
        return got.status_code, got.json(), got.headers["X-Content-Type-Options"]

    status, body, nosniff = asyncio.run(main())
    assert status == 200 and nosniff == "nosniff"
    assert [s["session_id"] for s in body["sessions"]] == ["req-1"]
