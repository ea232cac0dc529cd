"""The response stores: a stored response is its owner's only, expires with the retention, survives NUL characters
(PostgreSQL), and the in-memory store keeps only the most recently used."""

from __future__ import annotations

import time

import pytest
from psycopg_pool import AsyncConnectionPool

from server.store.responses import MemoryResponseStore, PostgresResponseStore, ResponseStore, StoredResponse


def _stored(response_id: str, owner: str = "key:a", created_at: float | None = None) -> StoredResponse:
    created = time.time() if created_at is None else created_at
    output = [{"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": "hi\x00"}]}]
    return StoredResponse(
        response_id,
        owner,
        created,
        {"id": response_id, "output": output},
        [{"type": "message", "id": "msg_0", "role": "user", "content": [{"type": "input_text", "text": "q"}]}],
        [{"type": "function_call_output", "id": "fco_0", "call_id": "c", "output": "x"}],
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


async def test_postgres_store_outage_is_unavailable(pool: AsyncConnectionPool) -> None:
    from server.store.errors import StoreUnavailableError

    store = PostgresResponseStore(pool, retention_s=60)
    await pool.close()
    with pytest.raises(StoreUnavailableError):
        await store.get("resp_1", "key:a")
