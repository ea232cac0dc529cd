"""Structured outputs, tool calls, logprobs and the tokenizer endpoints through the official openai client on the
demo model (one server for the module)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import DEMO_MODEL_ID, DEMO_NO_EOS
from tests.support.server import ServerProcess, ready_server

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
BOOKING = {
    "type": "function",
    "function": {
        "name": "book_trip",
        "description": "Book a trip.",
        "parameters": {
            "type": "object",
            "properties": {
                "traveller": PERSON["properties"]["address"],
                "class": {"enum": ["economy", "business"]},
                "stops": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 2},
            },
            "required": ["traveller", "class", "stops"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"GGUFSTACK_N_CTX": "2048", "GGUFSTACK_N_SLOTS": "4"}
    with ready_server(tmp_path_factory.mktemp("features"), env) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def _ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_json_object_output_always_parses(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=_ask("Describe a cat as a JSON object with the keys name and color."),
        response_format={"type": "json_object"},
        max_tokens=100,
        seed=1,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates_streaming_or_not(client: openai.OpenAI, stream: bool) -> None:
    args = {
        "model": DEMO_MODEL_ID,
        "messages": _ask("Invent a person."),
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        "max_tokens": 200,
        "temperature": 0.8,
        "seed": 7,
    }
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True))
    else:
        text = client.chat.completions.create(**args).choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_json_schema_works_on_completions_too(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    r = client.completions.create(
        model=DEMO_MODEL_ID,
        prompt="2 + 2 =",
        max_tokens=30,
        temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}},
    )
    jsonschema.validate(json.loads(r.choices[0].text), schema)


MEASUREMENT = {
    "type": "object",
    "properties": {
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "celsius": {"type": "number", "minimum": -40.5, "exclusiveMaximum": 60},
        "ratio": {"type": "number", "exclusiveMinimum": 0.25, "exclusiveMaximum": 0.75},
    },
    "required": ["confidence", "celsius", "ratio"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_number_bounds_hold_at_a_high_temperature(client: openai.OpenAI, seed: int) -> None:
    r = client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=_ask("Report a measurement."),
        response_format={"type": "json_schema", "json_schema": {"name": "m", "schema": MEASUREMENT, "strict": True}},
        max_tokens=200,
        temperature=1.5,
        seed=seed,
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), MEASUREMENT)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "object", "not": {"required": ["a"]}}, "'not'"),
        ({"type": "string", "format": "email"}, "'email'"),
        ({"$ref": "#/$defs/missing"}, "missing"),
        ({"$ref": "https://example.com/schema.json"}, "only local references"),
        ({"type": 5}, "invalid JSON schema"),
        ({"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.5}}}, "'multipleOf'"),
        ({"type": "object", "properties": {"x": {"maximum": 1}}}, "bounds need the type integer or number"),
    ],
)
def test_schemas_the_grammar_cannot_express_are_refused(client: openai.OpenAI, schema: dict, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=_ask("Hi"),
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert info.value.body["param"] == "response_format.json_schema.schema"
    assert fragment in info.value.body["message"]


FIRST_TURN = {
    "tools": [WEATHER],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 0,
    "max_tokens": 200,
}


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_loop(client: openai.OpenAI, stream: bool) -> None:
    messages = _ask("What is the weather in Paris, in celsius?")
    if stream:
        with client.chat.completions.stream(model=DEMO_MODEL_ID, messages=messages, **FIRST_TURN) as events:
            first = events.get_final_completion()
    else:
        first = client.chat.completions.create(model=DEMO_MODEL_ID, messages=messages, **FIRST_TURN)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    messages += [
        choice.message.model_dump(exclude_none=True, exclude={"refusal", "parsed"}),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "clear"}'},
    ]
    final = client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40
    )
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_named_tool_choice_forces_valid_nested_arguments(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=_ask("Book me a business trip from Lyon."),
        tools=[WEATHER, BOOKING],
        tool_choice={"type": "function", "function": {"name": "book_trip"}},
        parallel_tool_calls=False,
        temperature=0.7,
        seed=3,
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "book_trip"
    jsonschema.validate(json.loads(call.function.arguments), BOOKING["function"]["parameters"])


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        (
            [{**WEATHER, "function": {**WEATHER["function"], "parameters": {"not": {}}}}],
            None,
            "tools[0].function.parameters",
        ),
        ([WEATHER, WEATHER], None, "tools[1].function.name"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([{"type": "function", "function": {"name": "has spaces"}}], None, "tools"),
        ([{"type": "retrieval"}], None, "tools"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tool_definitions_get_400_naming_them(server: ServerProcess, tools, choice, param: str) -> None:
    body = {"model": DEMO_MODEL_ID, "messages": _ask("Hi")}
    if tools is not None:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_chat_logprobs_are_of_the_sampled_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=_ask("Count to ten."), max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=3, logit_bias=DEMO_NO_EOS,
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
        # Greedy picks the most likely token, so it heads its own alternatives.
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == token.logprob


def test_streamed_chat_logprobs_match_the_whole_answer(client: openai.OpenAI) -> None:
    args = {"model": DEMO_MODEL_ID, "messages": _ask("Say hi."), "max_tokens": 6, "temperature": 0, "logprobs": True}
    whole = client.chat.completions.create(**args).choices[0].logprobs.content
    streamed = [
        t
        for c in client.chat.completions.create(**args, stream=True)
        if c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in whole]


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=DEMO_MODEL_ID, prompt="The sky is", max_tokens=5, temperature=0, logprobs=2, logit_bias=DEMO_NO_EOS
    )
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(len(top) == 2 for top in lp.top_logprobs)


def test_tokenize_and_detokenize_round_trip(server: ServerProcess, client: openai.OpenAI) -> None:
    text = "The quick brown fox"
    r = httpx.post(f"{server.base_url}/tokenize", json={"content": text, "with_pieces": True}, timeout=10)
    pieces = r.json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == text
    ids = [p["id"] for p in pieces]
    assert httpx.post(f"{server.base_url}/detokenize", json={"tokens": ids}, timeout=10).json() == {"content": text}
    with_special = httpx.post(f"{server.base_url}/tokenize", json={"content": text, "add_special": True}).json()
    usage = client.completions.create(model=DEMO_MODEL_ID, prompt=text, max_tokens=1).usage
    assert len(with_special["tokens"]) == usage.prompt_tokens
    bad = httpx.post(f"{server.base_url}/detokenize", json={"tokens": [10**9]}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_a_model_that_pools_nothing_cannot_embed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=DEMO_MODEL_ID, input="hello")
    assert "GGUFSTACK_EMBEDDING_POOLING" in info.value.body["message"]
