"""Anthropic's Messages API through the official `anthropic` client against a real server (one for the module): two
models (the Hermes-template demo model, which calls tools natively, and the plain demo model), keys in PostgreSQL,
the admin key beside them, rate limits and the response cache in a Redis of its own."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import psycopg
import pytest
from anthropic.types import Message, TextBlock, ToolUseBlock

from server.config.settings import Settings
from tests.support.postgres import Postgres
from tests.support.redis import start_redis
from tests.support.server import ServerProcess, ready_server

ADMIN_KEY = "admin-" + uuid.uuid4().hex
DATABASE = "messages_" + uuid.uuid4().hex[:8]
HERMES, SMOL = "hermes", "smol"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
# The SDK's own parameters no longer include the sampling ones (Anthropic's newest models drop them); the server takes
# them as the Messages API documents them.
GREEDY = {"extra_body": {"temperature": 0}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Answer in one short sentence."}]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, hermes_gguf: Path, demo_gguf: Path
) -> Iterator[ServerProcess]:
    postgres.create_database(DATABASE)
    redis = start_redis(tmp_path_factory.mktemp("messages-redis"))
    env = {
        "GGUFSTACK_MODELS": json.dumps(
            [{"id": HERMES, "path": str(hermes_gguf), "pin": True}, {"id": SMOL, "path": str(demo_gguf), "pin": True}]
        ),
        "GGUFSTACK_N_CTX": "2048",
        "GGUFSTACK_N_SLOTS": "2",
        "GGUFSTACK_DATABASE_URL": postgres.url(DATABASE),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_KEY_CACHE_TTL_S": "0",
        "GGUFSTACK_REDIS_URL": redis.url(),
    }
    try:
        with ready_server(tmp_path_factory.mktemp("messages"), env) as process:
            yield process
    finally:
        redis.stop()


def _client(server: ServerProcess, *, api_key: str | None = None, x_api_key: str | None = None) -> anthropic.Anthropic:
    """The SDK sends `api_key` as `Authorization: Bearer`; Claude Code and older SDKs send the key as x-api-key."""
    headers: dict[str, Any] = {} if api_key is not None else {"Authorization": anthropic.omit}
    if x_api_key is not None:
        headers["X-Api-Key"] = x_api_key
    return anthropic.Anthropic(
        base_url=server.base_url, api_key=api_key, max_retries=0, timeout=300, default_headers=headers
    )


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> anthropic.Anthropic:
    return _client(server, api_key=ADMIN_KEY)


def _key_record(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    created = httpx.post(
        f"{server.base_url}/admin/keys",
        json={"name": "messages-" + uuid.uuid4().hex[:6], **fields},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    record: dict[str, Any] = created.json()
    return record


def _key(server: ServerProcess, **fields: Any) -> str:
    key: str = _key_record(server, **fields)["key"]
    return key


def _streamed(client: anthropic.Anthropic, **body: Any) -> tuple[Message, list[str]]:
    """The SDK's accumulated message, and the event types in the order they came."""
    with client.messages.stream(**body) as stream:
        types = [event.type for event in stream]
        return stream.get_final_message(), types


def _blocks(message: Message) -> list[dict[str, Any]]:
    """The content as data: the stream helper's blocks are its own subclasses, with a `parsed_output` beside."""
    return [b.model_dump(exclude={"parsed_output"}) for b in message.content]


def _text(message: Message) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


def test_create_answers_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    m = client.messages.create(
        model=HERMES, max_tokens=24, **GREEDY, system="You are terse.", messages=ASK, metadata={"user_id": "u1"}
    )
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == HERMES
    assert [b.type for b in m.content] == ["text"] and _text(m)
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 24


def test_the_streamed_message_equals_the_whole_one(client: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {"model": HERMES, "max_tokens": 32, **GREEDY, "messages": ASK}
    whole = client.messages.create(**body)
    streamed, types = _streamed(client, **body)
    assert _blocks(streamed) == _blocks(whole) and streamed.stop_reason == whole.stop_reason
    assert streamed.usage.input_tokens == whole.usage.input_tokens
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    assert types[0] == "message_start" and types[-1] == "message_stop"
    raw = [event.type for event in client.messages.create(stream=True, **body)]
    deltas = raw.count("content_block_delta")
    assert deltas > 1
    assert raw == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_max_tokens_and_stop_sequences_say_why_the_answer_ended(client: anthropic.Anthropic) -> None:
    cut = client.messages.create(model=HERMES, max_tokens=3, **GREEDY, messages=ASK)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    full = _text(client.messages.create(model=HERMES, max_tokens=32, **GREEDY, messages=ASK))
    stop = full.split()[2]  # a word the greedy answer writes
    body: dict[str, Any] = {"model": HERMES, "max_tokens": 32, **GREEDY, "messages": ASK}
    stopped = client.messages.create(stop_sequences=[stop, "zzz-never"], **body)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert full.startswith(_text(stopped)) and stop not in _text(stopped)
    streamed, _ = _streamed(client, stop_sequences=[stop, "zzz-never"], **body)
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == stop
    assert _blocks(streamed) == _blocks(stopped)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(client: anthropic.Anthropic, stream: bool) -> None:
    body: dict[str, Any] = {"model": HERMES, "max_tokens": 200, **GREEDY, "tools": [WEATHER]}
    ask: dict[str, Any] = {**body, "messages": ASK, "tool_choice": {"type": "any"}}
    called = _streamed(client, **ask)[0] if stream else client.messages.create(**ask)
    assert called.stop_reason == "tool_use"
    uses = [b for b in called.content if isinstance(b, ToolUseBlock)]
    assert uses and all(u.name == "get_weather" and u.id.startswith("toolu_") for u in uses)
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    history = [
        *ASK,
        {"role": "assistant", "content": called.content},  # the SDK's blocks as they came, as Anthropic's docs do
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "18 C, sunny"} for u in uses],
        },
    ]
    answer = client.messages.create(**body, messages=history, tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens") and _text(answer)
    # The tool result is part of the prompt: the answer's input counts it.
    none = {"type": "none"}  # with tool_choice none the template is not given the tools: neither prompt has them
    counted = client.messages.count_tokens(model=HERMES, messages=history, tools=[WEATHER], tool_choice=none)
    assert counted.input_tokens == answer.usage.input_tokens
    with_tools = client.messages.count_tokens(model=HERMES, messages=history, tools=[WEATHER])
    assert with_tools.input_tokens > called.usage.input_tokens  # the call and its result joined the prompt


def test_a_tool_answer_streams_its_text_as_it_is_decoded(client: anthropic.Anthropic) -> None:
    """With tools the model may call (tool_choice auto), the text before any call streams as text_deltas, not in one
    burst at the end, and is the text of the same answer unstreamed."""
    body: dict[str, Any] = {"model": HERMES, "max_tokens": 24, **GREEDY, "messages": ASK, "tools": [WEATHER]}
    client.messages.create(**body)  # the first runs on a cold prompt cache, whose numbers can tip a greedy token
    whole = client.messages.create(**body)
    assert _text(whole) and whole.stop_reason in ("end_turn", "max_tokens")
    texts, types = [], []
    with client.messages.stream(**body) as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
    assert "".join(texts) == _text(whole) and len(texts) > 1
    assert types.index("content_block_delta") < types.index("content_block_stop") < types.index("message_delta")
    assert types.count("content_block_delta") == len(texts), "one delta per piece of text, none at the end"


def test_a_named_tool_is_the_one_called(client: anthropic.Anthropic) -> None:
    other = {**WEATHER, "name": "get_time", "input_schema": {"type": "object", "properties": {}}}
    m = client.messages.create(
        model=HERMES,
        max_tokens=120,
        **GREEDY,
        messages=ASK,
        tools=[WEATHER, other],
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    )
    uses = [b for b in m.content if isinstance(b, ToolUseBlock)]
    assert m.stop_reason == "tool_use" and [u.name for u in uses] == ["get_time"]


def test_count_tokens_refuses_a_prompt_that_cannot_fit_without_counting_it(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.count_tokens(model=HERMES, messages=[{"role": "user", "content": " " * 2_000_000}])
    assert "has at least" in info.value.body["error"]["message"]


def test_count_tokens_counts_what_create_reads(client: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {"model": HERMES, "messages": ASK, "system": [{"type": "text", "text": "Be terse."}]}
    counted = client.messages.count_tokens(**body)
    made = client.messages.create(max_tokens=2, **body)
    assert counted.input_tokens == made.usage.input_tokens > 0


def test_errors_are_anthropics(server: ServerProcess, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=HERMES, max_tokens=4, messages=ASK, extra_body={"frobnicate": 1})
    assert bad.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "unrecognized request argument supplied: frobnicate"},
    }
    with pytest.raises(anthropic.BadRequestError) as image:
        client.messages.create(
            model=HERMES,
            max_tokens=4,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}],
        )
    assert "messages.0.content" in image.value.body["error"]["message"]
    # An input schema that is no object's would make the grammar force a call no tool_use block can carry.
    integer = {"name": "f", "input_schema": {"type": "integer"}}
    with pytest.raises(anthropic.BadRequestError) as not_an_object:
        client.messages.create(model=HERMES, max_tokens=4, messages=ASK, tools=[integer], tool_choice={"type": "any"})
    assert "tools.0.input_schema" in not_an_object.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert "claude-sonnet-4-5" in missing.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as unknown:
        _client(server, x_api_key="sk-not-a-key").messages.create(model=HERMES, max_tokens=4, messages=ASK)
    assert unknown.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        _client(server).messages.count_tokens(model=HERMES, messages=ASK)  # no key at all


def test_a_key_in_either_header_but_never_two_different_ones(server: ServerProcess) -> None:
    key = _key(server)
    for client in (
        _client(server, api_key=key),
        _client(server, x_api_key=key),
        _client(server, api_key=key, x_api_key=key),
    ):
        assert client.messages.count_tokens(model=HERMES, messages=ASK).input_tokens > 0
    # The admin key beside a tenant's must not make the request the admin's, nor the other way round.
    for api_key, x_api_key in ((ADMIN_KEY, key), (key, ADMIN_KEY)):
        with pytest.raises(anthropic.AuthenticationError) as refused:
            _client(server, api_key=api_key, x_api_key=x_api_key).messages.count_tokens(model=HERMES, messages=ASK)
        assert "different keys" in refused.value.body["error"]["message"]


def test_a_key_limited_to_a_model_is_refused_the_other(server: ServerProcess) -> None:
    limited = _client(server, x_api_key=_key(server, models=[HERMES]))
    assert limited.messages.create(model=HERMES, max_tokens=2, messages=ASK).usage.output_tokens > 0
    for call in (
        lambda: limited.messages.create(model=SMOL, max_tokens=2, messages=ASK),
        lambda: limited.messages.count_tokens(model=SMOL, messages=ASK),
    ):
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            call()
        assert refused.value.body["error"]["type"] == "permission_error"


def test_the_other_model_answers_by_its_own_template(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model=SMOL, max_tokens=8, **GREEDY, messages=ASK)
    assert m.model == SMOL and m.usage.output_tokens > 0


def test_audit_rows_name_the_messages_endpoints(server: ServerProcess, postgres: Postgres) -> None:
    record = _key_record(server)
    client = _client(server, x_api_key=record["key"])
    made = client.messages.create(model=HERMES, max_tokens=3, messages=ASK)
    client.messages.count_tokens(model=HERMES, messages=ASK)
    query = (
        "SELECT endpoint, model, prompt_tokens, completion_tokens, status FROM audit_log WHERE key_id = %s ORDER BY id"
    )
    deadline = time.monotonic() + 20
    with psycopg.connect(postgres.url(DATABASE), autocommit=True) as db:
        while len(rows := db.execute(query, (record["id"],)).fetchall()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert rows == [
        ("messages", HERMES, made.usage.input_tokens, made.usage.output_tokens, 200),
        ("messages.count_tokens", HERMES, 0, 0, 200),
    ]


def test_a_key_over_its_rate_is_told_so_in_anthropics_shape(server: ServerProcess) -> None:
    limited = _client(server, x_api_key=_key(server, rpm=1))
    assert limited.messages.count_tokens(model=HERMES, messages=ASK).input_tokens > 0
    with pytest.raises(anthropic.RateLimitError) as refused:
        limited.messages.create(model=HERMES, max_tokens=2, messages=ASK)
    assert refused.value.body["error"]["type"] == "rate_limit_error"
    assert int(refused.value.response.headers["retry-after"]) > 0


def test_a_greedy_message_is_answered_from_the_cache_the_second_time(server: ServerProcess) -> None:
    key = _key(server)  # the cache is per key: the same key asks both ways
    client = _client(server, x_api_key=key)
    body: dict[str, Any] = {
        "model": HERMES,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": uuid.uuid4().hex}],
    }
    first = client.messages.with_raw_response.create(**body, **GREEDY)
    again = client.messages.with_raw_response.create(**body, **GREEDY)
    assert (first.headers["x-ggufstack-cache"], again.headers["x-ggufstack-cache"]) == ("miss", "hit")
    assert _blocks(again.parse()) == _blocks(first.parse())
    chat = httpx.post(  # the same request as a chat completion is another endpoint's answer: not shared
        f"{server.base_url}/v1/chat/completions",
        json={**body, "temperature": 0},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert chat.status_code == 200 and chat.headers["x-ggufstack-cache"] == "miss"


def test_a_prefill_is_continued(client: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {"model": HERMES, "max_tokens": 24, "messages": ASK, **GREEDY}
    whole = _text(client.messages.create(**body))
    start = " ".join(whole.split()[:3])  # the greedy answer's own start, as a prefill
    prefilled = [*ASK, {"role": "assistant", "content": start}]
    rest = client.messages.create(**{**body, "messages": prefilled, "max_tokens": 8})
    # Only the continuation comes back; greedy, it goes on as the answer did.
    assert not _text(rest).startswith(start) and whole.startswith(start + _text(rest)[:4])
    counted = client.messages.count_tokens(model=HERMES, messages=prefilled)
    assert counted.input_tokens == rest.usage.input_tokens
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(**{**body, "messages": prefilled, "tools": [WEATHER]})
    assert "prefill" in refused.value.body["error"]["message"]


def test_oversized_requests_are_refused_before_any_work(client: anthropic.Anthropic) -> None:
    padding = "x" * (Settings.model_fields["max_request_bytes"].default + 1)
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.count_tokens(model=HERMES, messages=[{"role": "user", "content": padding}])
    assert too_large.value.status_code == 413
    assert too_large.value.body["error"]["type"] == "request_too_large"
    many = [{"role": "user", "content": "hi"}] * (Settings.model_fields["max_messages"].default + 1)
    with pytest.raises(anthropic.BadRequestError) as too_many:
        client.messages.count_tokens(model=HERMES, messages=many)
    assert "GGUFSTACK_MAX_MESSAGES" in too_many.value.body["error"]["message"]


def test_a_refusal_from_the_chat_preparation_names_the_messages_field(client: anthropic.Anthropic) -> None:
    # Served as a chat completion, a tool's schema was refused as "tools[0].function.parameters", a field no
    # Messages request has.
    tool = {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5000}}}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=HERMES, max_tokens=4, messages=ASK, tools=[tool])
    message = refused.value.body["error"]["message"]
    assert message.startswith("tools.0.input_schema: ") and "function" not in message, message
