"""The PostgreSQL store: the SQLite store's placement and derivation, over asyncpg.

``PostgresStore`` runs :class:`~.sqlite.SqliteStore`'s own write and read code (run placement,
parking, adoption, sessions rows derived or added to) over a small connection object that speaks
the subset of ``sqlite3`` that code uses, translated to asyncpg: ``?`` becomes ``$n``, a batch of
entries becomes one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING``, a batch of
row updates one pipelined ``executemany``, and each transaction begins by taking a per-session
advisory lock for every id of its batch (the store's ``_begin`` hook). The rows are therefore
derived by the same code as SQLite's, and two writers of one session serialize on it. The store
code reads a batch's sessions rows in one query and sends its row updates together, so a batch
costs a handful of round trips whatever the number of its sessions.

Everything here is blocking, as for SQLite: the CLI and ``collect``'s commit thread call it
directly. asyncpg needs an event loop, so each store owns a private one, running in its own
daemon thread; calls hand it a coroutine and wait. The caller's loop (``collect``'s) is never
blocked by a query, and the connection stays on the one loop that made it.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Final, TypeVar, cast

import asyncpg  # type: ignore[import-untyped]  # no stubs; typed here where used

from . import rows
from .schema import LATEST, MIGRATIONS, StoreError, StoreVersionError
from .sqlite import SqliteStore

__all__ = ["PostgresStore", "is_postgres_url", "postgres_ddl"]

_T = TypeVar("_T")
# First key of the two-key advisory locks (a namespace of this library's): sessions, migrations.
_LOCK_SESSIONS: Final = 0x41534C31
_LOCK_MIGRATE: Final = 0x41534C30
_PLACEHOLDER: Final = re.compile(r"\?")
_STATUS_COUNT: Final = re.compile(r"(\d+)\Z")
# The entries columns' PostgreSQL types, for the arrays of the batch insert.
_ENTRY_TYPES: Final = (
    "text",
    "text",
    "bigint",
    "text",
    "text",
    "text",
    "bigint",
    "text",
    "jsonb",
    "json",
)
_BATCH_INSERT: Final = (
    f"INSERT INTO entries ({', '.join(rows.ENTRY_COLUMNS)}) "
    "SELECT * FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_ENTRY_TYPES, 1))
    + ") ON CONFLICT (session_id, run, seq) DO NOTHING"
)


def _numbered(sql: str) -> str:
    """Return ``sql`` with PostgreSQL's ``$1, $2...`` for SQLite's ``?`` placeholders."""
    numbered = iter(range(1, sql.count("?") + 1))
    return _PLACEHOLDER.sub(lambda _: f"${next(numbered)}", sql)


def is_postgres_url(url: str) -> bool:
    """Return whether ``url`` names a PostgreSQL store (``postgresql://`` or ``postgres://``)."""
    return url.startswith(("postgresql://", "postgres://"))


def postgres_ddl(statement: str) -> str:
    """Return a portable migration statement in PostgreSQL's dialect.

    - Text compares byte by byte (``COLLATE "C"``), as in SQLite: runs, stamps and the ``~`` and
      ``!`` markers must sort the same in both, whatever the database's locale.
    - Integers are 64-bit (SQLite's ``INTEGER`` is): a hostile ``levelno`` or a huge ``missing``
      count fits.
    - ``custom_fields`` is ``JSONB`` (queried, indexable); the JSON shown back to users (the
      whole entry, metadata, summary, levels) is ``JSON``, which keeps the text as written: the
      key order, hence the CLI's output, stays the file's (``JSONB`` would reorder keys).
    """
    statement = statement.replace("custom_fields {json}", "custom_fields JSONB")
    statement = statement.replace("{json}", "JSON")
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', statement)


def _count(status: str) -> int:
    found = _STATUS_COUNT.search(status)
    return int(found.group(1)) if found else 0


class _Cursor:
    """The rows of one statement, as much of ``sqlite3.Cursor`` as the store code uses."""

    def __init__(self, records: list[tuple[Any, ...]], rowcount: int) -> None:
        self.records = records
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.records[0] if self.records else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.records

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.records)


class _Connection:
    """An asyncpg connection on a private loop, with the ``sqlite3`` calls the store makes."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.total_changes = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="asl-postgres", daemon=True
        )
        self.thread.start()
        self.pg: asyncpg.Connection | None = None
        try:
            self.connect()
        except BaseException:
            self.close()
            raise

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the private loop and return its result."""
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def connect(self) -> None:
        """Open the connection (raises what asyncpg raises: a wrong URL, a refused login)."""
        self.run(self.live())

    async def live(self) -> asyncpg.Connection:
        """Return the connection, reconnecting: a writer outlives a restart of the server."""
        if self.pg is None or self.pg.is_closed():
            self.pg = await asyncpg.connect(self.url, timeout=self.timeout)
        return self.pg

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        """Run one statement (``?`` placeholders) and return its rows or its change count."""
        return self.run(self._execute(_numbered(sql), tuple(params)))

    def begin(self, lock_ids: Sequence[str]) -> None:
        """Open a transaction and take the advisory lock of every session id in it."""
        self.run(self._begin(list(lock_ids)))

    async def _begin(self, lock_ids: list[str]) -> None:
        pg = await self.live()
        await pg.execute("BEGIN")
        if lock_ids:
            # Distinct lock keys in ascending order: two writers never wait on each other in
            # opposite orders (ids whose hashes collide share a key, and still cannot deadlock).
            await pg.execute(
                "SELECT pg_advisory_xact_lock($1::int, k) FROM "
                "(SELECT DISTINCT hashtext(i) AS k FROM unnest($2::text[]) AS i ORDER BY k) AS s",
                _LOCK_SESSIONS,
                lock_ids,
            )

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> _Cursor:
        pg = await self.live()
        if sql.lstrip()[:6].upper() == "SELECT":
            records = await pg.fetch(sql, *params)
            return _Cursor([tuple(r) for r in records], len(records))
        status = await pg.execute(sql, *params)
        changed = _count(status) if status.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE") else 0
        self.total_changes += changed
        return _Cursor([], changed)

    def executemany(self, sql: str, values: Sequence[Sequence[Any]]) -> _Cursor:
        """Run a batch: entries rows in one ``INSERT ... unnest``; other statements pipelined.

        For an ``UPDATE`` the change count is the number of rows given (asyncpg's
        ``executemany`` reports none; the store's batched updates each name an existing row).
        """
        if not sql.startswith("INSERT INTO entries"):

            async def pipelined() -> _Cursor:
                pg = await self.live()
                await pg.executemany(_numbered(sql), [tuple(v) for v in values])
                self.total_changes += len(values)
                return _Cursor([], len(values))

            return self.run(pipelined())
        columns = [list(column) for column in zip(*values, strict=True)] or [
            [] for _ in rows.ENTRY_COLUMNS
        ]

        async def insert() -> _Cursor:
            pg = await self.live()
            status = await pg.execute(_BATCH_INSERT, *columns)
            self.total_changes += _count(status)
            return _Cursor([], _count(status))

        return self.run(insert())

    def close(self) -> None:
        """Close the connection and stop the private loop."""
        if self.pg is not None and not self.pg.is_closed():
            try:
                self.run(self.pg.close(timeout=self.timeout))
            except (TimeoutError, OSError, asyncpg.PostgresError):
                self.pg.terminate()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class PostgresStore(SqliteStore):
    """One connection to a PostgreSQL store: the SQLite store's writes and reads, on asyncpg.

    Args:
        url: ``postgresql://user[:password]@host[:port]/database`` (asyncpg's DSN; the usual
            ``PG*`` environment variables and ``~/.pgpass`` apply).
        timeout: seconds to wait for a connection.
        create: build the schema if the database has none (the CLI reads existing stores only).

    Raises:
        StoreVersionError: the database holds a newer schema than this library's.
        StoreError: ``create`` is false and the database holds no store; the server cannot
            be reached or refuses the login or the migration (asyncpg's message).
    """

    dialect: Final = "postgresql"

    def __init__(self, url: str, *, timeout: float = 10.0, create: bool = True) -> None:
        if not is_postgres_url(url):
            raise StoreError(f"not a PostgreSQL store URL (postgresql://...): {url!r}")
        self.path = url
        self.journal_mode = "postgresql"
        self._rows: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._updates: list[tuple[Any, ...]] = []
        try:
            self.pg = _Connection(url, timeout)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc
        # SqliteStore's code runs over it: it makes exactly the calls _Connection provides.
        self.conn = cast(sqlite3.Connection, self.pg)
        try:
            self.found_version = self.pg.run(self._migrate(create))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            self.pg.close()
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc
        except BaseException:
            self.pg.close()
            raise

    async def _version(self, pg: asyncpg.Connection) -> int:
        if await pg.fetchval("SELECT to_regclass('schema_version')") is None:
            return 0
        found = await pg.fetchval("SELECT MAX(version) FROM schema_version")
        return int(found) if found is not None else 0

    async def _migrate(self, create: bool) -> int:
        """Bring the database to the latest schema in one transaction; return the version found.

        A transaction-level advisory lock first: two collectors starting on a new database
        migrate it once, the second finds it done.
        """
        pg = await self.pg.live()
        async with pg.transaction():
            await pg.execute("SELECT pg_advisory_xact_lock($1::int, 0)", _LOCK_MIGRATE)
            found = await self._version(pg)
            if found > LATEST:
                raise StoreVersionError(
                    f"the store has schema version {found}, newer than this library's "
                    f"{LATEST}: upgrade async_session_logger to use it"
                )
            if found == 0 and not create:
                raise StoreError(f"{self.path}: the database holds no session store")
            if found == 0:
                await pg.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for version in range(found + 1, LATEST + 1):
                for statement in MIGRATIONS[version]:
                    await pg.execute(postgres_ddl(statement))
                await pg.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return found

    def close(self) -> None:
        """Close the connection."""
        self.pg.close()

    @property
    def version(self) -> int:
        """Return the schema version of the database."""

        async def version() -> int:
            return await self._version(await self.pg.live())

        return self.pg.run(version())

    def _begin(self, session_ids: list[str]) -> None:
        """Open the batch's transaction, holding the advisory lock of each of its session ids.

        Concurrent writers of one id serialize on it (and derive its rows as one writer would);
        writers of different ids run in parallel.
        """
        self.pg.begin(session_ids)

    def write(self, lines: Sequence[bytes]) -> list[int]:
        """Store the entries of JSON ``lines`` in one transaction; return the unusable ones.

        As :meth:`SqliteStore.write`, with the advisory locks of the batch's session ids taken
        at the start of the transaction (:meth:`_begin`).

        Raises:
            StoreError: the server refused or the connection failed (nothing was committed).
        """
        try:
            return super().write(lines)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # A lost connection is reopened by the next write; the caller keeps the batch.
            pg = self.pg.pg
            if pg is not None and not pg.is_closed() and pg.is_in_transaction():
                pg.terminate()
            raise StoreError(f"PostgreSQL store: {exc}") from exc
