"""Schema migrations: applied once, under a lock, and a database newer than the code is refused."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from server.store.postgres import Migration, SchemaTooNewError, migrate, migrations
from tests.server.conftest import database_name
from tests.support.postgres import Postgres


def test_the_shipped_migrations_are_numbered_from_one() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name.startswith("keys")


async def test_replicas_starting_together_apply_each_migration_once(postgres: Postgres, request) -> None:
    url = postgres.create_database(database_name(request.node.nodeid))
    conns = [await psycopg.AsyncConnection.connect(url) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(migrate(c) for c in conns))
        assert set(versions) == {len(migrations())}
        cursor = await conns[0].execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in await cursor.fetchall()] == [m.version for m in migrations()]
        await conns[0].execute("SELECT id, key_hash, revoked_at FROM api_keys")
        await conns[0].execute("SELECT request_id, ttft_ms, cache_hit FROM audit_log")
    finally:
        for c in conns:
            await c.close()


async def test_a_database_migrated_by_a_newer_release_is_refused(postgres: Postgres, request) -> None:
    url = postgres.create_database(database_name(request.node.nodeid))
    future = [*migrations(), Migration(len(migrations()) + 1, "from_the_future", "CREATE TABLE future (x int)")]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        assert await migrate(conn, future) == len(future)
        with pytest.raises(SchemaTooNewError, match=r"version \d+, newer than this server knows \(\d+\)"):
            await migrate(conn)
