"""The session store: entries and sessions in a database, queried like the log files.

``SqliteStore`` writes and reads a store file; ``query`` turns the CLI's filters into SQL and
rows into the reader's ``Session``/``SessionSummary`` objects. See docs/store.md.
"""

from .query import Filters, link, load_runs, load_summaries, parse_where, where_sql
from .schema import LATEST, MIGRATIONS, StoreError, StoreVersionError, migrate
from .sqlite import SqliteStore, sqlite_path

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "Filters",
    "SqliteStore",
    "StoreError",
    "StoreVersionError",
    "link",
    "load_runs",
    "load_summaries",
    "migrate",
    "parse_where",
    "sqlite_path",
    "where_sql",
]
