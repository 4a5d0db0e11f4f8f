"""The PostgreSQL store on a real throwaway cluster: the SQLite store's rows, concurrent writers."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from async_session_logger import read_sessions
from async_session_logger.store import LATEST, PostgresStore, SqliteStore, StoreVersionError

from ..cli.helpers import start_cli, wait_until
from ..cli.test_collect_group import (
    PUBLISHERS,
    TOTAL,
    _finish,
    _kill_all,
    _publish,
    _stop,
    _subscribed,
    _written,
    check_store_exactly_once,
)
from ..mqtt_broker import Broker
from ..postgres_cluster import PostgresCluster, count_entries
from . import write_story

_names = count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """One cluster for the module; each test makes its own databases."""
    with PostgresCluster(tmp_path_factory.mktemp("pg")) as running:
        yield running


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[bytes]]:
    """A real log file, the SQLite store written beside it, and the log's lines."""
    root = tmp_path_factory.mktemp("story")
    write_story(root / "log.jsonl", root / "store.db")
    return root / "log.jsonl", root / "store.db", (root / "log.jsonl").read_bytes().splitlines()


def fresh_database(cluster: PostgresCluster) -> str:
    """Create an empty database on the cluster; return its URL."""
    return cluster.new_database(f"t{next(_names)}")


def _normal(table: list[tuple[Any, ...]], fields: int | None) -> list[tuple[Any, ...]]:
    """Rows with the JSONB custom_fields column parsed (its text is PostgreSQL's)."""
    out = []
    for row in table:
        values = list(row)
        if fields is not None and values[fields] is not None:
            values[fields] = orjson.loads(values[fields])
        out.append(tuple(values))
    return sorted(out, key=repr)


def tables(store: SqliteStore) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Return both tables, comparable across SQLite and PostgreSQL."""
    return _normal(store.table("entries"), 8), _normal(store.table("sessions"), None)


def sqlite_tables(db: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Return both tables of the SQLite store written from the same story: the reference."""
    sqlite = SqliteStore(str(db), create=False)
    try:
        return tables(sqlite)
    finally:
        sqlite.close()


def test_same_tables_as_sqlite_for_any_order_and_duplicates(
    cluster: PostgresCluster, story: tuple[Path, Path, list[bytes]]
) -> None:
    """In order, twice, or shuffled in small batches with duplicates: SQLite's very rows."""
    _, db, lines = story
    expected = sqlite_tables(db)
    store = PostgresStore(fresh_database(cluster))
    assert store.found_version == 0 and store.version == LATEST
    assert store.write(lines) == []
    assert store.write(lines) == []
    assert tables(store) == expected
    store.close()
    rng = random.Random(13)
    for _ in range(3):
        shuffled = lines + rng.sample(lines, len(lines) // 2)
        rng.shuffle(shuffled)
        store = PostgresStore(fresh_database(cluster))
        at = 0
        while at < len(shuffled):
            size = rng.randint(1, 4)
            store.write(shuffled[at : at + size])
            at += size
        assert tables(store) == expected
        store.close()


def test_rows_equal_read_sessions_and_bad_lines_come_back(
    cluster: PostgresCluster, story: tuple[Path, Path, list[bytes]]
) -> None:
    """Each sessions row says what read_sessions says; unkeyable lines are returned, alone."""
    log, _, lines = story
    store = PostgresStore(fresh_database(cluster))
    assert store.write([b"not json", *lines, b'{"event": "log"}']) == [0, len(lines) + 1]
    rows = store.session_rows()
    sessions = read_sessions(log)
    assert len(rows) == len(sessions)
    by_key = {(r["session_id"], r["started"]): r for r in rows}
    for session in sessions:
        assert session.started_at is not None
        row = by_key[(session.session_id, session.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))]
        assert row["status"] == session.status
        assert row["duration_s"] == session.duration_s
        assert orjson.loads(row["levels"]) == session.levels
        assert orjson.loads(row["summary"]) == session.summary
        assert orjson.loads(row["metadata"]) == session.metadata
        assert row["parent"] == session.parent_session_id
        assert (row["errors"], row["discarded"]) == (session.errors, session.discarded)
        assert row["entries"] == sum(1 for e in session.entries if e["event"] == "log")
    # The whole entry is kept as written, byte for byte (JSON, not JSONB).
    assert sorted(line for (line,) in store.conn.execute("SELECT entry FROM entries")) == sorted(
        line.decode() for line in lines
    )
    store.close()


def test_two_writers_of_the_same_sessions_give_one_writers_rows(
    cluster: PostgresCluster, story: tuple[Path, Path, list[bytes]]
) -> None:
    """Two stores writing interleaved, overlapping batches of one log at once: the same rows."""
    _, db, lines = story
    expected = sqlite_tables(db)
    url = fresh_database(cluster)
    PostgresStore(url).close()
    for attempt in range(3):
        if attempt:
            url = fresh_database(cluster)
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=_writer, args=(url, lines, attempt * 2 + n, barrier, failures))
            for n in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        store = PostgresStore(url)
        assert tables(store) == expected
        store.close()


def _writer(
    url: str, lines: list[bytes], seed: int, barrier: threading.Barrier, failures: list[Any]
) -> None:
    """Write the log's lines, shuffled with duplicates, in batches of 3 (in a thread)."""
    rng = random.Random(seed)
    mine = lines + rng.sample(lines, len(lines) // 2)
    rng.shuffle(mine)
    try:
        store = PostgresStore(url)  # both may migrate a new database at once
        barrier.wait(timeout=30)
        for at in range(0, len(mine), 3):
            store.write(mine[at : at + 3])
        store.close()
    except BaseException as exc:  # reported by the test
        failures.append(exc)


def test_newer_schema_is_refused_untouched(cluster: PostgresCluster) -> None:
    """A database made by a newer library version is refused with a clear error."""
    url = fresh_database(cluster)
    store = PostgresStore(url)
    store.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    store.close()
    with pytest.raises(StoreVersionError, match=f"schema version {LATEST + 1}, newer"):
        PostgresStore(url)
    assert asyncio.run(_max_version(url)) == LATEST + 1


async def _max_version(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT MAX(version) FROM schema_version"))
    finally:
        await conn.close()


def test_the_commands_print_the_same_for_postgresql_and_a_file(
    cluster: PostgresCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sessions` and `show` over `--store postgresql://...` print what they print for the file."""
    from async_session_logger import SessionLogger
    from async_session_logger.cli import main

    log_path = tmp_path / "log.jsonl"
    with SessionLogger(path=str(log_path), dead_letter_path=None, buffer_level="DEBUG") as log:
        with log.session("parent", {"user_id": "u1", "zone": "b", "a": 1}) as parent:
            parent.debug("held")
            parent.annotate(rows=3, b=2, a=1)
            with log.session("child", parent=parent) as child:
                child.error("failed")
                child.info("after", custom_fields={"z": 1, "a": 2})
        with log.session("other", {"user_id": "u2", "device": {"fw": "1.4"}}):
            pass
    url = fresh_database(cluster)
    store = PostgresStore(url)
    store.write(log_path.read_bytes().splitlines())
    store.close()
    for from_file, from_store in (
        (["sessions", str(log_path)], ["sessions", "--store", url]),
        (["sessions", "--json", str(log_path)], ["sessions", "--json", "--store", url]),
        (["sessions", "--tree", str(log_path)], ["sessions", "--tree", "--store", url]),
        (
            ["sessions", "--meta", "user_id=u1", str(log_path)],
            ["sessions", "--where", "metadata.user_id=u1", "--store", url],
        ),
        (
            ["sessions", "--meta", "device.fw=1.4", str(log_path)],
            ["sessions", "--where", "metadata.device.fw=1.4", "--store", url],
        ),
        (
            ["sessions", "--status", "closed", "--since", "1h", str(log_path)],
            ["sessions", "--status", "closed", "--since", "1h", "--store", url],
        ),
        (["show", "parent", "--tree", str(log_path)], ["show", "parent", "--tree", "--store", url]),
        (["show", "child", "--json", str(log_path)], ["show", "child", "--json", "--store", url]),
    ):
        assert main(from_file) == 0
        expected = capsys.readouterr().out
        assert main(from_store) == 0
        assert capsys.readouterr().out == expected, from_store
        assert expected.strip()
    # A database without a store, and a server that is not there: errors, not tracebacks.
    assert main(["sessions", "--store", fresh_database(cluster)]) == 1
    assert "holds no session store" in capsys.readouterr().err
    assert main(["show", "nobody", "--store", url.replace("asl@", "asl:pw@")]) == 1
    assert "asl:***@" in capsys.readouterr().err


def test_filters_select_in_sql_and_hostile_values_match_nothing(
    cluster: PostgresCluster, story: tuple[Path, Path, list[bytes]]
) -> None:
    """The PostgreSQL filters pick SQLite's rows; SQL in a --where value is only a value."""
    from datetime import UTC, datetime, timedelta

    from async_session_logger.store import Filters, load_summaries, where_sql

    _, _, lines = story
    store = PostgresStore(fresh_database(cluster))
    store.write(lines)

    def ids(filters: Filters) -> list[str]:
        return [s.session_id for s in load_summaries(store, filters, every=False)]

    assert ids(Filters(status=["interrupted"])) == ["req-3", "open-1"]
    assert ids(Filters(meta=[("user_id", "u1")])) == ["req-1", "req-3", "req-3"]
    assert ids(Filters(meta=[("nested.k", "v")])) == ["req-2"]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert ids(Filters(since=later)) == []
    assert len(ids(Filters(since=later - timedelta(hours=3)))) == 6
    before = tables(store)
    assert ids(Filters(meta=[("user_id", "x' OR '1'='1")])) == []
    assert ids(Filters(meta=[("user_id", "'; DROP TABLE sessions; --")])) == []
    assert ids(Filters(meta=[("user_id", "x' OR 1=1 --")])) == ["open-1"]
    assert ids(Filters(meta=[('user_id") OR 1=1 --', "u1")])) == ids(Filters())
    assert tables(store) == before
    where, params = where_sql(Filters(meta=[("user_id", "x' OR 1=1 --")]), dialect="postgresql")
    assert "x' OR" not in where and "x' OR 1=1 --" in params
    store.close()


def _pg_collector(
    broker: Broker, url: str, tmp_path: Path, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    """Start `collect --group g --store URL` as a process (stderr in tmp_path/NAME.err)."""
    return start_cli(
        "collect", "--host", "127.0.0.1", "--port", broker.port, "--store", url,
        "--client-id", name, "--reconnect-max", "0.3", "--group", "g", *extra,
        out=tmp_path / f"{name}.out", err=tmp_path / f"{name}.err",
    )  # fmt: skip


def test_a_group_into_postgresql_one_member_sigkilled_and_restarted(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """3 publishers, 2 collectors of a group into PostgreSQL, one SIGKILLed: exactly once."""
    url = fresh_database(cluster)
    procs: list[subprocess.Popen[bytes]] = []
    with Broker(workdir=tmp_path / "broker") as broker:
        try:
            for name in ("p1c", "p2c"):
                procs.append(_pg_collector(broker, url, tmp_path, name))
            for name in ("p1c", "p2c"):
                _subscribed(tmp_path, name)
            publishers = _publish(broker, tmp_path)
            procs += publishers
            # Mid-stream for the collectors: some entries stored, many still to come (the
            # publishers may be done by then: on a busy machine they outrun the collectors, and
            # the broker holds the rest for the group).
            wait_until(lambda: count_entries(url) > 0, 30, "a first entry stored")
            assert count_entries(url) < TOTAL // 2, "the kill must come mid-stream"
            procs[0].kill()  # SIGKILL: what it received but had not committed is not acked
            procs[0].wait()
            procs[0] = _pg_collector(broker, url, tmp_path, "p1c-again", "--client-id", "p1c")
            _subscribed(tmp_path, "p1c-again")
            _finish(publishers)
            wait_until(lambda: count_entries(url) >= TOTAL, 30, f"{TOTAL} stored entries")
            time.sleep(0.5)  # a late duplicate would land now
            assert _stop(procs[0]) == 0 and _stop(procs[1]) == 0
        finally:
            _kill_all(procs)
    check_store_exactly_once(PostgresStore(url, create=False), tmp_path)
    summary = (tmp_path / "p2c.err").read_text().splitlines()[-1]
    assert re.search(r"stopped: \d+ entr\w+ committed to postgresql://asl@", summary), summary
    assert _written(tmp_path, "p2c") > 0


def _published(tmp_path: Path) -> int:
    """Return how many entries the publishers wrote to their own local copies so far."""
    return sum(
        (tmp_path / f"{n}.jsonl").read_bytes().count(b"\n")
        for n in PUBLISHERS
        if (tmp_path / f"{n}.jsonl").exists()
    )


def test_a_broker_crash_then_a_member_sigkill_under_a_group_into_postgresql(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Broker SIGKILLed mid-stream and restarted, then a member SIGKILLed and restarted, with 2
    members of a group and a non-shared durable collector (the documented safety net) writing
    into PostgreSQL: every entry exactly once, every sessions row one writer's."""
    url = fresh_database(cluster)
    procs: list[subprocess.Popen[bytes]] = []
    with Broker(persistence=True, workdir=tmp_path / "broker") as broker:
        try:
            procs.append(_pg_collector(broker, url, tmp_path, "g1"))
            procs.append(_pg_collector(broker, url, tmp_path, "g2"))
            # The net: no --group (its own persistent subscription to the whole stream).
            net = start_cli(
                "collect", "--host", "127.0.0.1", "--port", broker.port, "--store", url,
                "--client-id", "net", "--reconnect-max", "0.3",
                out=tmp_path / "net.out", err=tmp_path / "net.err",
            )  # fmt: skip
            procs.append(net)
            for name in ("g1", "g2", "net"):
                _subscribed(tmp_path, name)
            broker.save()  # the sessions (and the net's plain subscription) survive the crash
            publishers = _publish(broker, tmp_path)
            procs += publishers
            # Publishers outrun collectors into PostgreSQL: the crash is timed by what they sent.
            wait_until(lambda: _published(tmp_path) >= TOTAL // 4, 30, "a first share sent")
            wait_until(lambda: count_entries(url) > 0, 30, "a first entry stored")
            assert all(p.poll() is None for p in publishers), "the crash must come mid-stream"
            broker.kill()
            time.sleep(0.3)
            broker.restart()
            for name in ("g1", "g2", "net"):
                _subscribed(tmp_path, name, times=2)
            # And a member SIGKILLed while the stream is still coming in, restarted under its id.
            assert count_entries(url) < TOTAL, "the member's kill must come mid-stream"
            procs[0].kill()
            procs[0].wait()
            procs[0] = _pg_collector(broker, url, tmp_path, "g1-again", "--client-id", "g1")
            _subscribed(tmp_path, "g1-again")
            _finish(publishers)
            wait_until(lambda: count_entries(url) >= TOTAL, 60, f"{TOTAL} stored entries")
            time.sleep(0.5)  # a late duplicate would land now
            assert all(_stop(p) == 0 for p in procs[:3])
        finally:
            _kill_all(procs)
    check_store_exactly_once(PostgresStore(url, create=False), tmp_path)
    for name in ("g1", "g2"):
        log = (tmp_path / f"{name}.err").read_text()
        assert "lost the connection" in log and "subscribed again to $share/g/logs/#" in log
    assert "subscribed to $share/g/logs/#" in (tmp_path / "g1-again.err").read_text()


def test_a_write_during_a_server_crash_fails_whole_and_the_next_reconnects(
    cluster: PostgresCluster, story: tuple[Path, Path, list[bytes]]
) -> None:
    """Server SIGKILLed: the write raises StoreError; after a restart the same batch lands."""
    from async_session_logger.store import StoreError

    _, db, lines = story
    expected = sqlite_tables(db)
    store = PostgresStore(fresh_database(cluster))
    half = len(lines) // 2
    store.write(lines[:half])
    cluster.kill()
    try:
        with pytest.raises(StoreError, match="PostgreSQL store"):
            store.write(lines[half:])
    finally:
        cluster.start()
    assert store.write(lines[half:]) == []  # the same batch again, on a new connection
    assert tables(store) == expected
    store.close()


def _partition_recipe() -> list[str]:
    """Return the SQL blocks of docs/scaling.md's "Partitioned entries" section, in order."""
    doc = (Path(__file__).parents[2] / "docs" / "scaling.md").read_text(encoding="utf-8")
    section = doc.split("## Partitioned entries (PostgreSQL)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "convert, add a day, drop a day"
    return blocks


def test_the_documented_partitioned_entries_table_keeps_the_same_rows(
    cluster: PostgresCluster, story: tuple[Path, Path, list[bytes]]
) -> None:
    """docs/scaling.md's recipe, run as written on a real server: entries partitioned by run
    day, each day's rows in the day's partition, SQLite's very rows; then the days dropped."""
    _, db, lines = story
    convert, add_day, drop_day = _partition_recipe()
    # The story's entries carry today's time (two days if it ran across midnight).
    days = sorted({orjson.loads(line)["timestamp"][:10] for line in lines})
    url = fresh_database(cluster)
    PostgresStore(url).close()  # the schema, as collect creates it

    def dated(sql: str, day: str) -> str:
        return (
            sql.replace("2026-11-29", _next(day))
            .replace("2026-11-28", day)
            .replace("2026_11_28", day.replace("-", "_"))
        )

    async def run_sql(*statements: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    async def counts() -> dict[str, int]:
        conn = await asyncpg.connect(url)
        try:
            names = ["entries_waiting", "entries_default"]
            names += [f"entries_{day.replace('-', '_')}" for day in days]
            found = {}
            for name in names:
                if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
                    found[name] = int(await conn.fetchval(f"SELECT COUNT(*) FROM {name}"))
            found["sessions"] = int(await conn.fetchval("SELECT COUNT(*) FROM sessions"))
            return found
        finally:
            await conn.close()

    asyncio.run(run_sql(convert, *(dated(add_day, day) for day in days)))
    store = PostgresStore(url)
    rng = random.Random(5)
    shuffled = lines + rng.sample(lines, len(lines) // 2)
    rng.shuffle(shuffled)
    for at in range(0, len(shuffled), 3):
        assert store.write(shuffled[at : at + 3]) == []
    assert tables(store) == sqlite_tables(db)
    store.close()
    found = asyncio.run(counts())
    assert (found.pop("entries_waiting"), found.pop("entries_default")) == (0, 0)
    assert found.pop("sessions") == len(sqlite_tables(db)[1])
    assert sum(found.values()) == len(lines) and len(found) == len(days)
    asyncio.run(run_sql(*(dated(drop_day, day) for day in days)))
    assert asyncio.run(counts()) == {"entries_waiting": 0, "entries_default": 0, "sessions": 0}


def _next(day: str) -> str:
    """Return the day after ``day`` (YYYY-MM-DD)."""
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()
