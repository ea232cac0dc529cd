"""The OpenAI API of a real server process on the embedded demo model, through the official `openai` client."""

from __future__ import annotations

import asyncio

import httpx
import llama_cpp
import openai
import pytest

from tests.conftest import DEMO_MODEL_ID, DEMO_NO_EOS
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def client(demo_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{demo_server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def aclient(demo_server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{demo_server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def vocab(demo_gguf) -> llama_cpp.Llama:
    """An independent tokenizer (llama-cpp-python's own), to check the server's token counts against."""
    return llama_cpp.Llama(str(demo_gguf), vocab_only=True, verbose=False)


def test_models_lists_the_demo_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [DEMO_MODEL_ID]
    assert client.models.retrieve(DEMO_MODEL_ID).id == DEMO_MODEL_ID


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "Say hello."}], max_tokens=20, temperature=0
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 20
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == DEMO_MODEL_ID


def test_text_completion_and_its_usage_counts(client: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    prompt = "The three primary colors are"
    r = client.completions.create(
        model=DEMO_MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, logit_bias=DEMO_NO_EOS
    )
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))


def test_completions_default_to_16_tokens_like_openai(client: openai.OpenAI) -> None:
    r = client.completions.create(model=DEMO_MODEL_ID, prompt="Once upon a time", logit_bias=DEMO_NO_EOS)
    assert r.usage.completion_tokens == 16


def test_prompt_as_token_ids(client: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    tokens = vocab.tokenize(b"The capital of France is", add_bos=True, special=True)
    by_ids = client.completions.create(model=DEMO_MODEL_ID, prompt=tokens, max_tokens=5, temperature=0)
    by_text = client.completions.create(
        model=DEMO_MODEL_ID, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(tokens)


async def test_async_client_chat_and_completion(aclient: openai.AsyncOpenAI) -> None:
    chat = await aclient.chat.completions.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=10, temperature=0
    )
    text = await aclient.completions.create(model=DEMO_MODEL_ID, prompt="1, 2, 3,", max_tokens=5, temperature=0)
    assert chat.choices[0].message.content
    assert text.choices[0].text


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (0.9, 1234)])
def test_streaming_chat_equals_non_streaming(client: openai.OpenAI, temperature: float, seed: int | None) -> None:
    args = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Write a sentence about the sea."}],
        "max_tokens": 40,
        "temperature": temperature,
        "seed": seed,
    }
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_streaming_completion_equals_non_streaming(client: openai.OpenAI) -> None:
    args = {"model": DEMO_MODEL_ID, "prompt": "List three animals:", "max_tokens": 30, "temperature": 0}
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stream_ends_with_done_marker(demo_server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "prompt": "Hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{demo_server.base_url}/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    args = {"model": DEMO_MODEL_ID, "prompt": "My favourite word is", "max_tokens": 20, "temperature": 1.2}
    first = client.completions.create(**args, seed=42).choices[0].text
    again = client.completions.create(**args, seed=42).choices[0].text
    others = {client.completions.create(**args, seed=s).choices[0].text for s in (1, 2, 3)}
    assert first == again
    assert len(others | {first}) > 1


def test_stop_sequence_ends_generation_without_the_stop_text(client: openai.OpenAI) -> None:
    base = client.completions.create(
        model=DEMO_MODEL_ID, prompt="Count: 1, 2, 3,", max_tokens=20, temperature=0, logit_bias=DEMO_NO_EOS
    ).choices[0]
    assert " 5" in base.text
    stopped = client.completions.create(
        model=DEMO_MODEL_ID, prompt="Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=[" 5", "never"]
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == base.text[: base.text.index(" 5")]


def test_logit_bias_forces_a_token(client: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    (token,) = vocab.tokenize(b" banana", add_bos=False)
    r = client.completions.create(
        model=DEMO_MODEL_ID, prompt="Hello", max_tokens=4, temperature=0, logit_bias={str(token): 100}
    )
    assert r.choices[0].text == " banana" * 4


def test_top_p_and_extensions_are_accepted(demo_server: ServerProcess) -> None:
    body = {"model": DEMO_MODEL_ID, "prompt": "Hi", "max_tokens": 4, "top_p": 0.5, "top_k": 20, "min_p": 0.05}
    r = httpx.post(f"{demo_server.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


async def test_eight_concurrent_streams_all_complete_in_full(aclient: openai.AsyncOpenAI) -> None:
    prompts = [f"Story number {i}: once upon a time" for i in range(8)]

    async def one(prompt: str) -> tuple[str, str | None, int]:
        stream = await aclient.completions.create(
            model=DEMO_MODEL_ID,
            prompt=prompt,
            max_tokens=24,
            temperature=0,
            logit_bias=DEMO_NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, finish, used = "", None, 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                used = chunk.usage.completion_tokens
        return text, finish, used

    results = await asyncio.gather(*(one(p) for p in prompts))
    alone = [
        (
            await aclient.completions.create(
                model=DEMO_MODEL_ID, prompt=p, max_tokens=24, temperature=0, logit_bias=DEMO_NO_EOS
            )
        )
        .choices[0]
        .text
        for p in prompts[:2]
    ]
    assert all(finish == "length" and used == 24 for _, finish, used in results)
    assert [text for text, _, _ in results[:2]] == alone


def test_liveness(demo_server: ServerProcess) -> None:
    r = httpx.get(f"{demo_server.base_url}/health/live")
    assert r.status_code == 200 and r.json() == {"status": "alive"}
