"""The session store: entries and sessions in a database, queried like the log files.

``SqliteStore`` writes and reads a store file; ``query`` turns the CLI's filters into SQL and
rows into the reader's ``Session``/``SessionSummary`` objects. ``PostgresStore`` (the
``[postgres]`` extra) is imported on first use, so asyncpg stays optional. See docs/store.md.
"""

from typing import TYPE_CHECKING, Any

from .query import Filters, link, load_runs, load_summaries, parse_where, where_sql
from .schema import LATEST, MIGRATIONS, StoreError, StoreVersionError, migrate
from .sqlite import SqliteStore, sqlite_path

if TYPE_CHECKING:
    from .postgres import PostgresStore, is_postgres_url

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "Filters",
    "PostgresStore",
    "SqliteStore",
    "StoreError",
    "StoreVersionError",
    "link",
    "load_runs",
    "is_postgres_url",
    "load_summaries",
    "migrate",
    "parse_where",
    "sqlite_path",
    "where_sql",
]


def __getattr__(name: str) -> Any:
    """Import the PostgreSQL store on first use (asyncpg is an optional dependency)."""
    if name in ("PostgresStore", "is_postgres_url"):
        from . import postgres

        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
