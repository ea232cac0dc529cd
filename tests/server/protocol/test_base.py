"""The protocol's base: per-request caps that match the settings, and bodies that refuse what is not text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.middleware import request_limits_of
from server.config.settings import Settings
from server.protocol.base import DEFAULT_LIMITS, MAX_JSON_DEPTH, BodyFault, RequestLimits, body_fault, request_limits
from server.protocol.openai import ChatCompletionRequest
from server.protocol.ops import TokenizeRequest


def test_the_protocols_default_limits_are_the_settings_defaults() -> None:
    # The protocol imports nothing of the server, so it writes the defaults out; this keeps the two copies equal.
    defaults = {name: Settings.model_fields[name].default for name in RequestLimits.__dataclass_fields__}
    assert RequestLimits(**defaults) == DEFAULT_LIMITS


def test_the_api_builds_its_limits_from_the_settings() -> None:
    settings = Settings(max_messages=3, max_stop_chars=5, max_tokenize_input=7, max_embedding_inputs=9)
    assert request_limits_of(settings) == RequestLimits(3, 5, 7, 9)


def test_a_body_is_checked_against_the_limits_of_its_request() -> None:
    token = request_limits.set(RequestLimits(max_tokenize_input=4))
    try:
        with pytest.raises(ValidationError, match="at most 4 characters"):
            TokenizeRequest(content="hello")
    finally:
        request_limits.reset(token)
    assert TokenizeRequest(content="hello").content == "hello"


def test_a_lone_surrogate_anywhere_in_a_body_is_refused_naming_where() -> None:
    with pytest.raises(ValidationError, match=r"messages\.0\.content holds a lone UTF-16 surrogate"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "a\ud800"}]})


def _nested(levels: int) -> dict:
    """A tool whose parameters make the chat body `levels` objects deep (the body itself is the first)."""
    schema: dict = {"type": "string"}
    for _ in range(levels - 5):  # the body, its tools array, the tool, its function and the innermost schema
        schema = {"a": schema}
    return {"type": "function", "function": {"name": "f", "parameters": schema}}


def test_a_body_nested_past_the_bound_is_refused_naming_where() -> None:
    def body(levels: int) -> dict:
        return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [_nested(levels)]}

    assert ChatCompletionRequest.model_validate(body(MAX_JSON_DEPTH)).tools is not None
    with pytest.raises(ValidationError) as refused:
        ChatCompletionRequest.model_validate(body(MAX_JSON_DEPTH + 1))
    error = refused.value.errors()[0]
    assert error["type"] == "too_deep" and error["ctx"]["param"] == "tools"
    assert (
        error["msg"].startswith("tools.0.function.parameters.a.a.")
        and f"more than {MAX_JSON_DEPTH} levels" in error["msg"]
    )


def test_no_depth_of_body_exhausts_the_check() -> None:
    deep: list = []
    for _ in range(100_000):  # far past the interpreter's recursion limit
        deep = [deep]
    fault = body_fault({"input": deep})
    assert fault is not None and fault.code == "too_deep" and len(fault.path) == MAX_JSON_DEPTH
    assert body_fault({"input": [[[["ok"]]]], "tail": "a\udc00"}) == BodyFault("lone_surrogate", ("tail",))
    assert body_fault({"k\ud800": 1}) == BodyFault("lone_surrogate", ("k\ud800",))


@pytest.mark.parametrize(
    ("extra", "where", "param"),
    [({"\ud800": 1}, "\\ud800", "\\ud800"), ({"logit_bias": {"1\udfff": 1}}, "logit_bias.1\\udfff", "logit_bias")],
)
def test_a_lone_surrogate_in_an_object_key_is_refused_with_an_error_that_is_text(
    extra: dict, where: str, param: str
) -> None:
    # The key is on the path the error names: written as it came, pydantic could not render the error (UTF-8), and
    # the 400 became a 500 with a traceback, or a connection dropped without an answer.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(ValidationError) as refused:
        ChatCompletionRequest.model_validate(body)
    (error,) = refused.value.errors(include_url=False)
    assert error["msg"] == f"{where} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): not text"
    assert error["ctx"]["param"] == param
    error["msg"].encode()
