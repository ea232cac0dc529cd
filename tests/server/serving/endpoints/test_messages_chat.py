"""Anthropic's request as the chat request the pipeline serves: turns, tool calls and results, tool_choice, sampling,
and the refusals that name the Anthropic field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.errors import APIError
from server.protocol.anthropic import CountTokensRequest, MessagesRequest
from server.protocol.openai import NamedToolChoice
from server.serving.endpoints.messages_chat import chat_body, prefilled

TOOL = {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object", "properties": {}}}


def _request(**fields: Any) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 16, **fields})


def test_system_text_and_sampling_carry_over() -> None:
    chat = chat_body(
        _request(
            system=[{"type": "text", "text": "Be"}, {"type": "text", "text": "terse."}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            metadata={"user_id": "u1"},
            stream=True,
        )
    )
    assert [(m.role, m.text()) for m in chat.messages] == [("system", "Be\nterse."), ("user", "Hi!")]
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.top_k) == (16, 0.5, 0.9, 40)
    assert chat.stop == ["END"] and chat.user == "u1" and chat.stream and chat.tools is None


def test_tool_use_and_tool_result_become_calls_and_tool_messages() -> None:
    chat = chat_body(
        _request(
            messages=[
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Zürich"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "9 C"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "down", "is_error": True},
                        {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
                    ],
                },
            ],
            tools=[TOOL],
        )
    )
    roles = [m.role for m in chat.messages]
    assert roles == ["user", "assistant", "tool", "tool", "user"]
    call = chat.messages[1].tool_calls[0]
    assert chat.messages[1].text() == "Looking." and call.id == "toolu_1" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Zürich"}
    assert [(m.tool_call_id, m.text()) for m in chat.messages[2:4]] == [("toolu_1", "9 C"), ("toolu_2", "Error: down")]
    assert chat.tools[0].function.parameters == TOOL["input_schema"] and chat.tool_choice is None


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "none"}, "none", True),
    ],
)
def test_tool_choice(choice: dict, expected: str, parallel: bool) -> None:
    chat = chat_body(_request(messages=[{"role": "user", "content": "x"}], tools=[TOOL], tool_choice=choice))
    assert chat.tool_choice == expected and chat.parallel_tool_calls is parallel


def test_a_named_tool_choice() -> None:
    choice = {"type": "tool", "name": "get_weather"}
    chat = chat_body(_request(messages=[{"role": "user", "content": "x"}], tools=[TOOL], tool_choice=choice))
    assert isinstance(chat.tool_choice, NamedToolChoice) and chat.tool_choice.function.name == "get_weather"


def test_a_last_assistant_message_is_a_prefill_the_chat_request_keeps() -> None:
    body = _request(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure,"}])
    chat = chat_body(body)
    assert prefilled(body) and (chat.messages[-1].role, chat.messages[-1].text()) == ("assistant", "Sure,")
    assert not prefilled(_request(messages=[{"role": "user", "content": "x"}]))


def test_count_tokens_carries_no_sampling() -> None:
    body = CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    chat = chat_body(body)
    assert chat.max_tokens is None and not chat.stream


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            ],
            "messages.1.content",
        ),
        (
            [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}],
            "messages.0.content.0",
        ),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]},
                {"role": "user", "content": "y"},
            ],
            "messages.1.content.0",
        ),
    ],
)
def test_turns_chat_cannot_serve_are_refused_by_field(messages: list[dict], param: str) -> None:
    with pytest.raises(APIError) as refused:
        chat_body(_request(messages=messages))
    assert refused.value.status == 400 and refused.value.param == param


@pytest.mark.parametrize(
    "fields",
    [
        {"thinking": {"type": "enabled", "budget_tokens": 100}},
        {"thinking": {"type": "sometimes"}},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
        {"stop_sequences": ["a", "b", "c", "d", "e"]},
        {"temperature": 1.5},
        {"max_tokens": 0},
    ],
)
def test_what_is_not_served_is_a_validation_error(fields: dict) -> None:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}], **fields}
    with pytest.raises(ValueError):
        MessagesRequest.model_validate(body)


@pytest.mark.parametrize(
    ("thinking", "effort", "budget"),
    [
        (None, "none", None),
        ({"type": "disabled"}, "none", None),
        ({"type": "enabled", "budget_tokens": 1500}, None, 1500),
    ],
)
def test_thinking_is_off_unless_enabled_as_in_anthropics_api(
    thinking: dict | None, effort: str | None, budget: int | None
) -> None:
    fields = {"thinking": thinking} if thinking else {}
    chat = chat_body(_request(messages=[{"role": "user", "content": "x"}], **fields))
    assert chat.reasoning_effort == effort
    assert chat.thinking_budget_tokens == budget, "an enabled thinking's budget is enforced"
    counted = chat_body(
        CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields})
    )
    assert counted.reasoning_effort == effort, "count_tokens renders the prompt the same way"


def test_earlier_thinking_given_back_is_left_out_of_the_turn() -> None:
    history = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": ""},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "y"},
            ],
        },
        {"role": "user", "content": "z"},
    ]
    chat = chat_body(_request(messages=history, thinking={"type": "enabled", "budget_tokens": 2048}))
    assert [(m.role, m.text()) for m in chat.messages] == [("user", "x"), ("assistant", "y"), ("user", "z")]
