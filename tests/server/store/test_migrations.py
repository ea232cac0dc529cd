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
        await conns[0].execute(
            "SELECT id, owner, thread_id, previous_id, deleted, response, input_items, context, conversation_items, "
            "conversation_bytes FROM responses"
        )
        await conns[0].execute("SELECT id, owner, expires_at, bytes FROM response_threads")
    finally:
        for c in conns:
            await c.close()


async def test_responses_kept_before_their_size_was_recorded_are_measured(postgres: Postgres, request) -> None:
    """A continuation reads a stored conversation's size from its row: rows written before the columns existed are
    measured by the migration that adds them, so they are bounded like new ones."""
    url = postgres.create_database(database_name(request.node.nodeid))
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn, migrations()[:3])
        await conn.execute(
            "INSERT INTO responses VALUES ('resp_1', 'key:a', now(), now(), %s, %s, %s)",
            ('{"output": [{"id": "m"}]}', '[{"id": "i"}]', '[{"id": "a"}, {"id": "b"}]'),
        )
        await migrate(conn)
        cursor = await conn.execute("SELECT conversation_items, conversation_bytes FROM responses")
        assert await cursor.fetchall() == [
            (4, len('[{"id": "m"}]') + len('[{"id": "i"}]') + len('[{"id": "a"}, {"id": "b"}]'))
        ]


async def test_a_database_migrated_by_a_newer_release_is_refused(postgres: Postgres, request) -> None:
    url = postgres.create_database(database_name(request.node.nodeid))
    future = [*migrations(), Migration(len(migrations()) + 1, "from_the_future", "CREATE TABLE future (x int)")]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        assert await migrate(conn, future) == len(future)
        with pytest.raises(SchemaTooNewError, match=r"version \d+, newer than this server knows \(\d+\)"):
            await migrate(conn)


def test_the_server_refuses_a_newer_database_with_one_line(postgres: Postgres, request) -> None:
    from tests.support.cli import run_cli

    url = postgres.create_database(database_name(request.node.nodeid))
    postgres.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz);"
        "INSERT INTO schema_migrations VALUES (999, 'future', now())",
        database_name(request.node.nodeid),
    )
    result = run_cli("serve", GGUFSTACK_DATABASE_URL=url, GGUFSTACK_PORT="1")
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "version 999, newer than this server knows" in lines[0], result.stderr
    assert postgres.password not in result.stderr
