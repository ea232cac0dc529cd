"""The response store contract (owner only, expiry, the bound), checked here on the in-memory store and by
test_responses_postgres on PostgreSQL: the in-memory store also keeps only the most recently used."""

from __future__ import annotations

import time

from server.config.settings import Settings
from server.store.responses import (
    MEMORY_CONVERSATIONS,
    ConversationBound,
    MemoryResponseStore,
    ResponseStore,
    StoredResponse,
    json_size,
)


def a_response(
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


async def owner_only(store: ResponseStore) -> None:
    await store.save(a_response("resp_1"))
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
    await owner_only(store)
    for i in range(3):
        await store.save(a_response(f"resp_{i}"))
        if i == 0:
            await store.save(a_response("resp_x"))
            assert await store.response("resp_0", "key:a") is not None  # used: resp_x is now the oldest
    assert await store.response("resp_x", "key:a") is None
    assert await store.response("resp_2", "key:a") is not None


async def test_memory_store_forgets_expired_responses() -> None:
    store = MemoryResponseStore(max_items=10, retention_s=60)
    await store.save(a_response("resp_old", created_at=time.time() - 61))
    assert await store.response("resp_old", "key:a") is None


def test_the_bound_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    default = ConversationBound(fields["max_messages"].default, fields["responses_max_conversation_bytes"].default)
    assert ConversationBound() == default


def _reasoning(n: int, text: str) -> list[dict]:
    return [
        {"type": "reasoning", "id": f"rs_{i}", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}
        for i in range(n)
    ]


async def conversation_within_the_bound(store: ResponseStore) -> None:
    """A continuation learns the conversation's size (every item counted, reasoning items too) from the store, and
    gets its items only when they fit the bound: one grown past it is never read."""
    small, large = a_response("resp_small"), a_response("resp_large", context=_reasoning(8, "é" * 100))
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
    await conversation_within_the_bound(
        MemoryResponseStore(max_items=10, retention_s=60, bound=ConversationBound(bytes=1024))
    )


async def test_memory_store_holds_a_bounded_number_of_bytes() -> None:
    """Without a database there is no key and no budget: what the store holds is bounded by MEMORY_CONVERSATIONS
    conversations of the largest size a response may continue, each response counted whole, the least recently used
    going first."""
    store = MemoryResponseStore(max_items=1000, retention_s=60, bound=ConversationBound(bytes=1024))
    saved = [a_response(f"resp_{i}", context=_reasoning(1, "x" * 700)) for i in range(3 * MEMORY_CONVERSATIONS)]
    assert all(700 < s.size <= 1024 for s in saved)
    for stored in saved:
        await store.save(stored)
    kept = [s.id for s in saved if await store.response(s.id, "key:a") is not None]
    assert kept == [s.id for s in saved[-len(kept) :]], "the most recent are kept"
    assert MEMORY_CONVERSATIONS <= len(kept) <= MEMORY_CONVERSATIONS * 1024 // 700
    assert await store.delete(kept[-1], "key:a") is True
    await store.save(a_response("resp_again", context=_reasoning(1, "x" * 700)))
    assert await store.response(kept[0], "key:a") is not None, "a deleted response's bytes were given back"
