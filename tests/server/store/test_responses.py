"""The response stores: a stored response is its owner's only, expires with the retention, survives NUL characters
(PostgreSQL), and the in-memory store keeps only the most recently used."""

from __future__ import annotations

import time
import uuid

import pytest
from psycopg_pool import AsyncConnectionPool

from server.config.settings import Settings
from server.store.postgres import create_pool
from server.store.responses import (
    ConversationBound,
    MemoryResponseStore,
    PostgresResponseStore,
    ResponseStore,
    StoredResponse,
    json_size,
)
from tests.server.conftest import database_name
from tests.support.postgres import Postgres


def _stored(
    response_id: str, owner: str = "key:a", created_at: float | None = None, context: list[dict] | None = None
) -> StoredResponse:
    created = time.time() if created_at is None else created_at
    output = [{"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": "hi\x00"}]}]
    input_items = [{"type": "message", "id": "msg_0", "role": "user", "content": [{"type": "input_text", "text": "q"}]}]
    if context is None:
        context = [{"type": "function_call_output", "id": "fco_0", "call_id": "c", "output": "x"}]
    size = json_size([*context, *input_items, *output])
    return StoredResponse(
        response_id, owner, created, {"id": response_id, "output": output}, input_items, context, size
    )


async def _owner_only(store: ResponseStore) -> None:
    await store.save(_stored("resp_1"))
    conversation = await store.conversation("resp_1", "key:a")
    assert conversation is not None and [i["id"] for i in conversation.load()] == ["fco_0", "msg_0", "msg_1"]
    response, items = await store.response("resp_1", "key:a"), await store.input_items("resp_1", "key:a")
    assert response is not None and response["id"] == "resp_1"
    assert items is not None and [i["id"] for i in items] == ["msg_0"]  # the request's own: not those it continued
    for read in (store.conversation, store.response, store.input_items):
        assert await read("resp_1", "key:b") is None
    assert await store.delete("resp_1", "key:b") is False
    assert await store.delete("resp_1", "key:a") is True
    for read in (store.conversation, store.response, store.input_items):
        assert await read("resp_1", "key:a") is None
    assert await store.delete("resp_1", "key:a") is False


async def test_memory_store_is_per_owner_and_bounded() -> None:
    store = MemoryResponseStore(max_items=2, retention_s=60)
    await _owner_only(store)
    for i in range(3):
        await store.save(_stored(f"resp_{i}"))
        if i == 0:
            await store.save(_stored("resp_x"))
            assert await store.response("resp_0", "key:a") is not None  # used: resp_x is now the oldest
    assert await store.response("resp_x", "key:a") is None
    assert await store.response("resp_2", "key:a") is not None


async def test_memory_store_forgets_expired_responses() -> None:
    store = MemoryResponseStore(max_items=10, retention_s=60)
    await store.save(_stored("resp_old", created_at=time.time() - 61))
    assert await store.response("resp_old", "key:a") is None


async def test_postgres_store_is_per_owner_and_expires(pool: AsyncConnectionPool) -> None:
    store = PostgresResponseStore(pool, retention_s=60)
    await _owner_only(store)
    await store.save(_stored("resp_nul"))
    found = await store.response("resp_nul", "key:a")
    assert found is not None and found["output"][0]["content"][0]["text"] == "hi\ufffd"
    await store.save(_stored("resp_old", created_at=time.time() - 61))
    for read in (store.conversation, store.response, store.input_items):
        assert await read("resp_old", "key:a") is None
        assert await read("resp\x00", "key:a") is None


async def test_postgres_store_keeps_a_written_backslash_u0000(pool: AsyncConnectionPool) -> None:
    """Only the NUL character is replaced (jsonb holds none, in a value or a key), not the six characters `\\u0000`
    a user may write, as in a JavaScript regex."""
    store = PostgresResponseStore(pool, retention_s=60)
    written = r"s.replace(/\u0000/g, '')"
    stored = _stored("resp_text")
    stored.input_items[0]["content"][0]["text"] = written + "\x00"
    stored.response["metadata"] = {"k\x00": "v"}
    await store.save(stored)
    items, response = await store.input_items("resp_text", "key:a"), await store.response("resp_text", "key:a")
    assert items is not None and items[0]["content"][0]["text"] == written + "\ufffd"
    assert response is not None and response["metadata"] == {"k\ufffd": "v"}


def test_the_bound_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    default = ConversationBound(fields["max_messages"].default, fields["responses_max_conversation_bytes"].default)
    assert ConversationBound() == default


def _reasoning(n: int, text: str) -> list[dict]:
    return [
        {"type": "reasoning", "id": f"rs_{i}", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}
        for i in range(n)
    ]


async def _conversation_within_the_bound(store: ResponseStore) -> None:
    """A continuation learns the conversation's size (every item counted, reasoning items too) from the store, and
    gets its items only when they fit the bound: one grown past it is never read."""
    small, large = _stored("resp_small"), _stored("resp_large", context=_reasoning(8, "é" * 100))
    await store.save(small)
    await store.save(large)
    found = await store.conversation("resp_small", "key:a")
    assert found is not None and (found.items, found.size) == (3, small.size)
    assert [i["id"] for i in found.load()] == ["fco_0", "msg_0", "msg_1"]
    too_large = await store.conversation("resp_large", "key:a")
    assert too_large is not None and (too_large.items, too_large.size) == (10, large.size) and large.size > 1024
    assert too_large.content is None
    assert await store.conversation("resp_large", "key:b") is None


async def test_memory_store_reads_a_conversation_only_within_its_bound() -> None:
    await _conversation_within_the_bound(
        MemoryResponseStore(max_items=10, retention_s=60, bound=ConversationBound(bytes=1024))
    )


async def test_postgres_store_reads_a_conversation_only_within_its_bound(pool: AsyncConnectionPool) -> None:
    await _conversation_within_the_bound(
        PostgresResponseStore(pool, retention_s=60, bound=ConversationBound(bytes=1024))
    )


@pytest.mark.parametrize(
    ("use", "columns"),
    [
        ("response", "response"),
        ("input_items", "input_items"),
        ("conversation", "context, input_items, response, conversation_items, conversation_bytes"),
        ("delete", ""),
    ],
)
async def test_postgres_store_reads_only_the_columns_each_use_needs(
    pool: AsyncConnectionPool, postgres: Postgres, request: pytest.FixtureRequest, use: str, columns: str
) -> None:
    """GET /v1/responses/{id} selected the whole row, the conversation it continued (`context`) included, which may be
    megabytes it never used: 8 concurrent reads of a small response at a long chain's tail took 4 s. A role allowed
    only the columns a use needs shows that it reads nothing else (PostgreSQL refuses a column it may not read)."""
    store = PostgresResponseStore(pool, retention_s=60)
    await store.save(_stored("resp_1"))
    role, secret = f"r_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    where = "id, owner, expires_at"
    grant = f"SELECT ({where}{', ' + columns if columns else ''})" + (", DELETE" if use == "delete" else "")
    database = database_name(request.node.nodeid)
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'", database)
    postgres.execute(f"GRANT {grant} ON responses TO {role}", database)
    limited = create_pool(postgres.url(database, user=role, password=secret))
    await limited.open(wait=True)
    try:
        reader = PostgresResponseStore(limited, retention_s=60)
        if use == "delete":
            assert await reader.delete("resp_1", "key:a") is True
        else:
            assert await getattr(reader, use)("resp_1", "key:a") is not None
    finally:
        await limited.close()


async def test_postgres_store_outage_is_unavailable(pool: AsyncConnectionPool) -> None:
    from server.store.errors import StoreUnavailableError

    store = PostgresResponseStore(pool, retention_s=60)
    await pool.close()
    with pytest.raises(StoreUnavailableError):
        await store.response("resp_1", "key:a")
