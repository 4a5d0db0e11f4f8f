"""A throwaway PostgreSQL cluster for the tests: initdb/pg_ctl in a temporary directory.

The cluster runs as an unprivileged user (``postgres`` when the tests run as root, since
PostgreSQL refuses to run as root; the current user otherwise), listens on 127.0.0.1 only, on a
free port, with its socket in its own directory, ``trust`` authentication for that loopback
listener, and ``fsync=off`` (the tests kill the server, never the machine: a commit the server
acknowledged is in the page cache and survives; ``synchronous_commit`` stays on). ``kill()``
SIGKILLs the postmaster like a crash; ``start()`` again recovers the same data directory.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg

from .mqtt_broker import free_port

__all__ = ["PostgresCluster", "PostgresError", "count_entries", "pg_binary"]

HOST = "127.0.0.1"
USER = "asl"  # the cluster's superuser; trust authentication on loopback


class PostgresError(RuntimeError):
    """The cluster would not start or do what it was asked."""


def pg_binary(name: str) -> str:
    """Return the path of a PostgreSQL server program (Debian keeps them off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise PostgresError(
            f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)"
        )
    return candidates[-1]


class PostgresCluster:
    """A PostgreSQL server of the test's own (see the module doc)."""

    def __init__(self, workdir: Path | None = None) -> None:
        """Run ``initdb`` (in ``workdir``, or a new temporary directory); do not start yet."""
        self.port = free_port()
        root = os.geteuid() == 0
        # As root, a directory of our own: pytest's temporary directories are private to root,
        # and the server's user could not reach a data directory inside them.
        self._owns = workdir is None or root
        self.workdir = Path(tempfile.mkdtemp(prefix="pg-")) if self._owns else Path(workdir or ".")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data = self.workdir / "data"
        self.socket_dir = self.workdir / "run"
        self.log_path = self.workdir / "postgres.log"
        self._as: list[str] = []
        if root:
            # PostgreSQL refuses root: run it as the unprivileged system user.
            account = pwd.getpwnam("postgres")
            for path in (self.workdir, self.socket_dir):
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, account.pw_uid, account.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        else:
            self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._initdb()

    @property
    def dsn(self) -> str:
        """Return the connection URL of the cluster's ``postgres`` database."""
        return f"postgresql://{USER}@{HOST}:{self.port}/postgres"

    def url(self, database: str = "postgres") -> str:
        """Return the connection URL of ``database``."""
        return f"postgresql://{USER}@{HOST}:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create the empty database ``name`` (dropped first if it exists); return its URL."""

        async def create() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {name}")
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url(name)

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._as, *command], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n--- log ---\n{self.log_text()}"
            )
        return result

    def _initdb(self) -> None:
        self._run(
            pg_binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        """Start (or restart after kill()) the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses={HOST} -c fsync=off "
            "-c full_page_writes=off"
        )
        self._run(
            pg_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def pid(self) -> int | None:
        """Return the postmaster's pid, or None when it is not running."""
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
        except (FileNotFoundError, IndexError, PermissionError):
            return None
        pid = int(first)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); its backends exit when they notice."""
        pid = self.pid()
        if pid is None:
            raise PostgresError("the cluster is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        # Backends that outlive their postmaster keep the shared memory: wait for them too.
        while time.monotonic() < deadline and _backends_of(self.data):
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server fast (``-m immediate``) if it runs."""
        if self.pid() is not None:
            self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def log_text(self) -> str:
        """Return the server log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except (FileNotFoundError, PermissionError):
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if self._owns:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _backends_of(data: Path) -> list[int]:
    # Processes whose command line names this data directory (postgres backends do not).
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(data).encode() in cmdline:
            found.append(int(entry.name))
    return found


def count_entries(url: str) -> int:
    """Return how many entries the store at ``url`` holds (0 before its schema exists)."""

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SELECT to_regclass('entries')") is None:
                return 0
            return int(await conn.fetchval("SELECT COUNT(*) FROM entries"))
        finally:
            await conn.close()

    return asyncio.run(count())
