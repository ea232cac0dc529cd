"""The response stores: a stored response is its owner's only, expires with the retention, survives NUL characters
(PostgreSQL), and the in-memory store keeps only the most recently used."""

from __future__ import annotations

import time

import pytest
from psycopg_pool import AsyncConnectionPool

from server.config.settings import Settings
from server.store.responses import (
    ConversationBound,
    MemoryResponseStore,
    PostgresResponseStore,
    ResponseStore,
    StoredResponse,
    json_size,
)


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
    found = await store.get("resp_1", "key:a")
    assert found is not None and [i["id"] for i in found.conversation()] == ["fco_0", "msg_0", "msg_1"]
    assert await store.get("resp_1", "key:b") is None
    assert await store.delete("resp_1", "key:b") is False
    assert await store.delete("resp_1", "key:a") is True
    assert await store.get("resp_1", "key:a") is None
    assert await store.delete("resp_1", "key:a") is False


async def test_memory_store_is_per_owner_and_bounded() -> None:
    store = MemoryResponseStore(max_items=2, retention_s=60)
    await _owner_only(store)
    for i in range(3):
        await store.save(_stored(f"resp_{i}"))
        if i == 0:
            await store.save(_stored("resp_x"))
            assert await store.get("resp_0", "key:a") is not None  # used: resp_x is now the oldest
    assert await store.get("resp_x", "key:a") is None
    assert await store.get("resp_2", "key:a") is not None


async def test_memory_store_forgets_expired_responses() -> None:
    store = MemoryResponseStore(max_items=10, retention_s=60)
    await store.save(_stored("resp_old", created_at=time.time() - 61))
    assert await store.get("resp_old", "key:a") is None


async def test_postgres_store_is_per_owner_and_expires(pool: AsyncConnectionPool) -> None:
    store = PostgresResponseStore(pool, retention_s=60)
    await _owner_only(store)
    await store.save(_stored("resp_nul"))
    found = await store.get("resp_nul", "key:a")
    assert found is not None and found.response["output"][0]["content"][0]["text"] == "hi\ufffd"
    await store.save(_stored("resp_old", created_at=time.time() - 61))
    assert await store.get("resp_old", "key:a") is None
    assert await store.get("resp\x00", "key:a") is None


async def test_postgres_store_keeps_a_written_backslash_u0000(pool: AsyncConnectionPool) -> None:
    """Only the NUL character is replaced (jsonb holds none, in a value or a key), not the six characters `\\u0000`
    a user may write, as in a JavaScript regex."""
    store = PostgresResponseStore(pool, retention_s=60)
    written = r"s.replace(/\u0000/g, '')"
    stored = _stored("resp_text")
    stored.input_items[0]["content"][0]["text"] = written + "\x00"
    stored.response["metadata"] = {"k\x00": "v"}
    await store.save(stored)
    found = await store.get("resp_text", "key:a")
    assert found is not None and found.input_items[0]["content"][0]["text"] == written + "\ufffd"
    assert found.response["metadata"] == {"k\ufffd": "v"}


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


async def test_postgres_store_outage_is_unavailable(pool: AsyncConnectionPool) -> None:
    from server.store.errors import StoreUnavailableError

    store = PostgresResponseStore(pool, retention_s=60)
    await pool.close()
    with pytest.raises(StoreUnavailableError):
        await store.get("resp_1", "key:a")
