"""OpenAI request shapes: what a chat message must hold, said in plain words."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.protocol.openai import ChatMessage


@pytest.mark.parametrize(
    ("role", "said"),
    [("assistant", "an assistant message needs content"), ("user", "a user message needs content")],
)
def test_a_message_without_content_is_refused_with_its_role_named(role: str, said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        ChatMessage(role=role, content=None)


def test_an_assistant_message_with_tool_calls_needs_no_content() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]}).tool_calls
