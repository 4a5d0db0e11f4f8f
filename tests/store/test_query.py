"""Queries over a store: filters in parameterised SQL, and the CLI's objects from rows."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from async_session_logger._reader import SessionBuilder, SummaryBuilder, read_entries
from async_session_logger.cli._common import CliError
from async_session_logger.cli._from_store import add_options, show_runs, summaries
from async_session_logger.cli.sessions import describe
from async_session_logger.store import Filters, SqliteStore, load_summaries, where_sql

from . import write_story


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real log file and the store written beside it by the same logger."""
    root = tmp_path_factory.mktemp("story")
    write_story(root / "log.jsonl", root / "store.db")
    return root / "log.jsonl", root / "store.db"


def _ids(store: Path, filters: Filters) -> list[str]:
    opened = SqliteStore(str(store), create=False)
    try:
        return [s.session_id for s in load_summaries(opened, filters, every=False)]
    finally:
        opened.close()


def _args(*argv: str, where: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("session_id", nargs="?")
    parser.add_argument("--status", action="append")
    parser.add_argument("--since")
    parser.add_argument("--until")
    parser.add_argument("--meta", action="append", default=[])
    parser.add_argument("--tree", action="store_true")
    add_options(parser, where=where)
    return parser.parse_args(argv)


def test_filters_select_in_sql(stored: tuple[Path, Path]) -> None:
    """Status, since and metadata filters pick the rows the file filters would pick."""
    _, db = stored
    assert _ids(db, Filters(status=["interrupted"])) == ["req-3", "open-1"]
    assert _ids(db, Filters(meta=[("user_id", "u1")])) == ["req-1", "req-3", "req-3"]
    assert _ids(db, Filters(meta=[("nested.k", "v")])) == ["req-2"]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert _ids(db, Filters(since=later)) == []
    assert len(_ids(db, Filters(since=later - timedelta(hours=3)))) == 6


def test_hostile_where_values_match_nothing(stored: tuple[Path, Path]) -> None:
    """SQL in a --where value is a value: it matches only that text and changes nothing."""
    _, db = stored
    before = SqliteStore(str(db), create=False).table("sessions")
    assert _ids(db, Filters(meta=[("user_id", "x' OR '1'='1")])) == []
    assert _ids(db, Filters(meta=[("user_id", "'; DROP TABLE sessions; --")])) == []
    # The one session whose user_id is literally this text, and no other.
    assert _ids(db, Filters(meta=[("user_id", "x' OR 1=1 --")])) == ["open-1"]
    # Keys with quotes cannot name a JSON path: filtered in Python only, and match nothing.
    assert _ids(db, Filters(meta=[('user_id") OR 1=1 --', "u1")])) == _ids(db, Filters())
    after = SqliteStore(str(db), create=False).table("sessions")
    assert after == before
    where, params = where_sql(Filters(meta=[("user_id", "x' OR 1=1 --")]))
    assert "x' OR" not in where and "x' OR 1=1 --" in params


def test_sessions_from_store_equal_the_files(stored: tuple[Path, Path]) -> None:
    """`sessions --store` gets the summaries `sessions FILE` builds: same JSON, same tree."""
    log, db = stored
    builder = SummaryBuilder()
    for entry in read_entries(log):
        builder.add(entry)
    from_file = builder.finish()
    from_store = summaries(_args("--store", f"sqlite:///{db}", "--tree"))

    def key(described: dict[str, object]) -> str:
        return f"{described['session_id']} {described['started_at']}"

    assert sorted(map(describe, from_store), key=key) == sorted(map(describe, from_file), key=key)
    tree = {s.session_id: [c.session_id for c in s.children] for s in from_store}
    assert tree["req-1"] == ["job-1"]
    filtered = summaries(_args("--store", f"sqlite:///{db}", "--where", "metadata.user_id=u2"))
    assert [s.session_id for s in filtered] == ["req-2"]


@pytest.mark.parametrize("tree", [False, True])
def test_show_from_store_equals_the_files(stored: tuple[Path, Path], tree: bool) -> None:
    """`show --store ID` gets the runs `show ID FILE` builds: entries, start, close, children."""
    log, db = stored
    builder = SessionBuilder()
    for entry in read_entries(log):
        builder.add(entry)
    from_file = [s for s in builder.finish() if s.session_id in ("req-1", "req-3")]
    argv = ["req-1", "--store", f"sqlite:///{db}"] + (["--tree"] if tree else [])
    ((session, children),) = show_runs(_args(*argv, where=False))
    assert session == from_file[0]
    assert [c.session_id for c in children] == ["job-1"]
    runs = show_runs(_args("req-3", "--store", f"sqlite:///{db}", where=False))
    assert [run for run, _ in runs] == from_file[1:]


def test_store_errors_are_cli_errors(tmp_path: Path) -> None:
    """A missing file, a file that is no database, an unknown id: one clear CLI error each."""
    with pytest.raises(CliError, match="no such store file"):
        summaries(_args("--store", f"sqlite:///{tmp_path / 'none.db'}"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all\n" * 50)
    with pytest.raises(CliError, match="is not an SQLite database"):
        summaries(_args("--store", f"sqlite:///{junk}"))
    empty = tmp_path / "empty.db"
    SqliteStore(str(empty)).close()
    with pytest.raises(CliError, match="no session 'x'"):
        show_runs(_args("x", "--store", f"sqlite:///{empty}", where=False))
    with pytest.raises(CliError, match="PostgreSQL"):
        summaries(_args("--store", "postgresql://localhost/db"))
    assert junk.read_bytes() == b"not a database at all\n" * 50


def test_where_option_rejects_other_columns() -> None:
    """--where takes metadata.KEY=VALUE only, and becomes a --meta pair."""
    with pytest.raises(SystemExit):
        _args("--where", "status=error")
    assert _args("--where", "metadata.a.b=c=d").meta == ["a.b=c=d"]


def test_the_commands_print_the_same_for_a_store_and_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sessions` and `show` over `--store sqlite:///...` print exactly what they print over
    the same sessions in a file; method="sqlite" writes the store."""
    from async_session_logger import SessionLogger
    from async_session_logger.cli import main

    log_path, db_path = tmp_path / "log.jsonl", tmp_path / "s.db"
    with SessionLogger(
        method=["file", "sqlite"],
        path=str(log_path),
        sqlite={"path": str(db_path)},
        dead_letter_path=None,
        buffer_level="DEBUG",
    ) as log:
        with log.session("parent", {"user_id": "u1"}) as parent:
            parent.debug("held")
            parent.annotate(rows=3)
            with log.session("child", parent=parent) as child:
                child.error("failed")
        with log.session("other", {"user_id": "u2"}):
            pass
    store = f"sqlite:///{db_path}"
    for from_file, from_store in (
        (["sessions", str(log_path)], ["sessions", "--store", store]),
        (["sessions", "--tree", str(log_path)], ["sessions", "--tree", "--store", store]),
        (
            ["sessions", "--meta", "user_id=u1", str(log_path)],
            ["sessions", "--where", "metadata.user_id=u1", "--store", store],
        ),
        (
            ["show", "parent", "--tree", str(log_path)],
            ["show", "parent", "--tree", "--store", store],
        ),
        (["show", "child", "--json", str(log_path)], ["show", "child", "--json", "--store", store]),
    ):
        assert main(from_file) == 0
        expected = capsys.readouterr().out
        assert main(from_store) == 0
        assert capsys.readouterr().out == expected, from_store
        assert expected.strip()
    assert main(["sessions"]) == 2  # neither files nor a store: a usage error
    assert main(["sessions", str(log_path), "--store", store]) == 2  # both
