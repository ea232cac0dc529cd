"""Threat: the response cache as a side channel between tenants. Deterministic answers (temperature 0 or a seed) were
cached under the request alone, so key B asking what key A asked got A's answer, and `x-ggufstack-cache: hit` told B
that someone had asked exactly that (a prompt can be guessed and confirmed one request at a time). The cache is now
scoped per API key by default (GGUFSTACK_CACHE_SCOPE=shared shares it on purpose), and its key includes the server
settings that change an answer, such as the context window chat's default max_tokens comes from: two replicas with
different settings sharing one Redis never serve each other's answers.

The engine's prompt cache is the same side channel, timed: a slot keeps its last prompt's KV and a request starting
the same way skips computing it, so B sending A's prompt got its first token many times sooner. Per key, a prompt's
KV is reused only by the key that sent it (the shared setting shares that too).

A key's cached answers are also bounded (GGUFSTACK_CACHE_MAX_BYTES_PER_KEY per GGUFSTACK_CACHE_TTL_S), in a shared
cache too: one key must not fill Redis with answers and push every other key's out.

Two real servers share one PostgreSQL database (keys) and one Redis: the first per-key with n_ctx 4096, the second
shared with n_ctx 2048 and a budget of SHARED_BUDGET bytes per key.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import DEMO_NO_EOS
from tests.support.postgres import Postgres
from tests.support.redis import Redis
from tests.support.server import ServerProcess, start_server

MODEL = "cache-model"
ADMIN_KEY = "admin-" + uuid.uuid4().hex
CACHE = "x-ggufstack-cache"
REDIS_DB = 3  # this module's own database on the session's Redis
SHARED_BUDGET = 64 * 1024


@dataclass
class Servers:
    per_key: ServerProcess
    shared: ServerProcess
    keys: tuple[str, str, str]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, demo_gguf, postgres: Postgres, redis_server: Redis) -> Iterator[Servers]:
    database = "cache_scope_" + uuid.uuid4().hex[:8]
    redis_server.client(REDIS_DB).flushdb()
    env = {
        "GGUFSTACK_DATABASE_URL": postgres.create_database(database),
        "GGUFSTACK_REDIS_URL": redis_server.url(REDIS_DB),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_MODEL_PATH": str(demo_gguf),
        "GGUFSTACK_MODEL_ALIAS": MODEL,
    }
    started = [
        start_server(tmp_path_factory.mktemp("cache-per-key"), env, n_threads=1),
        start_server(
            tmp_path_factory.mktemp("cache-shared"),
            {
                **env,
                "GGUFSTACK_CACHE_SCOPE": "shared",
                "GGUFSTACK_N_CTX": "2048",
                "GGUFSTACK_CACHE_MAX_BYTES_PER_KEY": str(SHARED_BUDGET),
            },
            n_threads=1,
        ),
    ]
    try:
        for server in started:
            server.wait_ready()
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        keys = []
        for name in ("tenant-a", "tenant-b", "tenant-c"):
            r = httpx.post(f"{started[0].base_url}/admin/keys", json={"name": name}, headers=admin, timeout=30)
            assert r.status_code == 201, r.text
            keys.append(r.json()["key"])
        yield Servers(started[0], started[1], (keys[0], keys[1], keys[2]))
    finally:
        for server in started:
            server.stop()


def _ask(server: ServerProcess, key: str, question: str, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0, **fields}
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    return r


def test_one_keys_cached_answer_is_not_served_to_another_key(servers: Servers) -> None:
    a, b, _ = servers.keys
    question = f"Reply with one word: yes. ({uuid.uuid4().hex[:6]})"
    first = _ask(servers.per_key, a, question)
    assert first.headers[CACHE] == "miss"
    assert _ask(servers.per_key, a, question).headers[CACHE] == "hit"
    other = _ask(servers.per_key, b, question)
    assert other.headers[CACHE] == "miss", "key B learned that key A asked this"
    assert _ask(servers.per_key, b, question).headers[CACHE] == "hit"


def test_a_replica_with_another_context_window_does_not_serve_the_answer(servers: Servers) -> None:
    """No max_tokens: chat's default is what the context leaves, so n_ctx 2048 may answer differently."""
    a = servers.keys[0]
    question = f"Reply with one word: no. ({uuid.uuid4().hex[:6]})"
    assert _ask(servers.per_key, a, question).headers[CACHE] == "miss"
    assert _ask(servers.shared, a, question).headers[CACHE] == "miss"


def test_a_shared_cache_serves_every_key(servers: Servers) -> None:
    a, b, _ = servers.keys
    question = f"Reply with one word: maybe. ({uuid.uuid4().hex[:6]})"
    assert _ask(servers.shared, a, question).headers[CACHE] == "miss"
    assert _ask(servers.shared, b, question).headers[CACHE] == "hit"


def test_a_shared_cache_tells_apart_schemas_that_differ_only_in_their_property_order(servers: Servers) -> None:
    """The grammar writes a schema's properties in its order; the cache key sorted them, so in a shared cache one
    key's answer in one order was served to another key asking for the other (found by a review, 2026-12-07)."""
    a, b, _ = servers.keys
    question = f"Give two letters. ({uuid.uuid4().hex[:6]})"

    def schema(*names: str) -> dict[str, object]:
        properties = {name: {"type": "string", "maxLength": 3} for name in names}
        shape = {"type": "object", "properties": properties, "required": list(names), "additionalProperties": False}
        return {"type": "json_schema", "json_schema": {"name": "letters", "schema": shape}}

    first = _ask(servers.shared, a, question, response_format=schema("x", "y"), max_tokens=24)
    assert _ask(servers.shared, b, question, response_format=schema("x", "y"), max_tokens=24).headers[CACHE] == "hit"
    other = _ask(servers.shared, b, question, response_format=schema("y", "x"), max_tokens=24)
    assert other.headers[CACHE] == "miss"
    answer = other.json()["choices"][0]["message"]["content"]
    assert answer.index('"y"') < answer.index('"x"'), answer
    assert first.json()["choices"][0]["message"]["content"] != answer


def test_nan_in_a_body_is_a_400_not_a_key_it_shares_with_null(servers: Servers) -> None:
    """Python reads NaN, which JSON has not: serialised for the cache key it became null, so one key's request with
    `const: NaN` answered another's with `const: null` from the shared cache, with a NaN the client could not read."""
    a, _, _ = servers.keys
    schema = {"type": "object", "properties": {"v": {"const": float("nan")}}, "required": ["v"]}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "v?"}],
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}},
    }
    headers = {"Authorization": f"Bearer {a}", "Content-Type": "application/json"}
    raw = json.dumps(body)  # writes NaN, as Python's json does by default (httpx's json= refuses to)
    r = httpx.post(f"{servers.shared.base_url}/v1/chat/completions", content=raw, headers=headers, timeout=60)
    assert "NaN" in raw and r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "response_format" and "NaN or infinite" in error["message"]


def test_a_key_past_its_cache_budget_gets_answers_that_are_not_cached(servers: Servers) -> None:
    c = servers.keys[2]
    # A cached token keeps its 20 alternatives (about 30 bytes each), so 200 tokens are about twice the budget; the
    # end-of-turn tokens are banned so the answer runs to max_tokens.
    heavy = {"max_tokens": 200, "logprobs": True, "top_logprobs": 20, "logit_bias": DEMO_NO_EOS}
    question = f"Count from 1 to 100, in words. ({uuid.uuid4().hex[:6]})"
    first = _ask(servers.shared, c, question, **heavy)
    assert first.headers[CACHE] == "miss"
    tokens = first.json()["choices"][0]["logprobs"]["content"]
    assert len(tokens) == 200 and all(len(t["top_logprobs"]) == 20 for t in tokens)
    assert _ask(servers.shared, c, question, **heavy).headers[CACHE] == "miss", "stored past the key's budget"

    small = f"Reply with one word: yes. ({uuid.uuid4().hex[:6]})"
    assert _ask(servers.shared, c, small, max_tokens=4).headers[CACHE] == "miss"
    assert _ask(servers.shared, c, small, max_tokens=4).headers[CACHE] == "hit", "within the budget: cached"


def _reused(server: ServerProcess) -> float:
    """Prompt tokens the engine took from a slot's cache instead of computing them, so far."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    found = re.search(r'^ggufstack_prompt_tokens_reused_total\{model="' + MODEL + r'"\} (\S+)$', text, re.M)
    assert found is not None, text[:2000]
    return float(found.group(1))


def _reused_by(server: ServerProcess, key: str, question: str) -> tuple[float, int]:
    """How many of the request's prompt tokens came from a slot's cache, and how many it had."""
    before = _reused(server)
    r = _ask(server, key, question, temperature=1.0, max_tokens=1)  # sampled: not from the response cache
    return _reused(server) - before, r.json()["usage"]["prompt_tokens"]


def test_one_keys_cached_prompt_is_reused_by_that_key_only(servers: Servers) -> None:
    a, b, _ = servers.keys
    # The nonce comes first, so only the chat template's opening is common to earlier prompts.
    question = f"({uuid.uuid4().hex}) " + "Summarise the quarterly numbers for the board. " * 20
    reused, _ = _reused_by(servers.per_key, a, question)
    assert reused < 40
    reused, prompt = _reused_by(servers.per_key, a, question)
    assert reused == prompt - 1, "a key reuses its own prompt (all but the last token)"
    reused, _ = _reused_by(servers.per_key, b, question)
    assert reused < 40, "key B was served key A's cached prompt"


def test_a_shared_scope_shares_cached_prompts(servers: Servers) -> None:
    a, b, _ = servers.keys
    question = f"({uuid.uuid4().hex}) " + "List the open incidents by severity. " * 20
    reused, _ = _reused_by(servers.shared, a, question)
    assert reused < 40
    reused, prompt = _reused_by(servers.shared, b, question)
    assert reused == prompt - 1
