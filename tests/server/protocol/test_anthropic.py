"""Anthropic's request body: a tool's `input_schema` describes an object, as Anthropic requires (a call's `input` is
one), so no grammar forces a call that no reply can carry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.protocol.anthropic import MessagesRequest


def _request(input_schema: dict) -> MessagesRequest:
    return MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "call it"}],
            "tools": [{"name": "f", "input_schema": input_schema}],
            "tool_choice": {"type": "any"},
        }
    )


@pytest.mark.parametrize(
    "schema", [{"type": "integer"}, {"type": "string", "maxLength": 5}, {"type": "array"}, {}, {"type": ["object"]}]
)
def test_an_input_schema_that_is_not_an_objects_is_refused_naming_it(schema: dict) -> None:
    with pytest.raises(ValidationError) as refused:
        _request(schema)
    error = refused.value.errors()[0]
    assert error["loc"] == ("tools", 0, "input_schema") and '"type": "object"' in error["msg"]


def test_an_object_schema_is_accepted() -> None:
    tools = _request({"type": "object", "properties": {"n": {"type": "integer"}}}).tools
    assert tools is not None and tools[0].input_schema["type"] == "object"
