"""Threat: a key grows one conversation until reading it back takes the replica down. Every request sent with the same
`X-Conversation-Id` files its whole prompt again (a client resends its history each turn), and a prompt that fits the
context can carry about 250 KB of text (SmolLM2 reads 64 spaces or `=` as one token): a few thousand requests make a
conversation of a gigabyte. `GET /v1/conversations/{id}` read every message into memory and answered them in one
body, so each read (one request against RPM) cost the replica, and every stream on it, several times that. A read
now answers one page: at most `limit` messages (100 by default, 1000 at most) and about 4 MiB of text, with
`has_more` and the id to read on `after`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx

from tests.server.security.conftest import Plane, eventually

MESSAGE_BYTES = 256 * 1024
MESSAGES = 48  # 12 MiB: what about 48 requests of 250 KB prompts would file


def _grow(plane: Plane, key_id: str, conversation: str) -> None:
    """File MESSAGES large messages under `conversation`, as the audit writer files those of many requests."""
    now = datetime.now(UTC)
    for i in range(MESSAGES):
        plane.sql(
            "INSERT INTO conversation_messages (conversation_id, key_id, request_id, position, role, content, "
            "created_at) VALUES (%s, %s, %s, 0, 'user', repeat('=', %s), %s)",
            conversation,
            key_id,
            uuid.uuid4().hex,
            MESSAGE_BYTES - len(str(i)),
            now,
        )


def test_a_large_conversation_is_read_a_bounded_page_at_a_time(plane: Plane) -> None:
    created = plane.create_key()
    conversation = "conv-" + uuid.uuid4().hex
    assert plane.chat(created["key"], headers={"X-Conversation-Id": conversation}).status_code == 200
    assert eventually(lambda: plane.sql("SELECT 1 FROM conversation_messages WHERE conversation_id = %s", conversation))
    _grow(plane, created["id"], conversation)
    url = f"{plane.url}/v1/conversations/{conversation}"
    headers = {"Authorization": f"Bearer {created['key']}"}

    first = httpx.get(url, headers=headers, timeout=60)
    assert first.status_code == 200, first.text[:500]
    assert len(first.content) < 5 * 1024 * 1024, f"one read answered {len(first.content)} bytes"
    page = first.json()
    assert page["has_more"] is True and page["last_id"] == page["messages"][-1]["id"]
    assert [m["role"] for m in page["messages"][:2]] == ["user", "assistant"], "the chat's own turns come first"

    seen, after, reads = list(page["messages"]), page["last_id"], 1
    while page["has_more"]:
        r = httpx.get(url, params={"after": after}, headers=headers, timeout=60)
        assert r.status_code == 200 and len(r.content) < 5 * 1024 * 1024, r.text[:500]
        page, reads = r.json(), reads + 1
        seen += page["messages"]
        after = page["last_id"]
    assert len(seen) == 2 + MESSAGES and len({m["id"] for m in seen}) == len(seen), "every message once, in order"
    assert reads >= 3

    small = httpx.get(url, params={"limit": 1}, headers=headers, timeout=60).json()
    assert len(small["messages"]) == 1 and small["has_more"] is True
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": "x" * 300}):
        refused = httpx.get(url, params=bad, headers=headers, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error", refused.text
    stranger = plane.create_key()["key"]
    other = httpx.get(url, headers={"Authorization": f"Bearer {stranger}"}, timeout=60)
    assert other.status_code == 404, "another key still finds nothing"
