"""The store's tables, and the versioned migrations that build and upgrade them.

The DDL is portable SQL: the same statements run on SQLite and PostgreSQL, with ``{json}``
standing for the column type of JSON documents (``TEXT`` on SQLite, ``JSONB`` on PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from .._errors import SessionLoggerError

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "StoreError",
    "StoreVersionError",
    "migrate",
    "version_of",
]

# Each version's statements take the schema from the version before it to this one.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE entries (
            session_id TEXT NOT NULL,
            run TEXT NOT NULL,
            seq BIGINT NOT NULL,
            timestamp TEXT,
            event TEXT NOT NULL,
            level TEXT,
            levelno INTEGER,
            message TEXT,
            custom_fields {json},
            entry {json} NOT NULL,
            PRIMARY KEY (session_id, run, seq)
        )""",
        """CREATE TABLE sessions (
            session_id TEXT NOT NULL,
            run TEXT NOT NULL,
            parent TEXT,
            host TEXT,
            started TEXT,
            closed TEXT,
            first_stamp TEXT,
            status TEXT NOT NULL,
            duration_s DOUBLE PRECISION,
            metadata {json} NOT NULL,
            summary {json} NOT NULL,
            levels {json} NOT NULL,
            entries INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            discarded INTEGER NOT NULL,
            missing INTEGER NOT NULL,
            stored INTEGER NOT NULL,
            PRIMARY KEY (session_id, run)
        )""",
        "CREATE INDEX sessions_by_started ON sessions (started)",
        "CREATE INDEX sessions_by_status ON sessions (status, started)",
    ),
    # Version 2: children are looked up by their parent's id (show, --tree).
    2: ("CREATE INDEX sessions_by_parent ON sessions (parent)",),
}
LATEST: Final = max(MIGRATIONS)


class StoreError(SessionLoggerError):
    """Raised when a store cannot be used: not a database, a refused link, a bad URL."""


class StoreVersionError(StoreError, RuntimeError):
    """Raised when a store was made by a newer version of the library than this one."""


def version_of(conn: sqlite3.Connection) -> int:
    """Return the schema version of an open database (0: no store tables yet)."""
    found = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, *, target: int = LATEST, json_type: str = "TEXT") -> int:
    """Bring the database to ``target`` in one transaction; return the version found.

    The transaction takes the write lock first (``BEGIN IMMEDIATE``): two processes opening a
    new file at once migrate it once, the second finds it done.

    Raises:
        StoreVersionError: the database is newer than this library knows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version_of(conn)
        if found > LATEST:
            raise StoreVersionError(
                f"the store has schema version {found}, newer than this library's {LATEST}: "
                "upgrade async_session_logger to use it"
            )
        if found == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version in range(found + 1, target + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement.replace("{json}", json_type))
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found
