"""Refusals from the chat machinery name the field the client of the Messages or Responses API sent."""

from __future__ import annotations

import pytest

from server.engine.base import ContextOverflowError
from server.errors import APIError
from server.serving.endpoints.field_names import MESSAGES, RESPONSES, renamed, renamed_fields


@pytest.mark.parametrize(
    ("chat", "responses"),
    [
        ("messages", "input"),
        ("messages.3.content", "input"),
        ("max_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("response_format", "text.format"),
        ("tools[2].function.parameters", "tools[2].parameters"),
        ("tools[1].function.name", "tools[1].name"),
        ("tool_choice", "tool_choice"),
        ("previous_response_id", "previous_response_id"),  # the Responses API's own names pass unchanged
        ("input", "input"),
    ],
)
def test_chat_fields_are_named_as_the_responses_api_names_them(chat: str, responses: str) -> None:
    assert renamed(chat, RESPONSES) == responses


@pytest.mark.parametrize(
    ("chat", "messages"),
    [
        ("tools[0].function.parameters", "tools.0.input_schema"),
        ("tools[12].function.name", "tools.12.name"),
        ("stop", "stop_sequences"),
        ("messages.1.content", "messages.1.content"),
        ("max_tokens", "max_tokens"),
        ("stopping", "stopping"),
    ],
)
def test_chat_fields_are_named_as_the_messages_api_names_them(chat: str, messages: str) -> None:
    assert renamed(chat, MESSAGES) == messages


def test_a_refusal_from_any_stage_leaves_naming_the_clients_field() -> None:
    with pytest.raises(ContextOverflowError) as engine, renamed_fields(RESPONSES):
        raise ContextOverflowError("too long", param="max_tokens")
    assert engine.value.param == "max_output_tokens"
    with pytest.raises(APIError) as api, renamed_fields(RESPONSES):
        raise APIError(400, "bad schema", param="response_format.json_schema.schema")
    assert api.value.param == "text.format.schema"
    with pytest.raises(APIError) as unnamed, renamed_fields(RESPONSES):
        raise APIError(404, "no such model")
    assert unnamed.value.param is None
