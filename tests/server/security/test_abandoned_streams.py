"""Threat: a client streams a long answer and goes away one token before the end. If tokens were charged and usage
recorded only on the Finished event, the answer would be free: nothing against the key's TPM, 0 completion tokens in
its audit row. Every ending (finished, client gone, drained, failed) charges and records what was generated."""

from __future__ import annotations

import json
import signal
import uuid

import httpx

from tests.server.security.conftest import EOS_TOKENS, MODEL, Plane, eventually, server_env
from tests.support.server import start_server


def _stream(base_url: str, key: str, max_tokens: int):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story. " + uuid.uuid4().hex}],
        "max_tokens": max_tokens,
        "logit_bias": EOS_TOKENS,
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
