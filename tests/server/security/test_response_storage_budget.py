"""Threat: filling PostgreSQL through the Responses API for next to no tokens. Reasoning items given back in `input`
are kept but never reach the prompt, so they cost no tokens, and each stored response used to keep a copy of the
whole conversation it continued (bounded at GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES, 8 MiB). Measured on the demo
model before the fixes: a key with a TPM of 1000 built one 7.6 MB conversation of reasoning items in two requests,
then 15 requests of 126 bytes each continuing it stored 7.6 MB apiece, 130 MB of PostgreSQL in 7.8 s, kept for the
retention (30 days); at an RPM of 60 that is about 450 MB a minute per key. Now a continuation keeps its own items
and a link to the response it continues, so those requests store a few kilobytes; and a key's stored responses may
take GGUFSTACK_RESPONSES_MAX_BYTES_PER_KEY_PER_DAY a day: past it, `store: true` is a 429 `response_storage_exceeded`
before anything is generated (and audited), `store: false` still answers, and other keys are unaffected.

One real server of its own (a small budget) with PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.access.caller import Caller
from server.errors import APIError
from server.protocol.responses import ResponseRequest
from server.serving.endpoints.responses_conversation import within_budget
from server.store.responses_postgres import PostgresResponseStore
from tests.server.security.conftest import ADMIN_KEY, MODEL, Plane, eventually, own_plane
from tests.server.store.test_responses import a_response
from tests.support.postgres import Postgres
from tests.support.redis import Redis

BUDGET = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def plane(postgres: Postgres, redis_server: Redis, demo_gguf: Path, tmp_path_factory) -> Iterator[Plane]:
    budget = {"GGUFSTACK_RESPONSES_MAX_BYTES_PER_KEY_PER_DAY": str(BUDGET)}
    workdir = tmp_path_factory.mktemp("storage-budget")
    with own_plane(postgres, redis_server, demo_gguf, workdir, "storage_budget", **budget) as own:
        yield own


def _reasoning(items: int, chars: int) -> list[dict]:
    """Reasoning items of random text (which PostgreSQL cannot compress away): kept, never read by the model."""
    text = lambda: base64.b64encode(os.urandom(chars * 3 // 4)).decode()  # noqa: E731
    content = lambda: [{"type": "reasoning_text", "text": text()}]  # noqa: E731
    return [{"type": "reasoning", "id": f"rs_{i}", "summary": [], "content": content()} for i in range(items)]


def _respond(plane: Plane, key: str, **body: object) -> httpx.Response:
    payload = {"model": MODEL, "max_output_tokens": 1, **body}
    return httpx.post(f"{plane.url}/v1/responses", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_continuing_a_long_conversation_stores_only_the_new_turn(plane: Plane) -> None:
    created = plane.create_key(tpm=100_000)
    key, owner = created["key"], f"key:{created['id']}"
    long = _respond(plane, key, input=[{"role": "user", "content": "hi"}, *_reasoning(30, 50_000)])
    assert long.status_code == 200, long.text
    size = plane.sql("SELECT conversation_bytes FROM responses WHERE id = %s", long.json()["id"])[0][0]
    assert BUDGET / 2 < size < BUDGET

    for _ in range(15):
        continued = _respond(plane, key, input="x", previous_response_id=long.json()["id"])
        assert continued.status_code == 200, continued.text
    held = "sum(octet_length(response::text) + octet_length(input_items::text) + octet_length(context::text))"
    stored = plane.sql(f"SELECT {held} FROM responses WHERE owner = %s", owner)[0][0]  # noqa: S608
    assert stored < size + 15 * 10_000, "a copy of the conversation in each would be 16 times its size"
    charged = plane.sql("SELECT sum(bytes) FROM response_bytes WHERE owner = %s", owner)[0][0]
    assert charged < BUDGET, "continuing within seconds keeps the thread a few seconds longer: next to nothing"


def test_a_key_cannot_store_more_than_its_daily_budget(plane: Plane) -> None:
    created = plane.create_key(tpm=100_000)
    key = created["key"]
    for _ in range(2):  # the first leaves room; the second passes the budget
        long = _respond(plane, key, input=[{"role": "user", "content": "hi"}, *_reasoning(30, 50_000)])
        assert long.status_code == 200, long.text

    refused = _respond(plane, key, input="x", previous_response_id=long.json()["id"])
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("response_storage_exceeded", "store", "rate_limit_error")
    assert 0 < int(refused.headers["Retry-After"]) <= 86400
    rows = plane.sql("SELECT count(*) FROM responses WHERE owner = %s", f"key:{created['id']}")[0][0]
    assert rows == 2  # nothing was stored for the refused request
    eventually(
        lambda: 429 in [row[0] for row in plane.sql("SELECT status FROM audit_log WHERE key_id = %s", created["id"])]
    )

    # The key may still generate without storing, and other keys and the admin key are not held to its budget.
    unstored = _respond(plane, key, input="x", previous_response_id=long.json()["id"], store=False)
    assert unstored.status_code == 200, unstored.text
    assert unstored.json()["store"] is False
    other = plane.create_key()["key"]
    assert _respond(plane, other, input="hi").status_code == 200
    assert _respond(plane, ADMIN_KEY, input="hi").status_code == 200


async def test_one_request_may_not_keep_a_thread_alive_for_more_than_the_budget(pool) -> None:
    """A continuation is charged the thread's bytes times the share of the retention it keeps the thread longer, but
    the check before generation compared only what the key had spent today: one request at a day's start (0 spent)
    continuing a conversation just before it expires was charged nearly its whole size, however far past the budget,
    and the next day's budget was whole again. So one small request a month kept any conversation alive for ever (and
    one a day kept growing it), past the budget times the retention's days. The check now counts that charge too."""
    budget, day = 10_000, 86_400
    store = PostgresResponseStore(pool, retention_s=30 * day, max_bytes_per_key_per_day=budget)
    caller = Caller(key_id="a")
    # What 30 days at the budget keep: a thread of 30 times it, its latest response 29 days old.
    old = a_response("resp_old", "key:a", created_at=time.time() - 29 * day, context=_reasoning(1, 30 * budget))
    fresh = a_response("resp_fresh", "key:a")
    for stored in (old, fresh):
        await store.save(stored)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM response_bytes")  # saved on earlier days: today nothing is spent
    await within_budget(store, ResponseRequest(model=MODEL, input="x"), caller)
    await within_budget(store, ResponseRequest(model=MODEL, input="x", previous_response_id="resp_fresh"), caller)

    with pytest.raises(APIError) as refused:
        await within_budget(store, ResponseRequest(model=MODEL, input="x", previous_response_id="resp_old"), caller)
    assert (refused.value.status, refused.value.code) == (429, "response_storage_exceeded")
    assert "previous_response_id" in refused.value.message
    unstored = ResponseRequest(model=MODEL, input="x", previous_response_id="resp_old", store=False)
    await within_budget(store, unstored, caller)
    other = ResponseRequest(model=MODEL, input="x", previous_response_id="resp_old")
    await within_budget(store, other, Caller(key_id="b"))  # not its response: the read after is its 404
