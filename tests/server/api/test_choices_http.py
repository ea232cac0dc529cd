"""`n` choices through the official openai client (sync, async, streaming) on the demo model, one server for the
module."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import DEMO_MODEL_ID, DEMO_NO_EOS
from tests.support.server import ServerProcess, ready_server

ASK = [{"role": "user", "content": "Name a colour and say why you like it."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"GGUFSTACK_N_CTX": "1024", "GGUFSTACK_N_SLOTS": "4", "GGUFSTACK_MAX_N": "3"}
    with ready_server(tmp_path_factory.mktemp("choices"), env) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


CHAT = {"model": DEMO_MODEL_ID, "messages": ASK, "n": 3, "max_tokens": 12, "temperature": 1.0, "seed": 11}


def test_chat_answers_n_choices_with_usage_over_all_of_them(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(**CHAT, logit_bias=DEMO_NO_EOS)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in r.choices)
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.completion_tokens == 36
    assert r.usage.prompt_tokens == client.chat.completions.create(**(CHAT | {"n": 1})).usage.prompt_tokens


def test_streamed_choices_interleave_by_index_and_match_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(**CHAT)
    text: dict[int, str] = defaultdict(str)
    roles: dict[int, int] = defaultdict(int)
    reasons: dict[int, list[str]] = defaultdict(list)
    usage = None
    for chunk in client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for c in chunk.choices:
            text[c.index] += c.delta.content or ""
            roles[c.index] += c.delta.role == "assistant"
            if c.finish_reason:
                reasons[c.index].append(c.finish_reason)
    assert dict(text) == {c.index: c.message.content for c in whole.choices}
    assert dict(roles) == {0: 1, 1: 1, 2: 1}
    assert dict(reasons) == {c.index: [c.finish_reason] for c in whole.choices}
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_answer_n_choices_with_their_own_logprobs(server: ServerProcess) -> None:
    async def ask() -> openai.types.Completion:
        async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
            return await client.completions.create(
                model=DEMO_MODEL_ID, prompt="My favourite fruit is", n=2, max_tokens=6, temperature=1.0, seed=5,
                logprobs=1, logit_bias=DEMO_NO_EOS,
            )  # fmt: skip

    r = asyncio.run(ask())
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert "".join(c.logprobs.tokens) == c.text and len(c.logprobs.token_logprobs) == 6
    assert r.usage.completion_tokens == 12


def test_forced_tool_calls_in_every_choice(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        n=2,
        temperature=0.8,
        seed=2,
    )
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.finish_reason == "tool_calls"
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("n", [4, 0, 129])
def test_n_out_of_range_is_a_400_naming_n(server: ServerProcess, n: int) -> None:
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT | {"n": n}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "n"
    if n == 4:
        assert "at most 3 choices" in r.json()["error"]["message"]
