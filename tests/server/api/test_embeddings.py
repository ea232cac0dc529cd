"""POST /v1/embeddings through the official openai client, on the demo model pooled by mean."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Iterator

import llama_cpp
import openai
import pytest

from server.api.app import create_app
from server.config.settings import load_settings
from tests.conftest import DEMO_MODEL_ID
from tests.support.server import ServerProcess, ready_server


def _cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))  # both are unit vectors


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ready_server(tmp_path_factory.mktemp("embeddings"), {"GGUFSTACK_EMBEDDING_POOLING": "mean"}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_embeddings_are_unit_vectors_one_per_input(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=DEMO_MODEL_ID, input=["a cat sat", "stock markets fell", "a cat sat"])
    vectors = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(math.isclose(math.fsum(v * v for v in vec), 1.0, rel_tol=1e-4) for vec in vectors)
    # Batch neighbours change float summation order a little, never the meaning.
    assert _cosine(vectors[0], vectors[2]) > 0.9999 > _cosine(vectors[0], vectors[1])
    assert r.model == DEMO_MODEL_ID


def test_token_ids_and_text_give_the_same_vector_and_usage_counts_tokens(client: openai.OpenAI, demo_gguf) -> None:
    vocab = llama_cpp.Llama(str(demo_gguf), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(b"hello world", add_bos=True, special=True)
    by_text = client.embeddings.create(model=DEMO_MODEL_ID, input="hello world")
    by_ids = client.embeddings.create(model=DEMO_MODEL_ID, input=tokens)
    assert _cosine(by_ids.data[0].embedding, by_text.data[0].embedding) > 0.9999
    assert by_text.usage.prompt_tokens == by_text.usage.total_tokens == len(tokens)


def test_base64_encoding_carries_the_same_floats(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=DEMO_MODEL_ID, input="hi", encoding_format="float").data[0].embedding
    raw = client.embeddings.with_raw_response.create(model=DEMO_MODEL_ID, input="hi", encoding_format="base64")
    packed = base64.b64decode(raw.http_response.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert len(decoded) == len(floats) and _cosine(list(decoded), floats) > 0.9999


async def test_256_inputs_from_concurrent_requests_are_batched(server: ServerProcess) -> None:
    aclient = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    # Longer than a batch's share of cells if every sequence had a KV stream of its own (512 / 64 = 8 tokens).
    texts = [f"sentence number {i} tells of rain over a quiet harbour town at night" for i in range(256)]
    results = await asyncio.gather(
        *(aclient.embeddings.create(model=DEMO_MODEL_ID, input=texts[i::4]) for i in range(4))
    )
    assert sum(len(r.data) for r in results) == 256
    for i in (0, 21, 42, 63):
        alone = (await aclient.embeddings.create(model=DEMO_MODEL_ID, input=texts[4 * i])).data[0].embedding
        assert _cosine(results[0].data[i].embedding, alone) > 0.999


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": "x" * 20000}, "input"),
    ],
)
def test_bad_inputs_get_400(client: openai.OpenAI, payload: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=DEMO_MODEL_ID, **payload)
    assert info.value.body["param"] == param


def test_an_input_far_past_the_context_is_refused_before_any_is_tokenized(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=DEMO_MODEL_ID, input=["ok", " " * 1_000_000])
    assert info.value.body["param"] == "input" and info.value.body["code"] == "context_length_exceeded"
    assert "input 1 has at least" in info.value.body["message"]


def test_the_endpoint_can_be_turned_off() -> None:
    assert "/v1/embeddings" not in create_app(load_settings(embeddings=False)).openapi()["paths"]
    assert "/v1/embeddings" in create_app(load_settings()).openapi()["paths"]
