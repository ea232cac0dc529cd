"""Threat: one request stops the audit log for everyone. An 8 KB `X-Conversation-Id` is over PostgreSQL's btree
limit, and the writer took the refusal for an outage and retried that batch forever (the queue filled, every record
after it was dropped); a lone surrogate in an assistant message with `tool_calls` passed validation and killed the
writer task without a word. Headers and bodies are checked at the door (400), the writer sets aside what the
database refuses and goes on, and a background task that dies says so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from server.store.services import background
from server.store.writer import AuditRow, AuditWriter, ConversationMessage, Record
from server.telemetry import prometheus
from tests.server.security.conftest import MODEL, Plane, eventually

LONE = "\ud800"
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": "' + LONE + '"}'}}
# Every place text enters: (path, body) with a lone surrogate somewhere in it.
POISONED = [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "a" + LONE}]}),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [CALL]}]},
    ),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
    ),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": [LONE]}),
    ("/v1/completions", {"model": MODEL, "prompt": LONE}),
    ("/v1/embeddings", {"model": MODEL, "input": ["ok", LONE]}),
    ("/tokenize", {"content": LONE}),
    ("/admin/keys", {"name": "team" + LONE}),
    # In an object's key, which the error names: the 400 itself failed to render, a 500 or a dropped connection.
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], LONE: 1}),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {LONE: 0}},
    ),
    ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], LONE: 1}),
]


def _post(plane: Plane, path: str, body: dict, key: str, headers: dict | None = None) -> httpx.Response:
    # json.dumps writes a lone surrogate as the escape "\ud800", as an attacker's client would.
    return httpx.post(
        plane.url + path,
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
        timeout=60,
    )


@pytest.mark.parametrize(("path", "body"), POISONED, ids=[f"{p}-{i}" for i, (p, _) in enumerate(POISONED)])
def test_a_lone_surrogate_anywhere_in_a_body_is_a_400(plane: Plane, path: str, body: dict) -> None:
    from tests.server.security.conftest import ADMIN_KEY

    r = _post(plane, path, body, ADMIN_KEY)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and "surrogate" in error["message"]


def test_a_long_or_odd_conversation_id_is_a_400_and_the_audit_log_keeps_going(plane: Plane) -> None:
    created = plane.create_key()
    for bad in (secrets.token_hex(4096), "a b", "x" * 129):
        r = plane.chat(created["key"], headers={"X-Conversation-Id": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_conversation_id", r.text
    conversation = "conv-" + uuid.uuid4().hex
    assert plane.chat(created["key"], headers={"X-Conversation-Id": conversation}).status_code == 200
    assert eventually(lambda: plane.sql("SELECT 1 FROM conversation_messages WHERE conversation_id = %s", conversation))


def _record(request_id: str, *, conversation: str = "conv", content: str = "hello") -> Record:
    now = datetime.now(UTC)
    row = AuditRow(request_id, "key_1", now, "chat.completions", "m", "sha", 3, 4, 10.0, 2.0, 200, False)
    return Record(row, [ConversationMessage(conversation, "key_1", request_id, 0, "user", content, now)])


async def test_the_writer_sets_aside_records_postgres_refuses_and_writes_the_rest(pool, caplog) -> None:
    writer = AuditWriter(pool, max_queue=100, linger_s=0.01)
    task = asyncio.create_task(writer.run())
    refused_before = prometheus.audit_records_refused._value.get()
    try:
        with caplog.at_level(logging.ERROR, logger="server.store.writer"):
            writer.submit(_record("good-1"))
            writer.submit(_record("too-long", conversation=secrets.token_hex(4096)))  # over the btree row limit
            writer.submit(_record("not-text", content="a" + LONE))  # no UTF-8 encoding exists
            writer.submit(_record("good-2"))

            async def written() -> bool:
                async with pool.connection() as conn:
                    cursor = await conn.execute("SELECT request_id FROM audit_log ORDER BY id")
                    return [r[0] for r in await cursor.fetchall()] == ["good-1", "good-2"]

            deadline = asyncio.get_running_loop().time() + 20
            while not await written():
                assert not task.done(), f"the writer died: {task.exception()!r}"
                assert asyncio.get_running_loop().time() < deadline, f"still pending: {writer.pending}"
                await asyncio.sleep(0.1)
        assert writer.pending == 0 and not task.done()
        assert prometheus.audit_records_refused._value.get() - refused_before == 2
        set_aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
        assert len(set_aside) == 2 and "too-long" in set_aside[0] and "not-text" in set_aside[1]
        assert "ProgramLimitExceeded" in set_aside[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_background_task_that_dies_says_so(caplog) -> None:
    async def broken() -> None:
        raise RuntimeError("bug")

    before = prometheus.background_task_failures.labels("broken-task")._value.get()
    with caplog.at_level(logging.CRITICAL, logger="server.store.services"):
        async with contextlib.AsyncExitStack() as resources:
            await background(resources, broken(), "broken-task")
            await asyncio.sleep(0.05)
    assert prometheus.background_task_failures.labels("broken-task")._value.get() - before == 1
    assert any("broken-task died" in r.getMessage() and r.exc_info for r in caplog.records)
