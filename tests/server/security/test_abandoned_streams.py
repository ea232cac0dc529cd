"""Threat: a client streams a long answer and goes away one token before the end. If tokens were charged and usage
recorded only on the Finished event, the answer would be free: nothing against the key's TPM, 0 completion tokens in
its audit row. Every ending (finished, client gone, drained, failed) charges and records what was generated.

Threat: a client asks for a long answer that does not stream and hangs up at once. If the server did not notice, the
generation would run to its end for nobody, holding a slot other keys wait for (a key could keep every slot busy at
the cost of one request each). It stops, charged and recorded as a client gone."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid

import httpx
import pytest

from tests.conftest import DEMO_NO_EOS
from tests.server.security.conftest import MODEL, Plane, eventually, own_plane, server_env
from tests.support.postgres import Postgres
from tests.support.redis import Redis
from tests.support.server import start_server


def _stream(base_url: str, key: str, max_tokens: int):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story. " + uuid.uuid4().hex}],
        "max_tokens": max_tokens,
        "logit_bias": DEMO_NO_EOS,
        "stream": True,
    }
    return httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def _content_chunks(lines, count: int) -> int:
    seen = 0
    for line in lines:
        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
            seen += 1
            if seen == count:
                return seen
    return seen


def _row(plane: Plane, key_id: str) -> tuple:
    rows = eventually(
        lambda: plane.sql("SELECT request_id, status, completion_tokens FROM audit_log WHERE key_id = %s", key_id)
    )
    assert len(rows) == 1
    return rows[0]


def _charged(plane: Plane, key_id: str, request_id: str) -> int:
    """The completion tokens the limiter charged the request (its `<tokens>:<request id>:c` entry)."""

    def entry() -> int | None:
        members = plane.redis.client().zrange(f"ggufstack:rl:{{{key_id}}}:tokens", 0, -1)
        for member in members:
            tokens, rid, kind = member.decode().split(":")
            if rid == request_id and kind == "c":
                return int(tokens)
        return None

    return eventually(entry)


def test_a_client_that_goes_away_mid_stream_pays_for_what_was_generated(plane: Plane) -> None:
    created = plane.create_key(tpm=1_000_000)
    with _stream(plane.url, created["key"], 200) as response:
        assert response.status_code == 200
        received = _content_chunks(response.iter_lines(), 5)
    assert received == 5
    request_id, status, completion_tokens = _row(plane, created["id"])
    assert status == 499 and completion_tokens >= received
    assert _charged(plane, created["id"], request_id) == completion_tokens
    assert eventually(lambda: plane.usage(created["id"])["completion_tokens"] == completion_tokens)


def test_a_stream_ended_by_a_drain_pays_for_what_was_generated(plane: Plane, demo_gguf, tmp_path) -> None:
    env = server_env(plane.postgres, plane.database, plane.redis, demo_gguf, GGUFSTACK_DRAIN_TIMEOUT_S="0.5")
    server = start_server(tmp_path / "draining", env, n_threads=1)
    try:
        server.wait_ready()
        created = plane.create_key(tpm=1_000_000)
        with _stream(server.base_url, created["key"], 2000) as response:
            lines = response.iter_lines()
            assert _content_chunks(lines, 3) == 3
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert any('"error"' in line for line in rest) and rest[-1] == "data: [DONE]"
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    request_id, status, completion_tokens = _row(plane, created["id"])
    assert status >= 500 and completion_tokens >= 3
    assert _charged(plane, created["id"], request_id) == completion_tokens


def test_a_client_that_hangs_up_before_a_whole_answer_stops_its_generation(plane: Plane) -> None:
    created = plane.create_key(tpm=1_000_000)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story. " + uuid.uuid4().hex}],
        "max_tokens": 1500,
        "logit_bias": DEMO_NO_EOS,
    }
    headers = {"Authorization": f"Bearer {created['key']}"}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(f"{plane.url}/v1/chat/completions", json=body, headers=headers, timeout=2.0)
    # Run to its end, the answer takes tens of seconds on the demo model and is recorded as a 200 of 1500 tokens.
    request_id, status, completion_tokens = _row(plane, created["id"])
    assert status == 499 and 0 < completion_tokens < 1500
    assert _charged(plane, created["id"], request_id) == completion_tokens


def test_a_client_that_hangs_up_on_a_large_embeddings_request_stops_it(
    postgres: Postgres, redis_server: Redis, demo_gguf, tmp_path
) -> None:
    """Its inputs still queued are dropped: embedded for nobody, they would keep every other key's waiting."""
    pooled = {"GGUFSTACK_EMBEDDING_POOLING": "mean"}
    with own_plane(postgres, redis_server, demo_gguf, tmp_path, "abandoned_embeddings", **pooled) as plane:
        created = plane.create_key(tpm=100_000_000)
        headers = {"Authorization": f"Bearer {created['key']}"}
        inputs = [f"{i} {uuid.uuid4().hex} " + "word " * 300 for i in range(300)]
        body = {"model": MODEL, "input": inputs}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{plane.url}/v1/embeddings", json=body, headers=headers, timeout=2.0)
        # Embedded to the end, its 90,000 tokens take minutes on the demo model.
        _, status, _ = _row(plane, created["id"])
        assert status == 499


def test_a_client_that_pipelines_a_second_request_and_hangs_up_still_stops_its_first(plane: Plane) -> None:
    """uvicorn tells only a connection's latest request that its client went away: with a second request pipelined
    behind it (its headers are enough), the first never heard the hang-up and ran its 1500 tokens to the end."""
    created = plane.create_key(tpm=1_000_000)
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story. " + uuid.uuid4().hex}],
            "max_tokens": 1500,
            "logit_bias": DEMO_NO_EOS,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {created['key']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    port = int(plane.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body + head)  # the second request's headers, its body never sent
        time.sleep(2)
    _, status, completion_tokens = _row(plane, created["id"])
    assert status == 499 and 0 < completion_tokens < 1500
    assert "Exception in ASGI application" not in plane.server.log()
