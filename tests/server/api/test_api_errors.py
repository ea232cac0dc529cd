"""Every bad request gets a 4xx with OpenAI's error JSON, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from server.api import errors as api_errors
from server.protocol.openai import ChatCompletionRequest
from tests.conftest import DEMO_MODEL_ID
from tests.support.server import ServerProcess

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
LONG_TEXT = "hello world " * 3000  # about 6000 tokens, past the default 4096-token context


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        (CHAT, {"messages": USER}, 400, "model", "missing_required_parameter"),
        (CHAT, {"model": DEMO_MODEL_ID}, 400, "messages", "missing_required_parameter"),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": []}, 400, "messages", "invalid_value"),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": "hi"}, 400, "messages", "invalid_value"),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": [{"role": "user"}]}, 400, "messages", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "temperature": "hot"}, 400, "temperature", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "temperature": 2.5}, 400, "temperature", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "top_p": 0}, 400, "top_p", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "max_tokens": 0}, 400, "max_tokens", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "max_tokens": -5}, 400, "max_tokens", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "max_tokens": 10**6}, 400, "max_tokens", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "max_tokens": 1.5}, 400, "max_tokens", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "n": 5}, 400, "n", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "stream": "yes"}, 400, "stream", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "stop": 7}, 400, "stop", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "logit_bias": {"abc": 1}}, 400, "logit_bias", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "logit_bias": {"5": 500}}, 400, "logit_bias", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "logit_bias": {"99999999": 1}}, 400, "logit_bias", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "logit_bias": {"9" * 5000: 1}}, 400, "logit_bias", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "seed": "x"}, 400, "seed", None),
        (CHAT, {"model": DEMO_MODEL_ID, "messages": USER, "tools": []}, 400, "tools", None),
        (
            CHAT,
            {"model": DEMO_MODEL_ID, "messages": USER, "max_tokens": 5, "max_completion_tokens": 5},
            400,
            None,
            None,
        ),
        (CHAT, {"model": "gpt-4o", "messages": USER}, 404, "model", "model_not_found"),
        (
            CHAT,
            {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": LONG_TEXT}]},
            400,
            "messages",
            "context_length_exceeded",
        ),
        (COMPLETIONS, {"model": DEMO_MODEL_ID}, 400, "prompt", "missing_required_parameter"),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": ""}, 400, "prompt", None),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": []}, 400, "prompt", None),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": ["a", "b"]}, 400, "prompt", None),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": [1, 99999999]}, 400, "prompt", None),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": "x", "echo": True}, 400, "echo", None),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": LONG_TEXT}, 400, "prompt", "context_length_exceeded"),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": "x", "max_tokens": 5000}, 400, "max_tokens", None),
        (COMPLETIONS, {"model": DEMO_MODEL_ID, "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty", None),
        (COMPLETIONS, {"model": 42, "prompt": "x"}, 400, "model", None),
    ],
)
def test_bad_requests_get_openai_error_json(
    demo_server: ServerProcess, path: str, body: dict, status: int, param: str | None, code: str | None
) -> None:
    for stream in (False, True):
        r = httpx.post(f"{demo_server.base_url}{path}", json={**body, "stream": body.get("stream", stream)}, timeout=60)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"] and error["type"]
        assert error["param"] == param
        if code:
            assert error["code"] == code
    assert httpx.get(f"{demo_server.base_url}/health/ready").status_code == 200


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[]", b'"text"', b"\xff\xfe", b'{"model": "x", "messages": [', b"null"]
)
def test_malformed_bodies_are_400(demo_server: ServerProcess, raw: bytes) -> None:
    r = httpx.post(
        f"{demo_server.base_url}{CHAT}", content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": "\xff"}', "the request body is not valid UTF-8"),
        (b"[" * 100_000, "the request body nests objects and arrays more than 64 levels deep"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "the request body holds a number of more than 4300 digits"),
    ],
)
def test_a_body_json_cannot_read_says_why(demo_server: ServerProcess, raw: bytes, message: str) -> None:
    # FastAPI answered these "There was an error parsing the body", with no code, where malformed JSON is invalid_json.
    for path in (CHAT, "/v1/messages"):
        r = httpx.post(
            f"{demo_server.base_url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30
        )
        assert r.status_code == 400, r.text
        if path == CHAT:
            assert r.json()["error"] == {
                "message": message, "type": "invalid_request_error", "param": None, "code": "invalid_json"
            }  # fmt: skip
        else:
            assert r.json()["error"] == {"type": "invalid_request_error", "message": message}


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "invalid value for messages.0.content.0.type: Input should be 'text'",
        ),
        (
            CHAT,
            {"messages": USER, "tool_choice": {"type": "function", "function": {}}},
            "missing required parameter: tool_choice.function.name",
        ),
        (CHAT, {"messages": USER, "stop": [""]}, "invalid value for stop.0: String should have at least 1 character"),
        (CHAT, {"messages": USER, "stop": 5}, "invalid value for stop: Input should be a valid string"),
        (
            "/v1/messages",
            {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "invalid value for messages.0.content.0: Input tag 'image' found using 'type' does not match",
        ),
        # Where a tagged union chose its member, the location is the client's, without the tag pydantic puts in it
        # ("messages.0.content.0.text.text"); a field named as its object's type (a chat tool's `function`) stays.
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "missing required parameter: messages.0.content.0.text",
        ),
        (
            CHAT,
            {"messages": USER, "response_format": {"type": "json_schema"}},
            "missing required parameter: response_format.json_schema",
        ),
        (
            CHAT,
            {"messages": USER, "tools": [{"type": "function", "function": {}}]},
            "missing required parameter: tools.0.function.name",
        ),
        (
            "/v1/messages",
            {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "missing required parameter: messages.0.content.0.text",
        ),
        (
            "/v1/messages",
            {"max_tokens": 4, "messages": USER, "tool_choice": {"type": "tool"}},
            "missing required parameter: tool_choice.name",
        ),
        ("/v1/responses", {"input": [{"type": "function_call_output"}]}, "missing required parameter: input.0.call_id"),
        (
            "/v1/responses",
            {"input": "hi", "text": {"format": {"type": "json_schema"}}},
            "missing required parameter: text.format.name",
        ),
    ],
)
def test_a_value_no_member_of_a_union_takes_is_told_what_the_member_it_meant_needs(
    demo_server: ServerProcess, path: str, fields: dict, message: str
) -> None:
    # A union's first member answered for all: a list of content blocks with an image was "messages.0.content.str:
    # Input should be a valid string", a named tool choice without a name "Input should be 'none', 'auto' or
    # 'required'", and the location carried pydantic's names for the members ("stop.constrained-str").
    r = httpx.post(f"{demo_server.base_url}{path}", json={"model": DEMO_MODEL_ID, **fields}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(message), r.text


def test_the_errors_of_a_body_of_many_invalid_items_are_read_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 61 KB body of 1000 messages with ten invalid content parts each has 11000 errors; comparing each with every
    other to find the unions among them held the event loop for seconds (minutes at a few hundred KB). Each place of
    each error is looked at once."""
    body = {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": [5] * 10}] * 1000}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]
    looked: list[object] = []
    looks_like = api_errors._looks_like_member
    monkeypatch.setattr(api_errors, "_looks_like_member", lambda part: looked.append(part) or looks_like(part))
    error = api_errors._validation_error(RequestValidationError(errors))
    assert error.message.startswith("invalid value for messages.0.content.0:")
    assert len(looked) <= sum(len(e["loc"]) for e in errors)


def test_unknown_route_and_wrong_method_are_openai_errors(demo_server: ServerProcess) -> None:
    missing = httpx.get(f"{demo_server.base_url}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{demo_server.base_url}{CHAT}")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_openai_client_raises_its_typed_errors(demo_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{demo_server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=DEMO_MODEL_ID, prompt="x", max_tokens=0)
    assert info.value.param == "max_tokens"
