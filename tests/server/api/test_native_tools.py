"""Tool calls in a model's own Hermes syntax, through the official openai client against a real server (one for the
module) serving the demo model with a Hermes/Qwen-style chat template: the prompts the server builds are the native
rendering, and calls are parsed from the model's own `<tool_call>` output."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageToolCall

from server.engine.llama_model import LlamaModel
from server.protocol.openai import ChatCompletionRequest
from server.serving.constrain.tools.hermes import HermesFormat
from server.serving.constrain.tools.plan import plan
from tests.conftest import DEMO_NO_EOS, HERMES_MODEL_ID
from tests.server.api.test_openai_features import BOOKING, WEATHER
from tests.support.server import ServerProcess, ready_server

ORDER = {
    "type": "function",
    "function": {
        "name": "place_order",
        "description": "Order items for delivery.",
        "parameters": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
                        },
                        "required": ["sku", "quantity"],
                        "additionalProperties": False,
                    },
                    "minItems": 1,
                    "maxItems": 3,
                },
                "delivery": {
                    "type": "object",
                    "properties": {
                        "speed": {"enum": ["standard", "express"]},
                        "address": {
                            "type": "object",
                            "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["speed", "address"],
                    "additionalProperties": False,
                },
            },
            "required": ["items", "delivery"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, BOOKING, ORDER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hermes_gguf: Path) -> Iterator[ServerProcess]:
    env = {"GGUFSTACK_MODEL_PATH": str(hermes_gguf), "GGUFSTACK_N_CTX": "2048", "GGUFSTACK_N_SLOTS": "4"}
    with ready_server(tmp_path_factory.mktemp("native-tools"), env) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model(hermes_gguf: Path) -> Iterator[LlamaModel]:
    """The same GGUF in this process: what the prompt must be, rendered the native way."""
    loaded = LlamaModel(hermes_gguf, n_gpu_layers=0)
    yield loaded
    loaded.close()


def _native_prompt_tokens(model: LlamaModel, body: dict) -> int:
    """How many tokens the prompt has when the template renders the tools and history itself."""
    request = ChatCompletionRequest.model_validate({"model": HERMES_MODEL_ID, **body})
    given = HermesFormat().template_input(request.messages, plan(request))
    return len(model.tokenize(model.render_chat(given.messages, given.tools), add_special=False))


def _complete(client: openai.OpenAI, body: dict, *, stream: bool) -> ChatCompletion:
    """One completion, streamed (the SDK's stream helper accumulates the chunks) or not."""
    if not stream:
        return client.chat.completions.create(model=HERMES_MODEL_ID, **body)
    with client.chat.completions.stream(
        model=HERMES_MODEL_ID, stream_options={"include_usage": True}, **body
    ) as events:
        return events.get_final_completion()


def _assert_valid(calls: list[ChatCompletionMessageToolCall] | None) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_the_server_serves_the_template_natively(server: ServerProcess) -> None:
    assert "tool calls: the chat template's own hermes syntax" in server.log()


@pytest.mark.parametrize("stream", [False, True])
def test_required_gives_valid_nested_arguments_from_native_output(
    client: openai.OpenAI, model: LlamaModel, stream: bool
) -> None:
    body = {
        "messages": [{"role": "user", "content": "Order two ABC-123 by express to Lyon."}],
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0.8,
        "seed": 5,
        "max_tokens": 300,
    }
    r = _complete(client, body, stream=stream)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    _assert_valid(choice.message.tool_calls)
    assert r.usage.prompt_tokens == _native_prompt_tokens(model, body)


@pytest.mark.parametrize("name", ["place_order", "book_trip"])
def test_a_named_function_is_the_one_called(client: openai.OpenAI, name: str) -> None:
    r = client.chat.completions.create(
        model=HERMES_MODEL_ID,
        messages=[{"role": "user", "content": "Go ahead."}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": name}},
        parallel_tool_calls=False,
        temperature=0.8,
        seed=11,
        max_tokens=300,
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == name
    _assert_valid([call])


# Greedy, one call required: the same answer streamed or not.
ONE_REQUIRED_CALL = {
    "messages": [{"role": "user", "content": "What is the weather in Paris, in celsius?"}],
    "tools": [WEATHER],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 0,
    "max_tokens": 200,
}


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_loop(client: openai.OpenAI, model: LlamaModel, stream: bool) -> None:
    first_turn = ONE_REQUIRED_CALL
    first = _complete(client, first_turn, stream=stream)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    _assert_valid([call])

    second_turn = {
        "messages": [
            *first_turn["messages"],
            choice.message.model_dump(exclude_none=True, exclude={"refusal", "parsed"}),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "clear"}'},
        ],
        "tools": [WEATHER],
        "tool_choice": "none",
        "temperature": 0,
        "max_tokens": 40,
    }
    final = _complete(client, second_turn, stream=stream)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    # The call and its result were written back the template's way (<tool_call>, role "tool" in <tool_response>).
    assert final.usage.prompt_tokens == _native_prompt_tokens(model, second_turn)


def test_a_call_streams_its_name_then_its_arguments_as_they_are_generated(client: openai.OpenAI) -> None:
    """As OpenAI streams one: the id and name first, then the arguments in many pieces, adding up to the arguments of
    the same answer unstreamed. They used to come whole, once the answer had ended."""
    body = ONE_REQUIRED_CALL
    whole = client.chat.completions.create(model=HERMES_MODEL_ID, **body)
    (expected,) = whole.choices[0].message.tool_calls or []
    named, pieces = [], []
    for chunk in client.chat.completions.create(model=HERMES_MODEL_ID, stream=True, **body):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function and call.function.name:
                named.append((call.id, call.function.name, len(pieces)))
            if call.function and call.function.arguments:
                pieces.append(call.function.arguments)
    assert [name for _, name, _ in named] == ["get_weather"] and named[0][0] and named[0][2] == 0
    assert len(pieces) > 3 and "".join(pieces) == expected.function.arguments
    _assert_valid([expected])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_answers_either_way_and_parses(client: openai.OpenAI, seed: int) -> None:
    r = client.chat.completions.create(
        model=HERMES_MODEL_ID,
        messages=[{"role": "user", "content": "What is the weather in Paris, in celsius?"}],
        tools=[WEATHER],
        tool_choice="auto",
        temperature=0.8,
        seed=seed,
        max_tokens=60,
    )
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        _assert_valid(choice.message.tool_calls)
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_auto_parses_a_call_the_model_chose_to_make(client: openai.OpenAI, server: ServerProcess, stream: bool) -> None:
    """The demo model is too small to pick a tool by itself: a logit bias towards the pieces of `<tool_call>` makes
    it start one, and the grammar takes it from there."""
    pieces = httpx.post(f"{server.base_url}/tokenize", json={"content": "<tool_call>"}, timeout=10).json()["tokens"]
    body = {
        "messages": [{"role": "user", "content": "What is the weather in Paris, in celsius?"}],
        "tools": [WEATHER],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "logit_bias": {str(token): 10 for token in pieces},
        "temperature": 0,
        "max_tokens": 120,
    }
    r = _complete(client, body, stream=stream)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    _assert_valid([call])


def test_auto_streams_the_text_before_any_call_as_it_is_decoded(client: openai.OpenAI) -> None:
    """With tools and tool_choice "auto" (OpenAI's default), each choice's text streams token by token, not in one
    burst once the generation ends, and adds up to the content of the same answer unstreamed."""
    body = {
        "messages": [{"role": "user", "content": "Tell me about Paris."}],
        "tools": [WEATHER],
        "tool_choice": "auto",
        "temperature": 0,
        "max_tokens": 24,
        "n": 2,
        "logit_bias": DEMO_NO_EOS,  # every choice runs to max_tokens
    }
    # Asked twice: the first answer runs on a cold prompt cache, whose numbers can tip a greedy token.
    client.chat.completions.create(model=HERMES_MODEL_ID, **body)
    whole = client.chat.completions.create(model=HERMES_MODEL_ID, **body)
    texts: dict[int, list[str]] = {0: [], 1: []}
    first_text: dict[int, float] = {}
    finished: dict[int, float] = {}
    for chunk in client.chat.completions.create(model=HERMES_MODEL_ID, stream=True, **body):
        for choice in chunk.choices:
            if choice.delta.content:
                texts[choice.index].append(choice.delta.content)
                first_text.setdefault(choice.index, time.monotonic())
            if choice.finish_reason is not None:
                finished[choice.index] = time.monotonic()
    for c in whole.choices:
        assert not c.message.tool_calls and c.finish_reason == "length" and c.message.content
        assert "".join(texts[c.index]) == c.message.content
        assert len(texts[c.index]) > 1 and first_text[c.index] < finished[c.index]


def test_bad_tools_get_a_400_naming_them(client: openai.OpenAI) -> None:
    broken = {**WEATHER, "function": {**WEATHER["function"], "parameters": {"not": {}}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=HERMES_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], tools=[broken], tool_choice="required"
        )
    assert info.value.body["param"] == "tools[0].function.parameters"
