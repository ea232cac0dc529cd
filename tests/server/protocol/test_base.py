"""The protocol's base: per-request caps that match the settings, and bodies that refuse what is not text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from server.api.middleware import request_limits_of
from server.config.settings import Settings
from server.protocol.admin import KeyCreateRequest
from server.protocol.anthropic import CountTokensRequest, MessagesRequest
from server.protocol.base import (
    DEFAULT_LIMITS,
    MAX_JSON_DEPTH,
    BodyFault,
    ClosedModel,
    RequestBody,
    RequestLimits,
    body_fault,
    request_limits,
)
from server.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    JsonSchemaFormat,
)
from server.protocol.ops import DetokenizeRequest, TokenizeRequest
from server.protocol.responses import ResponseRequest


def test_the_protocols_default_limits_are_the_settings_defaults() -> None:
    # The protocol imports nothing of the server, so it writes the defaults out; this keeps the two copies equal.
    defaults = {name: Settings.model_fields[name].default for name in RequestLimits.__dataclass_fields__}
    assert RequestLimits(**defaults) == DEFAULT_LIMITS


def test_the_api_builds_its_limits_from_the_settings() -> None:
    settings = Settings(
        max_messages=3, max_stop_chars=5, max_tokenize_input=7, max_embedding_inputs=9, max_body_containers=99
    )
    assert request_limits_of(settings) == RequestLimits(3, 5, 7, 9, 99)


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


def test_a_body_holding_more_objects_and_arrays_than_the_cap_is_refused_naming_the_first_past_it() -> None:
    def body(parts: int) -> dict:
        # the body, its messages, the message and its content list: four containers before the parts
        return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * parts}]}

    token = request_limits.set(RequestLimits(max_body_containers=64))
    try:
        assert len(ChatCompletionRequest.model_validate(body(60)).messages[0].content) == 60
        with pytest.raises(ValidationError) as refused:
            ChatCompletionRequest.model_validate(body(61))
    finally:
        request_limits.reset(token)
    error = refused.value.errors()[0]
    assert error["type"] == "too_many_containers" and error["ctx"]["param"] == "messages"
    assert error["msg"] == (
        "the body holds more than 64 objects and arrays (GGUFSTACK_MAX_BODY_CONTAINERS); "
        "messages.0.content.60 is the first past that"
    )
    assert body_fault(body(61), 64) == BodyFault("too_many_containers", ("messages", "0", "content", "60"))
    assert body_fault(body(61)) is None, "no bound unless one is given"


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_json_has_no_value_for_is_refused_naming_where(number: float) -> None:
    """Python's parser reads NaN, Infinity and 1e400; serialised again (the cache key) they became null, so a request
    asking for NaN shared its cached answer with one asking for null, and a schema's `const: NaN` let a structured
    output write NaN."""
    assert body_fault({"response_format": {"json_schema": {"schema": {"const": number}}}}) == BodyFault(
        "not_finite", ("response_format", "json_schema", "schema", "const")
    )
    assert body_fault({"n": 1, "temperature": 0.5, "big": 1e308}) is None
    with pytest.raises(ValidationError, match=r"temperature is NaN or infinite"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [], "temperature": number})


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


# Every body a route validates. A key holder's body within the size limit once held 1.3 million invalid items, and
# pydantic listed an error for each before the first was answered (14.7 s of the event loop, 2.7 GB).
REQUEST_BODIES: list[type[BaseModel]] = [
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    MessagesRequest,
    CountTokensRequest,
    ResponseRequest,
    TokenizeRequest,
    DetokenizeRequest,
    KeyCreateRequest,
]


@pytest.mark.parametrize("body", REQUEST_BODIES, ids=lambda cls: cls.__name__)
def test_every_body_checks_its_text_depth_and_containers(body: type[BaseModel]) -> None:
    """/detokenize's body was a plain closed model: its surrogates, depth and object count went unchecked."""
    assert issubclass(body, RequestBody)


def _every_body_class(root: type[BaseModel]) -> set[type[BaseModel]]:
    found = set()
    for sub in root.__subclasses__():
        found |= {sub, *_every_body_class(sub)}
    return found


def _schemas(node: object) -> Iterator[dict[str, Any]]:
    """Every schema inside a pydantic core schema (lists, objects, models, unions, references' definitions)."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _schemas(value)


def _items_can_fail(collection: dict[str, Any]) -> bool:
    """Whether an item of a list or object can be invalid: not so for JSON's text keys and values of any kind (a JSON
    Schema, a template's variables)."""
    parts = [collection.get(name) for name in ("items_schema", "keys_schema", "values_schema")]
    return any(part is not None and part not in ({"type": "any"}, {"type": "str"}) for part in parts)


def test_the_bodies_checked_below_are_every_request_body() -> None:
    concrete = {cls for cls in _every_body_class(RequestBody) if cls.__name__.endswith("Request")}
    assert concrete <= set(REQUEST_BODIES)


@pytest.mark.parametrize("body", REQUEST_BODIES, ids=lambda cls: cls.__name__)
def test_every_list_and_object_of_a_body_stops_at_its_first_invalid_item(body: type[BaseModel]) -> None:
    schemas = list(_schemas(body.__pydantic_core_schema__))
    collections = [s for s in schemas if s["type"] in {"list", "dict", "set", "frozenset", "tuple"}]
    unbounded = [s["type"] for s in collections if _items_can_fail(s) and not s.get("fail_fast")]
    assert not unbounded, unbounded
    # A model that refuses unknown fields must name only the first: pydantic lists one error per unknown key.
    forbidding = {s["cls"] for s in schemas if s["type"] == "model" and s["cls"].model_config.get("extra") == "forbid"}
    assert all(issubclass(cls, ClosedModel) for cls in forbidding), forbidding - {
        cls for cls in forbidding if issubclass(cls, ClosedModel)
    }


def _invalid_items(count: int) -> list[tuple[type[BaseModel], dict[str, Any]]]:
    message = {"role": "user", "content": "hi"}
    return [
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": [1] * count}] * 8}),
        (ChatCompletionRequest, {"model": "m", "messages": [message], **{f"k{i}": 0 for i in range(count)}}),
        (ChatCompletionRequest, {"model": "m", "messages": [{**message, **{f"k{i}": 0 for i in range(count)}}]}),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [message], "logit_bias": dict.fromkeys(map(str, range(count)), 101)},
        ),
        (CompletionRequest, {"model": "m", "prompt": [0.5] * count}),
        (EmbeddingRequest, {"model": "m", "input": [[0.5] * count] * 8}),
        (MessagesRequest, {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [1] * count}] * 8}),
        (ResponseRequest, {"model": "m", "input": [{"role": "user", "content": [1] * count}] * 8}),
        (ResponseRequest, {"model": "m", "input": "hi", "metadata": {f"k{i}": 1 for i in range(count)}}),
        (DetokenizeRequest, {"tokens": [-1] * count}),
        (KeyCreateRequest, {"name": "n", "models": [""] * min(count, 1024)}),  # 1024 models at most
    ]


@pytest.mark.parametrize("index", range(len(_invalid_items(1))))
def test_a_body_of_many_invalid_items_has_a_few_errors_not_one_per_item(index: int) -> None:
    body, value = _invalid_items(20_000)[index]
    with pytest.raises(ValidationError) as refused:
        body.model_validate(value)
    assert refused.value.error_count() <= 4, refused.value.errors()[:5]


def test_of_many_unknown_fields_the_first_is_named() -> None:
    value = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "zeta": 1, "model_x": 2, "alpha": 3}
    with pytest.raises(ValidationError) as refused:
        ChatCompletionRequest.model_validate(value)
    assert [(e["type"], e["loc"]) for e in refused.value.errors()] == [("extra_forbidden", ("zeta",))]
    aliased = {"name": "n", "schema": {}, "other": 1}  # an alias is a known field
    with pytest.raises(ValidationError) as refused:
        JsonSchemaFormat.model_validate(aliased)
    assert [e["loc"] for e in refused.value.errors()] == [("other",)]
    assert JsonSchemaFormat.model_validate({"name": "n", "schema": {"type": "object"}}).schema_ == {"type": "object"}


def test_every_closed_model_refuses_unknown_fields() -> None:
    # A ClosedModel drops the unknown fields after the first before pydantic sees them: one that let unknown fields
    # in would lose them silently.
    closed = _every_body_class(ClosedModel)
    assert len(closed) > 30
    assert {cls.__name__ for cls in closed if cls.model_config.get("extra") != "forbid"} == set()
