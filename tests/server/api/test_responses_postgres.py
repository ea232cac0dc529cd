"""Stored responses in PostgreSQL, through the official openai client: two server processes share one throwaway
database (and one Redis), so a conversation started on one continues on the other with previous_response_id; a
response is its key's only (another key gets 404, as for an id that never existed); the audit log names the endpoint;
model permissions, rate limits and the response cache apply as for chat; a chain of continuations stops at the
conversation bound; each turn is stored once, and one deleted stays the history of the turns after it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import DEMO_MODEL_ID
from tests.support.postgres import Postgres, start_postgres
from tests.support.redis import start_redis
from tests.support.server import ServerProcess, start_server

ADMIN_KEY = "admin-" + uuid.uuid4().hex
GREEDY = {"temperature": 0, "extra_body": {"seed": 3}}
CONVERSATION_BYTES = 64 * 1024  # small, so that a few requests reach it


@dataclass
class Replicas:
    postgres: Postgres
    servers: list[ServerProcess]

    def created_key(self, **fields: object) -> dict:
        with httpx.Client(base_url=self.servers[0].base_url, timeout=30) as admin:
            created = admin.post(
                "/admin/keys", json={"name": "responses", **fields}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            )
        assert created.status_code == 201, created.text
        return created.json()

    def key(self, **fields: object) -> str:
        return self.created_key(**fields)["key"]

    def client(self, key: str, i: int) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.servers[i].base_url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, demo_gguf: Path) -> Iterator[Replicas]:
    pg = start_postgres(tmp_path_factory.mktemp("responses-pg"))
    redis = start_redis(tmp_path_factory.mktemp("responses-redis"))
    servers: list[ServerProcess] = []
    try:
        pg.create_database("responses")
        env = {
            "GGUFSTACK_DATABASE_URL": pg.url("responses"),
            "GGUFSTACK_REDIS_URL": redis.url(),
            "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
            "GGUFSTACK_MODEL_PATH": str(demo_gguf),
            "GGUFSTACK_N_CTX": "1024",
            "GGUFSTACK_N_SLOTS": "2",
            "GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES": str(CONVERSATION_BYTES),
        }
        servers = [start_server(tmp_path_factory.mktemp(f"responses-{i}"), env, n_threads=1) for i in range(2)]
        for server in servers:
            server.wait_ready()
        yield Replicas(pg, servers)
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        pg.destroy()


def test_a_conversation_continues_on_another_replica(replicas: Replicas) -> None:
    key = replicas.key()
    first = replicas.client(key, 0).responses.create(
        model=DEMO_MODEL_ID, input="My name is Ada. Say hello.", max_output_tokens=10, **GREEDY
    )
    on_other = replicas.client(key, 1)
    assert on_other.responses.retrieve(first.id) == first
    second = on_other.responses.create(
        model=DEMO_MODEL_ID, input="What is my name?", previous_response_id=first.id, max_output_tokens=10, **GREEDY
    )
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert [i.content[0].text for i in replicas.client(key, 0).responses.input_items.list(second.id).data] == [
        "What is my name?"
    ]
    # The audit writer works in the background: wait for both rows.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = replicas.postgres.execute("SELECT status FROM audit_log WHERE endpoint = 'responses'", "responses")
        if len(rows) >= 2:
            break
        time.sleep(0.2)
    assert rows == [(200,), (200,)]


def test_another_key_finds_nothing(replicas: Replicas) -> None:
    owner, other = replicas.key(), replicas.key()
    created = replicas.client(owner, 0).responses.create(model=DEMO_MODEL_ID, input="Hi", max_output_tokens=2)
    stranger = replicas.client(other, 1)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as chained:
        stranger.responses.create(model=DEMO_MODEL_ID, input="Hi", previous_response_id=created.id)
    assert chained.value.body["param"] == "previous_response_id"
    replicas.client(owner, 1).responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        replicas.client(owner, 0).responses.retrieve(created.id)


def test_store_false_writes_no_row(replicas: Replicas) -> None:
    key = replicas.key()
    before = replicas.postgres.execute("SELECT count(*) FROM responses", "responses")[0][0]
    replicas.client(key, 0).responses.create(model=DEMO_MODEL_ID, input="Hi", max_output_tokens=2, store=False)
    assert replicas.postgres.execute("SELECT count(*) FROM responses", "responses")[0][0] == before


def test_permissions_limits_and_the_cache_apply_as_for_chat(replicas: Replicas) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        replicas.client(replicas.key(models=["another-model"]), 0).responses.create(model=DEMO_MODEL_ID, input="Hi")

    client = replicas.client(replicas.key(rpm=2), 0)
    asked = {"model": DEMO_MODEL_ID, "input": "Name a fruit.", "max_output_tokens": 4, "temperature": 0}
    first = client.responses.with_raw_response.create(**asked)
    again = client.responses.with_raw_response.create(**asked)
    assert (first.headers["x-ggufstack-cache"], again.headers["x-ggufstack-cache"]) == ("miss", "hit")
    assert again.parse().output_text == first.parse().output_text and again.parse().id != first.parse().id
    with pytest.raises(openai.RateLimitError):
        client.responses.create(**asked)


# Every kind of input item the Responses API takes, each with its id, in the shape input_items lists it.
ITEMS = [
    {"type": "message", "id": "msg_system", "role": "system", "content": "Be brief."},
    {
        "type": "message",
        "id": "msg_developer",
        "role": "developer",
        "content": [{"type": "input_text", "text": "Dev."}],
    },
    {"type": "message", "id": "msg_user", "role": "user", "content": "What is the weather in Paris?"},
    {
        "type": "message",
        "id": "msg_assistant",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "I'll look.", "annotations": [], "logprobs": None}],
    },
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "look it up"}],
        "content": [{"type": "reasoning_text", "text": "Paris: call the tool."}],
        "encrypted_content": "opaque",
        "status": "completed",
    },
    {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'},
    {
        "type": "function_call",
        "id": "fc_2",
        "call_id": "call_2",
        "name": "weather",
        "arguments": '{"city": "Lyon"}',
        "status": "completed",
    },
    {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "18 C"},
    {
        "type": "function_call_output",
        "id": "fco_2",
        "call_id": "call_2",
        "output": [{"type": "input_text", "text": "20 C"}],
    },
    {"type": "message", "role": "user", "content": "And so?"},
]


def _listed(item: dict) -> dict:
    """What input_items says of an input item: messages with their text as parts, and a status."""
    if item["type"] != "message":
        return item
    kind = "output_text" if item["role"] == "assistant" else "input_text"
    content = item["content"] if isinstance(item["content"], list) else [{"type": kind, "text": item["content"]}]
    return {**item, "status": "completed", "content": content}


def test_every_input_item_kind_is_listed_back_as_it_was_stored(replicas: Replicas) -> None:
    key = replicas.key()
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": DEMO_MODEL_ID, "input": ITEMS, "max_output_tokens": 1}
    with httpx.Client(base_url=replicas.servers[0].base_url, headers=headers, timeout=120) as http:
        created = http.post("/v1/responses", json=body)
        assert created.status_code == 200, created.text
        listed = http.get(f"/v1/responses/{created.json()['id']}/input_items", params={"order": "asc"})
    assert listed.status_code == 200, listed.text
    data = listed.json()["data"]
    assert data[-1]["id"].startswith("msg_")  # an item sent without an id is given one
    expected = [_listed(item) for item in ITEMS[:-1]] + [{**_listed(ITEMS[-1]), "id": data[-1]["id"]}]
    # What the reply adds that the request left out: its defaults, never a changed value.
    assert [{k: v for k, v in got.items() if k in want} for got, want in zip(data, expected, strict=True)] == expected
    # The SDK reads the page, reasoning item included.
    page = replicas.client(key, 1).responses.input_items.list(created.json()["id"], order="asc")
    assert [item.type for item in page.data] == [item["type"] for item in ITEMS]


def _reasoning(n: int, size: int) -> list[dict]:
    """Items the model never reads (a few prompt tokens are all a request is charged), of `size` bytes each."""
    text = "x" * size
    return [
        {"type": "reasoning", "id": f"rs_{i}", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}
        for i in range(n)
    ]


def test_a_chain_stops_at_the_conversation_bound(replicas: Replicas) -> None:
    """Each stored row kept the whole chain again, unbounded: 20 requests of 3.8 MB of reasoning items made an 806 MB
    table for one chain. Now the conversation a response continues is bounded, and refused (400) past it."""
    key = replicas.key()
    url, headers = replicas.servers[0].base_url, {"Authorization": f"Bearer {key}"}
    previous, codes = None, []
    for _ in range(6):
        body = {
            "model": DEMO_MODEL_ID,
            "input": [*_reasoning(4, 4000), {"role": "user", "content": "Go on."}],
            "max_output_tokens": 1,
            **({"previous_response_id": previous} if previous else {}),
        }
        r = httpx.post(f"{url}/v1/responses", json=body, headers=headers, timeout=60)
        codes.append(r.status_code)
        if r.status_code != 200:
            assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (
                "previous_response_id",
                "conversation_too_large",
            )
            break
        previous = r.json()["id"]
    assert codes == [200, 200, 200, 400]  # 16 KB a turn: the fourth would pass 64 KiB
    rows = replicas.postgres.execute(
        "SELECT conversation_bytes, octet_length(context::text) + octet_length(input_items::text) FROM responses "
        "WHERE id = %s",
        "responses",
        (previous,),
    )
    assert rows[0][0] <= CONVERSATION_BYTES and rows[0][1] <= CONVERSATION_BYTES + 4096

    too_large = {"model": DEMO_MODEL_ID, "input": [*_reasoning(20, 4000), {"role": "user", "content": "Hi."}]}
    alone = httpx.post(f"{url}/v1/responses", json=too_large, headers=headers, timeout=60)
    assert alone.status_code == 400 and alone.json()["error"]["param"] == "input"


def test_reading_a_stored_response_counts_against_rpm_and_is_audited(replicas: Replicas) -> None:
    """GET, DELETE and input_items of a stored response were never limited nor audited: a key at its RPM read on."""
    created_key = replicas.created_key(rpm=3)
    client = replicas.client(created_key["key"], 0)
    created = client.responses.create(model=DEMO_MODEL_ID, input="Hi", max_output_tokens=1)
    read = client.responses.with_raw_response.retrieve(created.id)
    assert read.headers["x-ratelimit-remaining-requests"] == "1"
    assert [i.content[0].text for i in client.responses.input_items.list(created.id).data] == ["Hi"]
    with pytest.raises(openai.RateLimitError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.RateLimitError):
        client.responses.delete(created.id)
    rows: list[tuple] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(rows) < 5:
        rows = replicas.postgres.execute(
            "SELECT endpoint, status, model FROM audit_log WHERE key_id = %s ORDER BY id",
            "responses",
            (created_key["id"],),
        )
        time.sleep(0.2)
    assert rows == [
        ("responses", 200, DEMO_MODEL_ID),
        ("responses.retrieve", 200, None),
        ("responses.input_items", 200, None),
        ("responses.retrieve", 429, None),
        ("responses.delete", 429, None),
    ]


def test_a_deleted_turn_stays_the_history_of_the_turns_after_it(replicas: Replicas) -> None:
    """Each turn is stored once, linked to the one before (a thread). Deleting a turn that later ones continue hides it
    from its owner (404), and a continuation of the last turn still gets the whole conversation: the same prompt as
    before the delete."""
    key = replicas.key()
    client = replicas.client(key, 0)
    turns = [client.responses.create(model=DEMO_MODEL_ID, input="My name is Ada.", max_output_tokens=4, **GREEDY)]
    for said in ("I live in Paris.", "I like tea."):
        turns.append(
            replicas.client(key, len(turns) % 2).responses.create(
                model=DEMO_MODEL_ID, input=said, previous_response_id=turns[-1].id, max_output_tokens=4, **GREEDY
            )
        )
    rows = replicas.postgres.execute(
        "SELECT id, previous_id, context::text FROM responses WHERE thread_id = %s", "responses", (turns[0].id,)
    )
    assert {row[0]: row[1] for row in rows} == {turns[0].id: None, turns[1].id: turns[0].id, turns[2].id: turns[1].id}
    assert all(row[2] == "[]" for row in rows), "no turn holds a copy of those before it"

    def asked() -> int:
        again = replicas.client(key, 1).responses.create(
            model=DEMO_MODEL_ID, input="Who am I?", previous_response_id=turns[-1].id, max_output_tokens=1, **GREEDY
        )
        return again.usage.input_tokens

    before = asked()
    client.responses.delete(turns[1].id)
    with pytest.raises(openai.NotFoundError):
        replicas.client(key, 1).responses.retrieve(turns[1].id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=DEMO_MODEL_ID, input="Hi", previous_response_id=turns[1].id)
    assert asked() == before
