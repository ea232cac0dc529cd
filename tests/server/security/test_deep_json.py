"""Threat: a small request nested deep enough breaks what walks it recursively, after it was admitted. A valid JSON
Schema 130 `properties` deep (5 KB) as a tool's parameters was a 500 on all three generation endpoints (the schema
check ran out of stack); with tool_choice none it was a 500 after generating, recorded as a success or a client gone
(the reply echoing the tools passed pydantic's 255-level limit), with temperature 0 a 500 from the cache key, and a
Responses reasoning item's `summary` 256 deep a 500 before the rate limit. Every body is now refused past
MAX_JSON_DEPTH levels, at validation: a 400 naming the field, before any work (counted against the key's RPM and
audited, as every body that fails validation is)."""

from __future__ import annotations

import json

import httpx
import pytest

from server.protocol.base import MAX_JSON_DEPTH
from tests.server.security.conftest import MODEL, Plane, eventually


def _schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


DEEP = _schema(130)  # what the review sent: about 5 KB
USER = [{"role": "user", "content": "hi"}]
REFUSED = [
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 1, "tool_choice": "required"}, "tools"),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 1, "tool_choice": "none", "temperature": 0}, "tools"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1, "tool_choice": "required"}, "tools"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1, "tool_choice": "none", "stream": True}, "tools"),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1, "tool_choice": "none", "store": False}, "tools"),
    (
        "/v1/responses",
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": DEEP}}},
        "text",
    ),
    ("/v1/messages", {"messages": USER, "max_tokens": 1, "tool_choice": {"type": "any"}}, "tools"),
    ("/v1/messages", {"messages": USER, "max_tokens": 1, "temperature": 0, "tool_choice": {"type": "none"}}, "tools"),
    ("/v1/messages/count_tokens", {"messages": USER}, "tools"),
]


def _tools(path: str, schema: dict) -> list[dict]:
    if path.startswith("/v1/messages"):
        return [{"name": "f", "input_schema": schema}]
    if path == "/v1/responses":
        return [{"type": "function", "name": "f", "parameters": schema}]
    return [{"type": "function", "function": {"name": "f", "parameters": schema}}]


def _post(plane: Plane, path: str, key: str, **request: object) -> httpx.Response:
    body = {"model": MODEL, **request}
    return httpx.post(plane.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.mark.parametrize(("path", "fields", "param"), REFUSED, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(REFUSED)])
def test_a_deep_schema_is_a_400_naming_the_field_on_every_endpoint(
    plane: Plane, path: str, fields: dict, param: str
) -> None:
    created = plane.create_key()
    tools = {} if "text" in fields else {"tools": _tools(path, DEEP)}
    r = _post(plane, path, created["key"], **fields, **tools)
    assert r.status_code == 400, r.text
    if path.startswith("/v1/messages"):
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith(f"{param}.0.input_schema.")
    else:
        error = r.json()["error"]
        assert error["param"] == param and f"more than {MAX_JSON_DEPTH} levels deep" in error["message"]
    # Refused before any work: audited with its 400, nothing generated, no token charged.
    assert eventually(lambda: plane.sql("SELECT status FROM audit_log WHERE key_id = %s", created["id"]) == [(400,)])
    usage = plane.usage(created["id"])
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (0, 0)


def _post_raw(plane: Plane, path: str, key: str, body: dict, nested: str) -> httpx.Response:
    """`body` with `nested` (JSON text too deep for json.dumps to write) in place of the string "NESTED"."""
    raw = json.dumps({"model": MODEL, **body}).replace('"NESTED"', nested)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(plane.url + path, content=raw, headers=headers, timeout=60)


def test_a_deep_reasoning_summary_is_a_400_that_counts_against_the_rate_limit(plane: Plane) -> None:
    key = plane.create_key(rpm=1)["key"]
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"x": "NESTED"}]}
    body = {"input": [reasoning, {"role": "user", "content": "hi"}], "max_output_tokens": 1}
    r = _post_raw(plane, "/v1/responses", key, body, "[" * 256 + "]" * 256)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    # The key's one request a minute is spent: the next body is refused by the limit, before it is read.
    again = _post_raw(plane, "/v1/responses", key, body, "[" * 256 + "]" * 256)
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limit_exceeded", again.text


def test_a_body_deeper_than_any_stack_is_a_400(plane: Plane) -> None:
    key = plane.create_key()["key"]
    r = _post_raw(plane, "/v1/chat/completions", key, {"messages": "NESTED"}, "[" * 200_000 + "]" * 200_000)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_schema_as_deep_as_structured_output_needs_is_served(plane: Plane) -> None:
    created = plane.create_key()
    schema = _schema(25)  # 2.5 times OpenAI's limit on nested schema objects, within MAX_JSON_DEPTH everywhere
    chat = _post(
        plane, "/v1/chat/completions", created["key"], messages=USER, max_tokens=1, temperature=0,
        tools=_tools("/v1/chat/completions", schema), tool_choice="required",
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    response = _post(
        plane, "/v1/responses", created["key"], input="hi", max_output_tokens=1,
        tools=_tools("/v1/responses", schema), tool_choice="none",
    )  # fmt: skip
    assert response.status_code == 200 and response.json()["tools"][0]["parameters"] == schema, response.text
    message = _post(
        plane, "/v1/messages", created["key"], messages=USER, max_tokens=1, temperature=0,
        tools=_tools("/v1/messages", schema), tool_choice={"type": "any"},
    )  # fmt: skip
    assert message.status_code == 200, message.text
