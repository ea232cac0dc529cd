"""Threat (robustness): the generic tool format's wrapper leaking as the answer. With `tool_choice: "required"` a
model whose template has no tool syntax answers in the generic format, `{"tool_calls": [...]}`; when max_tokens cut
that JSON short the server could not parse it and returned the raw, half-written wrapper as the message `content`
(seen 2 of 12 times at 64 tokens), which a client then shows or executes as text. Now an answer cut short gives the
calls it began (the last with its arguments as far as they got, as a stream sent them), with `finish_reason:
"length"`, and never the wrapper.
"""

from __future__ import annotations

import httpx
import pytest

from server.serving.constrain.tools.generic import GenericFormat
from tests.conftest import DEMO_MODEL_ID
from tests.support.server import ServerProcess

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    ("text", "names", "content"),
    [
        ('{"tool_calls": [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "argu', ["f", "g"], None),
        ('{"tool_calls": [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"x": 1}}', ["f", "g"], None),
        ('{"tool_calls": [{"name": "f", "arg', ["f"], None),
        ('{"tool_ca', [], None),
        ('{"content": "It is sunny \\u00e9t', [], "It is sunny ét"),
    ],
)
def test_an_answer_cut_short_gives_the_calls_it_began(text: str, names: list[str], content: str | None) -> None:
    answer = GenericFormat().parse(text)
    assert answer is not None
    assert [c.name for c in answer.calls] == names and answer.content == content


@pytest.mark.parametrize("max_tokens", [3, 8, 14])
def test_required_tool_call_cut_by_max_tokens_never_returns_the_wrapper(
    demo_server: ServerProcess, max_tokens: int
) -> None:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "What is the weather in Paris and in Rome?"}],
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    r = httpx.post(f"{demo_server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not (choice["message"]["content"] or "").lstrip().startswith("{"), choice["message"]
    for call in choice["message"].get("tool_calls") or []:
        assert call["function"]["name"] == "get_weather"
