"""The retention job on a real PostgreSQL: rows past their table's retention (stored responses with their thread, an
hour past its expiry) go, a batch at a time, by one replica at a time, and a pass that fails is tried again."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from server.config.settings import Settings
from server.store.postgres import create_pool, migrate
from server.store.retention import BATCH_ROWS, PRUNE_LOCK_ID, RESPONSE_BATCH_ROWS, Pruner, Retention
from server.store.services import open_database, retentions
from server.telemetry import prometheus
from tests.server.conftest import database_name
from tests.support.postgres import Postgres

BOTH = [Retention("audit_log", 90), Retention("conversation_messages", 30)]


async def _add_rows(conn: psycopg.AsyncConnection, table: str, days_old: int, count: int) -> None:
    for _ in range(count):
        request_id = uuid.uuid4().hex
        if table == "audit_log":
            await conn.execute(
                "INSERT INTO audit_log (request_id, key_id, created_at, endpoint, model, prompt_tokens, "
                "completion_tokens, latency_ms, status, cache_hit) "
                "VALUES (%s, 'key_1', now() - make_interval(days => %s), 'chat', 'm', 1, 1, 1.0, 200, false)",
                (request_id, days_old),
            )
        else:
            await conn.execute(
                "INSERT INTO conversation_messages (conversation_id, key_id, request_id, position, role, content, "
                "created_at) VALUES ('c', 'key_1', %s, 0, 'user', 'hi', now() - make_interval(days => %s))",
                (request_id, days_old),
            )


async def _add_thread(
    pool: AsyncConnectionPool, expires_in: timedelta, responses: int = 1, created_days_ago: int = 0
) -> list[str]:
    """A thread of `responses` responses, each continuing the one before; returns their ids."""
    ids = [f"resp_{uuid.uuid4().hex}" for _ in range(responses)]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO response_threads (id, owner, expires_at, bytes) VALUES (%s, 'key_1', now() + %s, 0)",
            (ids[0], expires_in),
        )
        for previous, response_id in zip([None, *ids], ids, strict=False):
            await conn.execute(
                "INSERT INTO responses (id, owner, created_at, thread_id, previous_id, response, input_items, "
                "context, conversation_items, conversation_bytes) VALUES (%s, 'key_1', "
                "now() - make_interval(days => %s), %s, %s, '{}', '[]', '[]', 0, 0)",
                (response_id, created_days_ago, ids[0], previous),
            )
    return ids


async def _ids(pool: AsyncConnectionPool, table: str) -> set[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"SELECT id FROM {table}")  # noqa: S608
        return {row[0] for row in await cursor.fetchall()}


async def _ages(pool: AsyncConnectionPool, table: str) -> list[int]:
    """Each row's age in whole days, oldest first."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT extract(day FROM now() - created_at)::int FROM {table} ORDER BY created_at"  # noqa: S608
        )
        return [row[0] for row in await cursor.fetchall()]


async def _fill(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn, conn.transaction():
        await _fill_on(conn)


async def _fill_on(conn: psycopg.AsyncConnection) -> None:
    """In the caller's transaction: a pass sees all of the rows or none."""
    await _add_rows(conn, "audit_log", 100, 7)
    await _add_rows(conn, "audit_log", 89, 3)
    await _add_rows(conn, "conversation_messages", 40, 4)
    await _add_rows(conn, "conversation_messages", 10, 2)


async def test_a_pass_deletes_the_rows_past_their_retention_in_batches_and_keeps_the_rest(pool) -> None:
    await _fill(pool)
    before = prometheus.retention_rows_deleted.labels("audit_log")._value.get()

    deleted = await Pruner(pool, BOTH, batch_rows=3).prune()

    assert deleted == {"audit_log": 7, "conversation_messages": 4}, "7 rows in batches of 3: the last one short"
    assert await _ages(pool, "audit_log") == [89, 89, 89]
    assert await _ages(pool, "conversation_messages") == [10, 10]
    assert prometheus.retention_rows_deleted.labels("audit_log")._value.get() - before == 7
    assert await Pruner(pool, BOTH, batch_rows=3).prune() == {"audit_log": 0, "conversation_messages": 0}


async def test_a_table_kept_forever_is_left_alone(pool) -> None:
    await _fill(pool)

    deleted = await Pruner(pool, [Retention("audit_log", 0), Retention("conversation_messages", 30)]).prune()

    assert deleted == {"conversation_messages": 4}
    assert len(await _ages(pool, "audit_log")) == 10


async def test_a_replica_skips_its_pass_while_another_prunes(pool) -> None:
    await _fill(pool)
    pruner = Pruner(pool, BOTH)
    async with pool.connection() as other, other.transaction():
        await other.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK_ID,))
        assert await pruner.prune() is None
        assert len(await _ages(pool, "audit_log")) == 10, "nothing deleted while the other replica prunes"
    assert await pruner.prune() == {"audit_log": 7, "conversation_messages": 4}


async def test_a_failed_pass_is_tried_again_until_one_succeeds(postgres: Postgres, request) -> None:
    """Started before the schema exists (PostgreSQL was unreachable at startup, migrations retry meanwhile): its
    passes fail, and the first one after the migration deletes."""
    url = postgres.create_database(database_name(request.node.nodeid))
    pool = create_pool(url)
    await pool.open(wait=True)
    failed_before = prometheus.retention_passes.labels("failed")._value.get()
    task = asyncio.create_task(Pruner(pool, BOTH, retry_s=0.05, interval_s=3600).run())
    try:
        while prometheus.retention_passes.labels("failed")._value.get() - failed_before < 2:
            assert not task.done(), "a failed pass must not end the job"
            await asyncio.sleep(0.02)
        # One transaction: a pass between the migration and the rows would succeed with nothing to delete and then
        # wait its hour.
        async with pool.connection() as conn, conn.transaction():
            await migrate(conn)
            await _fill_on(conn)
        # A pass deletes the audit rows first, then the messages, each batch its own transaction: wait for both.
        async with asyncio.timeout(20):
            while len(await _ages(pool, "audit_log")) != 3 or await _ages(pool, "conversation_messages") != [10, 10]:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()


async def test_the_server_prunes_with_the_retention_its_settings_give(postgres: Postgres, request) -> None:
    url = postgres.create_database(database_name(request.node.nodeid))
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    seed = create_pool(url)
    await seed.open(wait=True)
    try:
        await _fill(seed)
        await _add_thread(seed, timedelta(days=-1), created_days_ago=31)
        kept = await _add_thread(seed, timedelta(days=30))
        settings = Settings(database_url=url, audit_retention_days=95, conversations_retention_days=0)
        async with AsyncExitStack() as resources:
            await open_database(settings, resources, None)
            async with asyncio.timeout(20):
                while len(await _ages(seed, "audit_log")) != 3 or len(await _ids(seed, "response_threads")) != 1:
                    await asyncio.sleep(0.05)
        assert await _ages(seed, "audit_log") == [89, 89, 89]
        assert len(await _ages(seed, "conversation_messages")) == 6, "0 days: kept forever"
        assert await _ids(seed, "responses") == set(kept), "expired stored responses go too"
        assert await _ids(seed, "response_threads") == {kept[0]}
    finally:
        await seed.close()


async def test_stored_responses_go_with_their_thread_an_hour_after_it_expires(pool) -> None:
    """A thread is kept until the retention has passed since its latest response: one begun 40 days ago that a
    response yesterday continued stays whole. An expired thread goes, its responses (in batches) and then its row,
    but not within the hour after its expiry, while a save that found it alive may still be adding to it."""
    expired = [*await _add_thread(pool, timedelta(days=-1), 3), *await _add_thread(pool, timedelta(hours=-2), 3)]
    just_expired = await _add_thread(pool, timedelta(minutes=-30), 2)
    kept = [*await _add_thread(pool, timedelta(days=1), 3, created_days_ago=40), *await _add_thread(pool, timedelta(1))]
    rules = [Retention("responses", None, batch_rows=2), Retention("response_threads", None)]

    assert await Pruner(pool, rules, batch_rows=3).prune() == {"responses": 6, "response_threads": 2}

    assert await _ids(pool, "responses") == {*just_expired, *kept}
    assert await _ids(pool, "response_threads") == {just_expired[0], kept[0], kept[3]}
    assert not await _ids(pool, "responses") & set(expired)


def test_the_server_deletes_stored_responses_in_smaller_batches_before_their_threads() -> None:
    """A stored response may be megabytes (its conversation), each deleted chunk by chunk from its TOAST table; a
    thread's row goes once its responses have."""
    rules = {rule.table: rule for rule in retentions(Settings())}
    assert rules["responses"].days is None and rules["responses"].batch_rows == RESPONSE_BATCH_ROWS < BATCH_ROWS
    assert (rules["audit_log"].days, rules["conversation_messages"].days) == (90, 30)
    order = [rule.table for rule in retentions(Settings())]
    assert order.index("responses") < order.index("response_threads")
    assert rules["response_bytes"].days is None, "a day's count goes when the day ends"


async def test_a_keys_stored_bytes_of_an_earlier_day_go(pool) -> None:
    """A save drops its own owner's earlier days; a key that stopped saving (a revoked one) would keep its row."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO response_bytes (owner, day, bytes) VALUES ('key:gone', '2026-01-01', 5), "
            "('key:today', (now() AT TIME ZONE 'UTC')::date, 7)"
        )
    assert await Pruner(pool, [Retention("response_bytes", None)]).prune() == {"response_bytes": 1}
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT owner FROM response_bytes")
        assert [row[0] for row in await cursor.fetchall()] == ["key:today"]
