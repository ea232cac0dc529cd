"""A thinking model through the official clients, against a real server serving the demo model with a template whose
generation prompt opens a <think> block: what the model writes is its thinking, sent apart from the answer (chat's
`reasoning_content`, streamed token by token as `delta.reasoning_content`; Anthropic's thinking blocks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import THINKING_MODEL_ID
from tests.support.server import ServerProcess, ready_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, thinking_gguf: Path) -> Iterator[ServerProcess]:
    env = {"GGUFSTACK_MODEL_PATH": str(thinking_gguf), "GGUFSTACK_N_CTX": "2048", "GGUFSTACK_N_SLOTS": "2"}
    with ready_server(tmp_path_factory.mktemp("thinking"), env) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def _model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def _extra(obj: Any, key: str) -> Any:
    return (obj.model_extra or {}).get(key)


@pytest.mark.parametrize(("max_tokens", "finish_reason"), [(3, "length"), (40, "stop")])
def test_a_block_never_closed_is_all_reasoning(client: openai.OpenAI, max_tokens: int, finish_reason: str) -> None:
    """The demo model answers inside the block the template opened and stops without closing it (or is cut short
    by max_tokens): as in llama.cpp's server, all it wrote is thinking and the answer is empty."""
    completion = client.chat.completions.create(
        model=_model(client),
        messages=QUESTION,
        max_tokens=max_tokens,
        temperature=0,  # type: ignore[arg-type]
    )
    choice = completion.choices[0]
    reasoning = _extra(choice.message, "reasoning_content")
    assert choice.finish_reason == finish_reason
    assert isinstance(reasoning, str) and reasoning.strip()
    assert "<think>" not in reasoning and "</think>" not in reasoning
    assert choice.message.content == ""


def test_the_thinking_streams_token_by_token_and_matches_the_whole_answer(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": _model(client), "messages": QUESTION, "max_tokens": 40, "temperature": 0}
    whole = client.chat.completions.create(**args).choices[0].message
    reasoning_deltas: list[str] = []
    content_deltas: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            if (piece := _extra(choice.delta, "reasoning_content")) is not None:
                reasoning_deltas.append(piece)
            if choice.delta.content:
                content_deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(reasoning_deltas) > 1, "the thinking is streamed as it comes, not at the end"
    assert "".join(reasoning_deltas) == _extra(whole, "reasoning_content")
    assert "".join(content_deltas) == whole.content
    assert finish == "stop"


@pytest.mark.parametrize(
    "turned_off",
    [{"reasoning_effort": "none"}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}],
)
def test_thinking_turned_off_leaves_only_an_answer(client: openai.OpenAI, turned_off: dict[str, Any]) -> None:
    """The template then writes an empty block into the prompt itself: the output starts after it."""
    completion = client.chat.completions.create(
        model=_model(client), messages=QUESTION, max_tokens=12, temperature=0, **turned_off
    )
    message = completion.choices[0].message
    assert _extra(message, "reasoning_content") is None
    assert message.content and "<think>" not in message.content


def test_an_answer_given_back_with_its_reasoning_content_is_accepted(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": _model(client), "max_tokens": 8, "temperature": 0}
    first = client.chat.completions.create(**args, messages=QUESTION).choices[0].message
    history = [*QUESTION, first.model_dump(exclude_none=True), {"role": "user", "content": "And Spain?"}]
    again = client.chat.completions.create(**args, messages=history)
    assert _extra(again.choices[0].message, "reasoning_content")


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
BUDGET: dict[str, Any] = {"thinking_budget_tokens": 16}  # the demo model never closes its block of its own accord
WEATHER_CALL: dict[str, Any] = {
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "tools": [WEATHER],
    "tool_choice": "required",
    "max_tokens": 120,
    "temperature": 0,
    "extra_body": BUDGET,
}


def test_a_tool_call_comes_after_the_thinking_closed_by_the_budget(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=_model(client), **WEATHER_CALL)
    choice = completion.choices[0]
    reasoning = _extra(choice.message, "reasoning_content")
    assert isinstance(reasoning, str) and reasoning.strip() and "</think>" not in reasoning
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0].function  # type: ignore[union-attr]  # a function call
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)


def test_a_streamed_tool_answer_sends_its_thinking_as_it_is_decoded(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=_model(client), **WEATHER_CALL, stream=True)
    kinds = []
    for chunk in stream:
        for choice in chunk.choices:
            if _extra(choice.delta, "reasoning_content"):
                kinds.append("thinking")
            if choice.delta.tool_calls:
                kinds.append("call")
    assert kinds.count("thinking") > 1 and "call" in kinds
    assert kinds.index("call") > len(kinds) - kinds[::-1].index("thinking") - 1, "all the thinking comes first"


def test_structured_output_holds_the_answer_after_the_thinking(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    completion = client.chat.completions.create(
        model=_model(client),
        messages=QUESTION,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        max_tokens=120,
        temperature=0,
        extra_body=BUDGET,
    )
    message = completion.choices[0].message
    assert (_extra(message, "reasoning_content") or "").strip(), "the model thought first"
    assert isinstance(json.loads(message.content or "")["capital"], str)


def test_without_a_budget_a_constrained_answer_cut_short_in_the_thinking_is_empty(client: openai.OpenAI) -> None:
    """The grammar refuses the end of text inside the block: the demo model, which never closes it, thinks until
    max_tokens, and the answer it never reached is empty."""
    completion = client.chat.completions.create(
        model=_model(client), messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=12, temperature=0
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert (_extra(choice.message, "reasoning_content") or "").strip()


def test_a_model_that_does_not_think_sends_no_reasoning_key(demo_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{demo_server.base_url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model=_model(client),
        messages=QUESTION,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    assert "reasoning_content" not in completion.choices[0].message.model_dump(exclude_unset=True)


@pytest.fixture(scope="module")
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


THINK_ON: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}  # this SDK's create() takes no temperature


def test_messages_with_thinking_enabled_start_with_a_thinking_block(claude: anthropic.Anthropic) -> None:
    args: dict[str, Any] = {"model": THINKING_MODEL_ID, "max_tokens": 12, "messages": QUESTION, **GREEDY}
    message = claude.messages.create(**args, thinking=THINK_ON)
    first = message.content[0]
    assert first.type == "thinking" and first.thinking.strip() and first.signature == ""
    assert "<think>" not in first.thinking
    assert all(b.type != "text" or "</think>" not in b.text for b in message.content)


def test_messages_stream_thinking_deltas_the_sdk_accumulates(claude: anthropic.Anthropic) -> None:
    args: dict[str, Any] = {"model": THINKING_MODEL_ID, "max_tokens": 40, "messages": QUESTION, **GREEDY}
    whole = claude.messages.create(**args, thinking=THINK_ON)
    with claude.messages.stream(**args, thinking=THINK_ON) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert kinds.count("thinking_delta") > 1 and kinds[-1] in ("signature_delta", "text_delta")
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}])
def test_messages_without_thinking_enabled_answer_in_text(
    claude: anthropic.Anthropic, thinking: dict[str, Any] | None
) -> None:
    """Anthropic's default: the template is asked to write its empty block, so the model answers at once."""
    extra: dict[str, Any] = {"thinking": thinking} if thinking else {}
    message = claude.messages.create(model=THINKING_MODEL_ID, max_tokens=12, messages=QUESTION, **extra, **GREEDY)
    assert [b.type for b in message.content] == ["text"]


def test_responses_accept_a_reasoning_effort(client: openai.OpenAI) -> None:
    """ "none" turns the thinking off (the template writes its empty block), so the output text is the answer."""
    response = client.responses.create(
        model=THINKING_MODEL_ID,
        input="What is the capital of France?",
        max_output_tokens=12,
        reasoning={"effort": "none"},
        temperature=0,
    )
    assert response.output_text and "</think>" not in response.output_text


def test_responses_put_the_thinking_in_a_reasoning_item_first(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=THINKING_MODEL_ID, input="What is the capital of France?", max_output_tokens=12, temperature=0
    )
    first = response.output[0]
    assert first.type == "reasoning" and first.summary == []
    assert first.content and first.content[0].type == "reasoning_text" and first.content[0].text.strip()
    assert "</think>" not in first.content[0].text and "</think>" not in response.output_text


def test_a_streamed_response_sends_the_reasoning_item_the_sdk_accumulates(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {
        "model": THINKING_MODEL_ID,
        "input": "What is the capital of France?",
        "max_output_tokens": 40,
        "temperature": 0,
    }
    whole = client.responses.create(**args)
    with client.responses.stream(**args) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds.count("response.reasoning_text.delta") > 1, "the thinking streams as it is decoded"
    assert "response.reasoning_text.done" in kinds
    assert [item.type for item in final.output] == [item.type for item in whole.output]
    assert final.output[0].content == whole.output[0].content  # type: ignore[union-attr]  # a reasoning item


def test_reasoning_items_given_back_or_chained_are_left_out_of_the_prompt(client: openai.OpenAI) -> None:
    greedy: dict[str, Any] = {"model": THINKING_MODEL_ID, "max_output_tokens": 8, "temperature": 0}
    first = client.responses.create(input="Hi", **greedy)
    assert first.output[0].type == "reasoning"
    without_reasoning = [item for item in first.output if item.type != "reasoning"]

    def prompt_tokens(given_back: list[Any]) -> int:
        turns = [
            {"role": "user", "content": "Hi"},
            *[item.model_dump(exclude_none=True) for item in given_back],
            {"role": "user", "content": "And again?"},
        ]
        again = client.responses.create(input=turns, store=False, **greedy)
        assert again.usage is not None
        return again.usage.input_tokens

    chained = client.responses.create(input="And again?", previous_response_id=first.id, **greedy)
    assert chained.usage is not None
    assert prompt_tokens(first.output) == prompt_tokens(without_reasoning) == chained.usage.input_tokens
