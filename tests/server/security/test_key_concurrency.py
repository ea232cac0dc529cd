"""Threat: one key takes every engine slot and the whole queue in front of them, so every other key on the replica
gets 429 `overloaded` (or waits behind it) for as long as its generations run. RPM does not stop it (a handful of
requests is enough) and neither does TPM: a prompt's tokens meet TPM before it runs, the answers' only when they end,
so requests sent together all pass. Measured with 2 slots and a queue of 1: a key's 3 long streams held both slots
and the queue, and another key's 1-token request was refused 429. `GGUFSTACK_MAX_CONCURRENT_PER_KEY` caps the
requests one key may have in flight on a replica (429 `too_many_concurrent_requests` past it, before the request
counts against RPM or anything is rendered); the admin key is not capped. Off (0) by default."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DEMO_NO_EOS
from tests.server.security.conftest import MODEL, Plane, eventually, own_plane
from tests.support.postgres import Postgres
from tests.support.redis import Redis


@pytest.fixture(scope="module")
def capped_plane(postgres: Postgres, redis_server: Redis, demo_gguf, tmp_path_factory) -> Iterator[Plane]:
    workdir = tmp_path_factory.mktemp("key-concurrency")
    capped = {"GGUFSTACK_N_SLOTS": "2", "GGUFSTACK_MAX_QUEUE": "1", "GGUFSTACK_MAX_CONCURRENT_PER_KEY": "1"}
    with own_plane(postgres, redis_server, demo_gguf, workdir, "concurrency", **capped) as own:
        yield own


def _long_stream(plane: Plane, key: str):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story. " + uuid.uuid4().hex}],
        "max_tokens": 1500,
        "logit_bias": DEMO_NO_EOS,
        "stream": True,
    }
    return httpx.stream(
        "POST", f"{plane.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def test_one_key_cannot_take_every_slot_from_the_others(capped_plane: Plane) -> None:
    plane = capped_plane
    hog, other = plane.create_key(tpm=1_000_000), plane.create_key(rpm=100)
    with _long_stream(plane, hog["key"]) as running:
        assert running.status_code == 200
        lines = running.iter_lines()
        assert any(line.startswith("data: {") for line in lines)  # generating: it holds a slot
        second = plane.chat(hog["key"], max_tokens=1500, logit_bias=DEMO_NO_EOS)
        assert second.status_code == 429, second.text
        error = second.json()["error"]
        assert error["code"] == "too_many_concurrent_requests" and second.headers["Retry-After"]
        assert "x-ratelimit-remaining-requests" not in second.headers  # refused before the request counted
        answered = plane.chat(other["key"])
        assert answered.status_code == 200, answered.text
        # Refused whatever the body holds, so before it is parsed: not even JSON gets the same 429, not a 400.
        headers = {"Authorization": f"Bearer {hog['key']}", "Content-Type": "application/json"}
        unread = httpx.post(f"{plane.url}/v1/chat/completions", content=b"{not json", headers=headers, timeout=30)
        assert unread.status_code == 429 and unread.json()["error"]["code"] == "too_many_concurrent_requests"
    # The stream is over (the client went away): the key may run a request again.
    assert eventually(lambda: plane.chat(hog["key"]).status_code == 200)
    rows = plane.sql("SELECT status FROM audit_log WHERE key_id = %s ORDER BY created_at", hog["id"])
    assert [s for (s,) in rows].count(429) == 2


def test_the_admin_key_is_not_capped(capped_plane: Plane) -> None:
    from tests.server.security.conftest import ADMIN_KEY

    with _long_stream(capped_plane, ADMIN_KEY) as running:
        assert running.status_code == 200
        assert any(line.startswith("data: {") for line in running.iter_lines())
        answered = capped_plane.chat(ADMIN_KEY)
        assert answered.status_code == 200, answered.text
        assert json.loads(answered.text)["choices"]
