"""The Responses API through the official openai client, against real servers (one per module fixture) with the
in-memory response store: create, stream, continue with previous_response_id, read back, list, delete, structured
output, function calls on the Hermes fixture model, and the fields this server refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.conftest import DEMO_MODEL_ID, HERMES_MODEL_ID
from tests.server.api.test_openai_features import PERSON
from tests.support.server import ServerProcess, ready_server

GREEDY = {"temperature": 0, "extra_body": {"seed": 7}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"GGUFSTACK_N_CTX": "1024", "GGUFSTACK_N_SLOTS": "2", "GGUFSTACK_RESPONSES_MEMORY_MAX": "50"}
    with ready_server(tmp_path_factory.mktemp("responses"), env) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _comparable(response) -> dict:
    """A response without what differs between two runs of the same request: ids and times."""
    body = response.model_dump(exclude_none=True)
    for key in ("id", "created_at", "completed_at"):
        body.pop(key, None)
    for item in body["output"]:
        item.pop("id")
    return body


def test_create_read_list_and_delete(client: openai.OpenAI) -> None:
    created = client.responses.create(
        model=DEMO_MODEL_ID,
        input="Name a colour.",
        instructions="Answer in one word.",
        max_output_tokens=8,
        metadata={"team": "a"},
        **GREEDY,
    )
    assert created.id.startswith("resp_") and created.object == "response" and created.model == DEMO_MODEL_ID
    assert created.output_text and created.output[0].type == "message" and created.output[0].role == "assistant"
    assert created.usage.input_tokens > 0 and 0 < created.usage.output_tokens <= 8
    assert created.usage.total_tokens == created.usage.input_tokens + created.usage.output_tokens
    assert created.status in ("completed", "incomplete") and created.store is True
    assert created.instructions == "Answer in one word." and created.metadata == {"team": "a"}

    assert client.responses.retrieve(created.id) == created
    items = client.responses.input_items.list(created.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [("message", "user", "Name a colour.")]
    assert items.data[0].id.startswith("msg_") and items.has_more is False

    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_the_stream_accumulates_to_the_same_response(client: openai.OpenAI) -> None:
    kwargs = {"model": DEMO_MODEL_ID, "input": "Write a short sentence about the sea.", "max_output_tokens": 24}
    whole = client.responses.create(**kwargs, **GREEDY)
    with client.responses.stream(**kwargs, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert _comparable(final) == _comparable(whole)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed" if whole.status == "completed" else "response.incomplete",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_raw_stream_names_each_event(server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "input": "Hi", "max_output_tokens": 2, "stream": True, "store": False}
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas] and names[-1] == "response.incomplete"
    assert datas[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert "[DONE]" not in "".join(lines)


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=DEMO_MODEL_ID, input="My name is Ada. Say hello.", max_output_tokens=12, **GREEDY
    )
    second = client.responses.create(
        model=DEMO_MODEL_ID, input="What is my name?", previous_response_id=first.id, max_output_tokens=12, **GREEDY
    )
    assert second.previous_response_id == first.id
    # The second prompt holds the first exchange: more than the first's input and output together.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["What is my name?"]

    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model=DEMO_MODEL_ID, input="Hi", previous_response_id="resp_nope")
    assert unknown.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    unstored = client.responses.create(model=DEMO_MODEL_ID, input="Hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=DEMO_MODEL_ID, input="Hi", previous_response_id=unstored.id)


def test_input_items_replay_an_earlier_output(client: openai.OpenAI) -> None:
    first = client.responses.create(model=DEMO_MODEL_ID, input="Count to three.", max_output_tokens=10, **GREEDY)
    replayed = client.responses.create(
        model=DEMO_MODEL_ID,
        input=[{"role": "user", "content": "Count to three."}, *first.output, {"role": "user", "content": "Again."}],
        max_output_tokens=10,
        **GREEDY,
    )
    chained = client.responses.create(
        model=DEMO_MODEL_ID, input="Again.", previous_response_id=first.id, max_output_tokens=10, **GREEDY
    )
    assert replayed.usage.input_tokens == chained.usage.input_tokens
    assert replayed.output_text == chained.output_text


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=DEMO_MODEL_ID,
        input="Describe a person as JSON.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        max_output_tokens=200,
        **GREEDY,
    )
    assert response.status == "completed", response
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text.format.type == "json_schema"


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)


def test_the_sdk_parses_into_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model=DEMO_MODEL_ID, input="Name a city as JSON.", text_format=City, max_output_tokens=60, **GREEDY
    )
    assert isinstance(parsed.output_parsed, City)


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=DEMO_MODEL_ID, input="Tell me a long story.", max_output_tokens=3, **GREEDY
    )
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "low", "mode": "pro"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ],
)
def test_unsupported_fields_are_a_400_naming_them(client: openai.OpenAI, fields: dict, param: str) -> None:
    body = {"model": DEMO_MODEL_ID, "input": "Hi", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**body)
    assert refused.value.body["param"] == param


_UNBOUNDED = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5000}}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_output_tokens": 5000}, "max_output_tokens"),
        ({"input": "hello " * 3000}, "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": _UNBOUNDED}}}, "text.format.schema"),
        ({"tools": [{"type": "function", "name": "f", "parameters": _UNBOUNDED}]}, "tools[0].parameters"),
    ],
)
def test_a_refusal_from_the_chat_preparation_names_the_responses_field(
    client: openai.OpenAI, fields: dict, param: str
) -> None:
    # Served as a chat completion, these were refused naming max_tokens, messages, response_format.json_schema.schema
    # and tools[0].function.parameters: fields no Responses request has.
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**{"model": DEMO_MODEL_ID, "input": "Hi", **fields})
    assert refused.value.body["param"] == param


@pytest.fixture(scope="module")
def hermes_client(tmp_path_factory: pytest.TempPathFactory, hermes_gguf: Path) -> Iterator[openai.OpenAI]:
    env = {"GGUFSTACK_MODEL_PATH": str(hermes_gguf), "GGUFSTACK_N_CTX": "2048", "GGUFSTACK_N_SLOTS": "2"}
    with ready_server(tmp_path_factory.mktemp("responses-hermes"), env) as process:
        yield openai.OpenAI(base_url=f"{process.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_a_function_call_round_trip(hermes_client: openai.OpenAI) -> None:
    asked = hermes_client.responses.create(
        model=HERMES_MODEL_ID,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        **GREEDY,
    )
    calls = [item for item in asked.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])

    with hermes_client.responses.stream(
        model=HERMES_MODEL_ID,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        **GREEDY,
    ) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert [(c.name, c.arguments) for c in streamed.output if c.type == "function_call"] == [
        (c.name, c.arguments) for c in calls
    ]

    answered = hermes_client.responses.create(
        model=HERMES_MODEL_ID,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temperature_c": 21}'}],
        tools=[WEATHER],
        max_output_tokens=40,
        **GREEDY,
    )
    assert answered.status in ("completed", "incomplete") and answered.output
    items = hermes_client.responses.input_items.list(answered.id)
    assert items.data[0].type == "function_call_output" and items.data[0].call_id == calls[0].call_id


def test_a_tool_answer_streams_its_text_as_it_is_decoded_and_keeps_it(hermes_client: openai.OpenAI) -> None:
    """With tools the model may call (tool_choice auto), the message's text streams as output_text deltas, not in
    one burst at the end; it is the text of the same answer unstreamed, and the stored response is what streamed."""
    body = {"model": HERMES_MODEL_ID, "input": "Tell me about Paris.", "tools": [WEATHER], "max_output_tokens": 24}
    hermes_client.responses.create(**body, **GREEDY)  # the first runs on a cold prompt cache, which can tip a token
    whole = hermes_client.responses.create(**body, **GREEDY)
    assert [item.type for item in whole.output] == ["message"] and whole.output_text
    deltas: list[str] = []
    ends = []  # response.incomplete where max_output_tokens cut it, which the SDK's final response does not take
    with hermes_client.responses.stream(**body, **GREEDY) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.output_text.done":
                assert len(deltas) > 1, "the text came as it was decoded, before it was done"
            elif event.type in ("response.completed", "response.incomplete"):
                ends.append(event.response)
    (streamed,) = ends
    assert "".join(deltas) == streamed.output_text == whole.output_text and streamed.status == whole.status
    kept = hermes_client.responses.retrieve(streamed.id)
    assert kept.output == streamed.output
