"""The throwaway PostgreSQL cluster of the store tests: real server and client, crash, recovery."""

from __future__ import annotations

import os
from collections.abc import Iterator

import asyncpg
import pytest

from .postgres_cluster import PostgresCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """One cluster for this module (initdb takes about a second)."""
    with PostgresCluster(tmp_path_factory.mktemp("pg")) as running:
        yield running


async def test_cluster_serves_loopback_only_with_a_real_client(cluster: PostgresCluster) -> None:
    """asyncpg connects over 127.0.0.1; the server listens there only and runs unprivileged."""
    conn = await asyncpg.connect(cluster.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SELECT current_setting('server_version_num')::int") >= 150000
    finally:
        await conn.close()
    pid = cluster.pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid != 0  # never root


async def test_killed_cluster_restarts_with_its_committed_data(cluster: PostgresCluster) -> None:
    """SIGKILL the postmaster mid-connection, start again: committed rows are there."""
    conn = await asyncpg.connect(cluster.dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS t (i int PRIMARY KEY)")
    await conn.execute("INSERT INTO t SELECT generate_series(1, 100) ON CONFLICT DO NOTHING")
    cluster.kill()
    with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT count(*) FROM t")
    conn.terminate()
    cluster.start()
    conn = await asyncpg.connect(cluster.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM t") == 100
    finally:
        await conn.close()
