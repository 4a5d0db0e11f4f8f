"""``sessions --store URL`` and ``show --store URL ID``: the same output, read from a store.

The commands call in here instead of reading files; what comes back is what their file
readers build (``SessionSummary`` lists with children linked, ``Session`` runs with their
children), so every line they print is rendered by the same code.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from .._reader import Session, SessionSummary
from ..store import Filters, SqliteStore, StoreError, load_runs, load_summaries, sqlite_path
from ._common import EXIT_USAGE, CliError, parse_meta, parse_when
from ._render import escape

__all__ = [
    "add_options",
    "check_source",
    "open_store",
    "show_runs",
    "shown_url",
    "summaries",
    "where_option",
]


def where_option(text: str) -> str:
    """Turn ``metadata.KEY=VALUE`` into the ``KEY=VALUE`` of ``--meta`` (argparse type)."""
    column, sep, value = text.partition("=")
    if not sep or not column.startswith("metadata.") or column == "metadata.":
        raise argparse.ArgumentTypeError(f"expected metadata.KEY=VALUE, got {text!r}")
    return f"{column.removeprefix('metadata.')}={value}"


def add_options(parser: argparse.ArgumentParser, *, where: bool) -> None:
    """Add ``--store URL`` (and, for ``sessions``, ``--where metadata.KEY=VALUE``)."""
    parser.add_argument(
        "--store",
        metavar="URL",
        help=(
            "read a session store instead of files: sqlite:///PATH or "
            "postgresql://USER@HOST[:PORT]/DB (see docs/store.md)"
        ),
    )
    if where:
        parser.add_argument(
            "--where",
            dest="meta",
            action="append",
            type=where_option,
            metavar="metadata.KEY=VALUE",
            help="only sessions whose metadata KEY equals VALUE (as --meta)",
        )


def check_source(args: argparse.Namespace) -> None:
    """Refuse neither or both of PATHs and ``--store`` (a usage error)."""
    if bool(args.paths) == bool(args.store):
        raise CliError("give log files (PATH ...) or --store URL, one of them", EXIT_USAGE)


def open_store(url: str) -> SqliteStore:
    """Open an existing store for reading.

    Raises:
        CliError: an unknown URL scheme, a missing or damaged file, a newer schema, a
            PostgreSQL server that cannot be reached or holds no store.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgres(url)
    try:
        return SqliteStore(sqlite_path(url), create=False)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_USAGE if "URL" in str(exc) else 1) from exc
    except OSError as exc:
        raise CliError(f"{url}: {exc.strerror or exc}") from exc


def _open_postgres(url: str) -> SqliteStore:
    """Open an existing PostgreSQL store (asyncpg is imported only here: the extra)."""
    try:
        from ..store.postgres import PostgresStore
    except ImportError:
        raise CliError(
            "PostgreSQL stores need asyncpg: pip install 'async-session-logger[postgres]'"
        ) from None
    try:
        return PostgresStore(url, create=False)
    except StoreError as exc:
        # asyncpg's messages name the host and database, never the password.
        raise CliError(str(exc)) from exc


def shown_url(url: str) -> str:
    """Return a store URL fit to print: a PostgreSQL URL's password is masked."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]*:)[^@/]*@", r"\1***@", url)


def summaries(args: argparse.Namespace) -> list[SessionSummary]:
    """Return the sessions ``sessions`` lists from ``args.store``, children linked.

    With ``--tree`` every session (the tree needs the ancestors the filters leave out);
    otherwise only the rows the filters select in SQL. The command filters again as for files.
    """
    filters = Filters(
        status=args.status or (),
        since=parse_when(args.since, "--since") if args.since else None,
        until=parse_when(args.until, "--until") if args.until else None,
        meta=parse_meta(args.meta or []),
    )
    store = open_store(args.store)
    try:
        return load_summaries(store, filters, every=bool(args.tree))
    finally:
        store.close()


def show_runs(args: argparse.Namespace) -> list[tuple[Session, Sequence[Session | SessionSummary]]]:
    """Return each run of ``args.session_id`` with its children (``--tree``: descendants).

    Raises:
        CliError: no such session in the store.
    """
    store = open_store(args.store)
    try:
        runs = load_runs(store, args.session_id, tree=bool(args.tree))
    finally:
        store.close()
    if not runs:
        raise CliError(f"no session '{escape(args.session_id)}' in {escape(shown_url(args.store))}")
    return runs
