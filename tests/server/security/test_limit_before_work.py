"""Threat: making the server work for a request it will refuse. The chat template was rendered, the prompt tokenized
and tool schemas compiled to grammars on the event loop before the rate limit was checked, so a key far over its RPM
still cost the server all of that per request (and stalled every stream meanwhile); /tokenize and /detokenize passed
no limit at all. Now the pipeline checks the key, the model permission and the request rate first, then a `prepare`
stage does the rendering, tokenizing and grammar work in a worker thread, then the prompt's tokens meet TPM. The
tokenizer endpoints pass the same key, permission and request limit.

One real server with PostgreSQL (keys, audit rows) and Redis (limits).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.postgres import Postgres
from tests.support.redis import Redis
from tests.support.server import ServerProcess, start_server

MODEL = "limits-model"
ADMIN_KEY = "admin-" + uuid.uuid4().hex
REDIS_DB = 4  # this module's own database on the session's Redis
BAD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "minProperties": "x"}}}


@dataclass
class Plane:
    server: ServerProcess
    postgres: Postgres
    database: str

    def key(self, **fields) -> dict:
        r = httpx.post(
            f"{self.server.base_url}/admin/keys",
            json={"name": "k-" + uuid.uuid4().hex[:6], **fields},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return r.json()

    def post(self, key: str, path: str, body: dict) -> httpx.Response:
        return httpx.post(
            f"{self.server.base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )


@pytest.fixture(scope="module")
def plane(tmp_path_factory, demo_gguf, postgres: Postgres, redis_server: Redis) -> Iterator[Plane]:
    database = "limit_first_" + uuid.uuid4().hex[:8]
    redis_server.client(REDIS_DB).flushdb()
    env = {
        "GGUFSTACK_DATABASE_URL": postgres.create_database(database),
        "GGUFSTACK_REDIS_URL": redis_server.url(REDIS_DB),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_MODEL_PATH": str(demo_gguf),
        "GGUFSTACK_MODEL_ALIAS": MODEL,
    }
    server = start_server(tmp_path_factory.mktemp("limit-first"), env, n_threads=1)
    try:
        server.wait_ready()
        yield Plane(server, postgres, database)
    finally:
        server.stop()


def _chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1, **extra}


def test_a_request_over_rpm_is_refused_before_its_tools_are_compiled(plane: Plane) -> None:
    """A tool schema that cannot be compiled is a 400 once it is tried; over the key's RPM it is never tried."""
    key = plane.key(rpm=1)["key"]
    assert plane.post(key, "/v1/chat/completions", _chat("hi")).status_code == 200
    refused = plane.post(key, "/v1/chat/completions", _chat("hi", tools=[BAD_TOOL], tool_choice="required"))
    assert refused.status_code == 429, refused.text


def test_a_request_over_rpm_is_refused_before_it_is_tokenized(plane: Plane) -> None:
    created = plane.key(rpm=1)
    assert plane.post(created["key"], "/v1/chat/completions", _chat("hi")).status_code == 200
    refused = plane.post(created["key"], "/v1/chat/completions", _chat("a long question " * 500))
    assert refused.status_code == 429, refused.text
    deadline = time.monotonic() + 10
    rows: list[tuple] = []
    while time.monotonic() < deadline and len(rows) < 2:
        query = "SELECT status, prompt_tokens FROM audit_log WHERE key_id = %s ORDER BY id"
        rows = plane.postgres.execute(query, plane.database, (created["id"],))
        time.sleep(0.2)
    assert rows[1] == (429, 0), f"the refused request's prompt was tokenized: {rows}"


@pytest.mark.parametrize(("path", "body"), [("/tokenize", {"content": "hello"}), ("/detokenize", {"tokens": [1, 2]})])
def test_the_tokenizer_endpoints_count_against_rpm(plane: Plane, path: str, body: dict) -> None:
    key = plane.key(rpm=2)["key"]
    first = plane.post(key, path, body)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "1", first.text
    assert plane.post(key, path, body).status_code == 200
    refused = plane.post(key, path, body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("path", "body"), [("/tokenize", {"content": "hello"}), ("/detokenize", {"tokens": [1, 2]})])
def test_the_tokenizer_endpoints_need_a_key_for_the_model(plane: Plane, path: str, body: dict) -> None:
    other_model = plane.key(models=["another-model"])["key"]
    refused = plane.post(other_model, path, body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    no_key = httpx.post(f"{plane.server.base_url}{path}", json=body, timeout=30)
    assert no_key.status_code == 401


def _audit(plane: Plane, key_id: str, n: int) -> list[tuple]:
    deadline = time.monotonic() + 10
    rows: list[tuple] = []
    while time.monotonic() < deadline and len(rows) < n:
        query = "SELECT endpoint, status FROM audit_log WHERE key_id = %s ORDER BY id"
        rows = plane.postgres.execute(query, plane.database, (key_id,))
        time.sleep(0.2)
    return rows


def test_a_continuation_over_rpm_is_refused_before_its_conversation_is_read(plane: Plane) -> None:
    """`previous_response_id` was looked up (the whole stored conversation read and converted) before the request
    limit: a key over its RPM got 404 for an unknown id (and did the read for a known one), and refusals of the
    lookup had no audit row. Now the lookup is part of the request's preparation, after the limits."""
    created = plane.key(rpm=2)
    key = created["key"]
    asked = {"model": MODEL, "input": "hi", "max_output_tokens": 1}
    assert plane.post(key, "/v1/responses", asked).status_code == 200
    unknown = plane.post(key, "/v1/responses", {**asked, "previous_response_id": "resp_unknown"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "previous_response_id"
    over = plane.post(key, "/v1/responses", {**asked, "previous_response_id": "resp_unknown"})
    assert over.status_code == 429, over.text
    assert _audit(plane, created["id"], 3) == [("responses", 200), ("responses", 404), ("responses", 429)]


def test_a_key_its_window_refuses_whatever_it_asks_is_refused_before_its_next_bodies_are_read(plane: Plane) -> None:
    """A body is parsed and validated before the pipeline's limits (the model is read from it): a key past its RPM
    could send body after body, each parsed only to be refused. Once a refusal holds whatever the key asks, its next
    requests until the window frees are refused unparsed: one that is not even JSON gets the same 429, its wait
    counted down, and an audit row. The connection stays open, so a client sending a large body reads its 429 (its
    SDK honours the Retry-After) instead of a reset, and its next request goes on the same connection."""
    created = plane.key(rpm=1)
    key, url = created["key"], plane.server.base_url
    assert plane.post(key, "/v1/chat/completions", _chat("hi")).status_code == 200
    refused = plane.post(key, "/v1/chat/completions", _chat("hi"))
    assert refused.status_code == 429, refused.text
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        unread = client.post("/v1/chat/completions", content=b"{not json" + b" " * 3_000_000)
        assert unread.status_code == 429 and unread.json()["error"]["code"] == "rate_limit_exceeded", unread.text
        assert int(unread.headers["retry-after"]) <= int(refused.headers["retry-after"])
        assert unread.headers["x-ratelimit-limit-requests"] == "1" and "connection" not in unread.headers
        messages = client.post("/v1/messages", content=b"[]")
        assert messages.status_code == 429 and messages.json()["error"]["type"] == "rate_limit_error", messages.text
        assert client.get("/health/live").status_code == 200
        chunked = client.post("/v1/chat/completions", content=iter([b"{not", b" json"]))  # no length: closed after
        assert chunked.status_code == 429 and chunked.headers["connection"] == "close", chunked.text
    other = plane.key(rpm=1)["key"]  # another key's bodies are read as ever
    headers["Authorization"] = f"Bearer {other}"
    assert (
        httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers=headers, timeout=30).status_code == 400
    )
    assert _audit(plane, created["id"], 5) == [
        ("chat.completions", 200),
        ("chat.completions", 429),
        ("chat.completions", 429),
        ("messages", 429),
        ("chat.completions", 429),
    ]


def test_bodies_that_fail_validation_count_against_the_rate_limit_and_are_audited(plane: Plane) -> None:
    """FastAPI validates a body before the pipeline runs, so a body that failed met neither the rate limit nor the
    audit log: a key could send invalid bodies as fast as it liked, each parsed and validated on the event loop while
    every stream waited (a review sent 1 MB bodies of 32,000 content parts that failed on `max_tokens`, 46 in 10 s
    from one key, and /health/live's median went from 27 ms to 613 ms), none of them counted or recorded. Now they
    count against RPM and are audited, and once the key is past its limit its next bodies are refused unparsed."""
    created = plane.key(rpm=2)
    key = created["key"]
    invalid = _chat("hi", max_tokens=-1)
    first = plane.post(key, "/v1/chat/completions", invalid)
    assert first.status_code == 400 and first.json()["error"]["param"] == "max_tokens", first.text
    assert first.headers["x-request-id"]
    assert plane.post(key, "/v1/messages", {"model": MODEL, "messages": []}).status_code == 400
    over = plane.post(key, "/v1/chat/completions", invalid)
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded", over.text
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    unread = httpx.post(f"{plane.server.base_url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert unread.status_code == 429, unread.text
    assert _audit(plane, created["id"], 4) == [
        ("chat.completions", 400),
        ("messages", 400),
        ("chat.completions", 429),
        ("chat.completions", 429),
    ]
