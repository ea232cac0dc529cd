"""The PostgreSQL response store: the store contract (owner only, expiry, NUL characters, the bound), a
conversation's turns kept once and read back along their chain, threads kept until their latest response expires,
saves charged what they keep, deletes that keep what later responses continue, and rows kept before threads."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import replace
from unittest.mock import ANY

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from server.store.postgres import create_pool, migrate, migrations
from server.store.responses import ConversationBound, StoredResponse, json_size
from server.store.responses_postgres import PostgresResponseStore
from tests.server.conftest import database_name
from tests.server.store.test_responses import a_response, conversation_within_the_bound, owner_only
from tests.support.postgres import Postgres


async def test_postgres_store_is_per_owner_and_expires(pool: AsyncConnectionPool) -> None:
    store = PostgresResponseStore(pool, retention_s=60)
    await owner_only(store)
    await store.save(a_response("resp_nul"))
    found = await store.response("resp_nul", "key:a")
    assert found is not None and found["output"][0]["content"][0]["text"] == "hi\ufffd"
    await store.save(a_response("resp_old", created_at=time.time() - 61))
    for read in (store.conversation, store.response, store.input_items):
        assert await read("resp_old", "key:a") is None
        assert await read("resp\x00", "key:a") is None


async def test_postgres_store_keeps_a_written_backslash_u0000(pool: AsyncConnectionPool) -> None:
    """Only the NUL character is replaced (jsonb holds none, in a value or a key), not the six characters `\\u0000`
    a user may write, as in a JavaScript regex."""
    store = PostgresResponseStore(pool, retention_s=60)
    written = r"s.replace(/\u0000/g, '')"
    stored = a_response("resp_text")
    stored.input_items[0]["content"][0]["text"] = written + "\x00"
    stored.response["metadata"] = {"k\x00": "v"}
    await store.save(stored)
    items, response = await store.input_items("resp_text", "key:a"), await store.response("resp_text", "key:a")
    assert items is not None and items[0]["content"][0]["text"] == written + "\ufffd"
    assert response is not None and response["metadata"] == {"k\ufffd": "v"}


async def test_postgres_store_reads_a_conversation_only_within_its_bound(pool: AsyncConnectionPool) -> None:
    await conversation_within_the_bound(
        PostgresResponseStore(pool, retention_s=60, bound=ConversationBound(bytes=1024))
    )


_FOUND_BY = "id, owner, thread_id, deleted"


@pytest.mark.parametrize(
    ("use", "columns"),
    [
        ("response", "response"),
        ("input_items", "input_items"),
        ("conversation", "previous_id, context, input_items, response, conversation_items, conversation_bytes"),
    ],
)
async def test_postgres_store_reads_only_the_columns_each_use_needs(
    pool: AsyncConnectionPool, postgres: Postgres, request: pytest.FixtureRequest, use: str, columns: str
) -> None:
    """GET /v1/responses/{id} selected the whole row, the conversation it continued (`context`) included, which may be
    megabytes it never used: 8 concurrent reads of a small response at a long chain's tail took 4 s. A role allowed
    only the columns a use needs shows that it reads nothing else (PostgreSQL refuses a column it may not read)."""
    store = PostgresResponseStore(pool, retention_s=60)
    await store.save(a_response("resp_1"))
    role, secret = f"r_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    database = database_name(request.node.nodeid)
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'", database)
    postgres.execute(f"GRANT SELECT ({_FOUND_BY}, {columns}) ON responses TO {role}", database)
    postgres.execute(f"GRANT SELECT (id, expires_at) ON response_threads TO {role}", database)
    limited = create_pool(postgres.url(database, user=role, password=secret))
    await limited.open(wait=True)
    try:
        reader = PostgresResponseStore(limited, retention_s=60)
        assert await getattr(reader, use)("resp_1", "key:a") is not None
    finally:
        await limited.close()


async def test_postgres_store_outage_is_unavailable(pool: AsyncConnectionPool) -> None:
    from server.store.errors import StoreUnavailableError

    store = PostgresResponseStore(pool, retention_s=60)
    await pool.close()
    with pytest.raises(StoreUnavailableError):
        await store.response("resp_1", "key:a")


def _continuing(previous: StoredResponse, response_id: str, created_at: float | None = None) -> StoredResponse:
    """The response a continuation of `previous` stores: its conversation as context, one turn of its own."""
    turn = a_response(response_id, previous.owner, created_at, context=previous.conversation())
    for item in (*turn.input_items, *turn.response["output"]):
        item["id"] = f"{item['id']}_{response_id}"
    size = json_size([*turn.context, *turn.input_items, *turn.response["output"]])
    return replace(turn, size=size, previous_id=previous.id)


async def _rows(pool: AsyncConnectionPool, where: str = "true") -> list[tuple]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, thread_id, previous_id, deleted, context::text, octet_length(response::text) "  # noqa: S608
            f"+ octet_length(input_items::text) + octet_length(context::text) FROM responses WHERE {where} "
            "ORDER BY created_at, id"
        )
        return list(await cursor.fetchall())


async def test_postgres_store_keeps_each_turn_once_and_reads_the_chain_back(pool: AsyncConnectionPool) -> None:
    """A continuation keeps its own items and a link, not a copy of the conversation before it: a chat of n turns
    took about n²/2 turns of rows, now n. A continuation of any of its responses reads the whole conversation back,
    in order, and the size each response records is that whole conversation's."""
    store = PostgresResponseStore(pool, retention_s=600)
    chain = [a_response("resp_0", created_at=time.time() - 30)]
    for turn in range(1, 30):
        chain.append(_continuing(chain[-1], f"resp_{turn}", created_at=time.time() - 30 + turn))
    for stored in chain:
        await store.save(stored)

    for stored in (chain[1], chain[17], chain[-1]):
        found = await store.conversation(stored.id, "key:a")
        assert found is not None and (found.items, found.size) == (stored.items, stored.size)
        assert found.load() == json.loads(json.dumps(stored.conversation()).replace("\\u0000", "\\ufffd"))
    rows = await _rows(pool)
    assert {row[1] for row in rows} == {"resp_0"}, "one thread"
    assert [row[2] for row in rows] == [None, *(s.id for s in chain[:-1])]
    assert all(row[4] == "[]" for row in rows[1:]), "no copy of what came before"
    first = rows[0][5]
    assert sum(row[5] for row in rows) < 2 * len(chain) * first, "linear in the turns"
    assert await store.conversation("resp_17", "key:b") is None


async def test_postgres_store_keeps_a_thread_until_its_latest_response_expires(pool: AsyncConnectionPool) -> None:
    """A conversation's first response, older than the retention, is kept while a later one is not: its continuation
    must find every turn. A response continuing a thread that expired keeps its whole conversation itself."""
    store = PostgresResponseStore(pool, retention_s=60)
    first = a_response("resp_first", created_at=time.time() - 50)
    await store.save(first)
    await store.save(_continuing(first, "resp_next"))
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT expires_at - now() FROM response_threads WHERE id = 'resp_first'")
        row = await cursor.fetchone()
    assert row is not None and row[0].total_seconds() > 55, "the thread lives as long as its latest response"

    expired = a_response("resp_expired", created_at=time.time() - 61)
    await store.save(expired)
    late = _continuing(expired, "resp_late")
    await store.save(late)
    assert await store.response("resp_expired", "key:a") is None
    found = await store.conversation("resp_late", "key:a")
    assert found is not None and [i["id"] for i in found.load()] == [i["id"] for i in late.conversation()]
    assert await _rows(pool, "id = 'resp_late'") == [("resp_late", "resp_late", None, False, ANY, ANY)]


async def test_postgres_store_charges_what_a_save_keeps(pool: AsyncConnectionPool) -> None:
    """A response is charged the bytes its row holds; one that keeps its thread longer is charged, besides, the
    thread's bytes times the share of the retention it adds: half the retention added costs half the thread."""
    store = PostgresResponseStore(pool, retention_s=100)
    now = time.time()
    first = a_response("resp_a", created_at=now - 50)
    await store.save(first)
    held = _json_bytes(first.response, first.input_items, first.context)
    assert await store.stored_today("key:a") == held

    second = _continuing(first, "resp_b", created_at=now)
    await store.save(second)
    own = _json_bytes(second.response, second.input_items)
    assert abs(await store.stored_today("key:a") - (held + own + math.ceil(held / 2))) <= 1
    assert await store.stored_today("key:b") == 0


def _json_bytes(*columns: object) -> int:
    """The bytes of the columns' JSON text as the store sends it (ASCII, so characters are bytes)."""
    return sum(len(json.dumps(column)) for column in columns)


async def test_postgres_store_hides_a_deleted_response_that_others_continue(pool: AsyncConnectionPool) -> None:
    """Deleting a response that later ones continue hides it and keeps only what they continue from; once nothing
    continues it, it goes. A continuation of a response deleted since it was read keeps its whole conversation."""
    store = PostgresResponseStore(pool, retention_s=600)
    a = a_response("resp_a")
    b = _continuing(a, "resp_b")
    c = _continuing(b, "resp_c")
    for stored in (a, b, c):
        await store.save(stored)

    assert await store.delete("resp_b", "key:a") is True
    for read in (store.conversation, store.response, store.input_items):
        assert await read("resp_b", "key:a") is None
    assert await store.delete("resp_b", "key:a") is False
    found = await store.conversation("resp_c", "key:a")
    assert found is not None and [i["id"] for i in found.load()] == [i["id"] for i in c.conversation()]
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT response FROM responses WHERE id = 'resp_b'")
        row = await cursor.fetchone()
    assert row is not None and set(row[0]) == {"output"}, "trimmed to what resp_c continues"

    assert await store.delete("resp_c", "key:a") is True
    assert [row[0] for row in await _rows(pool)] == ["resp_a"], "resp_b led nowhere any more"

    assert await store.delete("resp_a", "key:a") is True  # while a continuation of it is being generated
    d = _continuing(a, "resp_d")
    await store.save(d)
    found = await store.conversation("resp_d", "key:a")
    assert found is not None and [i["id"] for i in found.load()] == [i["id"] for i in d.conversation()]
    assert await _rows(pool, "id = 'resp_d'") == [("resp_d", "resp_d", None, False, ANY, ANY)]


async def test_rows_kept_before_threads_are_read_and_continued(postgres: Postgres, request) -> None:
    """Responses stored before migration 0008 hold their whole conversation: each becomes its own thread, keeps its
    expiry, and is continued like any other."""
    url = postgres.create_database(database_name(request.node.nodeid))
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn, migrations()[:7])
        old = a_response("resp_old")
        await conn.execute(
            "INSERT INTO responses (id, owner, created_at, expires_at, response, input_items, context, "
            "conversation_items, conversation_bytes) VALUES (%s, %s, now(), now() + interval '1 day', %s, %s, %s, "
            "%s, %s)",
            (
                old.id,
                old.owner,
                Jsonb(old.response | {"output": []}),
                Jsonb(old.input_items),
                Jsonb(old.context),
                2,
                json_size([*old.context, *old.input_items]),
            ),
        )
        await conn.commit()
        await migrate(conn)
    pool = create_pool(url)
    await pool.open(wait=True)
    try:
        store = PostgresResponseStore(pool, retention_s=60)
        found = await store.conversation("resp_old", "key:a")
        assert found is not None and [i["id"] for i in found.load()] == ["fco_0", "msg_0"]
        previous = replace(old, response=old.response | {"output": []}, size=found.size)
        await store.save(_continuing(previous, "resp_new"))
        found = await store.conversation("resp_new", "key:a")
        assert found is not None and [i["id"] for i in found.load()] == [
            "fco_0",
            "msg_0",
            "msg_0_resp_new",
            "msg_1_resp_new",
        ]
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT expires_at - now() FROM response_threads WHERE id = 'resp_old'")
            row = await cursor.fetchone()
        assert row is not None and row[0].total_seconds() > 80_000, "its own expiry kept"
    finally:
        await pool.close()


async def test_a_save_waiting_on_a_delete_of_what_it_continues_keeps_its_whole_conversation(
    pool: AsyncConnectionPool,
) -> None:
    """A save and a delete in one thread take the thread's row first: a continuation whose response was deleted while
    it waited finds it gone, and keeps its whole conversation itself rather than a link to nothing."""
    store = PostgresResponseStore(pool, retention_s=600)
    first = a_response("resp_first")
    await store.save(first)
    async with pool.connection() as deleting:
        async with deleting.transaction():
            await deleting.execute("SELECT 1 FROM response_threads WHERE id = 'resp_first' FOR UPDATE")
            await deleting.execute("DELETE FROM responses WHERE id = 'resp_first'")
            save = asyncio.create_task(store.save(_continuing(first, "resp_next")))
            async with asyncio.timeout(10):
                while not await _waiting_for_a_lock(pool):
                    await asyncio.sleep(0.01)
        await save
    found = await store.conversation("resp_next", "key:a")
    assert found is not None and [i["id"] for i in found.load()] == [
        i["id"] for i in _continuing(first, "resp_next").conversation()
    ]


async def _waiting_for_a_lock(pool: AsyncConnectionPool) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        row = await cursor.fetchone()
    return row is not None and row[0] > 0
