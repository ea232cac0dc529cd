"""The synthetic model generator: a Llama-shaped GGUF with a real tokenizer loads and generates through our engine."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from bench.synthetic_gguf import SHAPES, tensor_shapes, vocab_only, write
from server.engine.llama_model import LlamaModel
from server.model_source.facts import read_facts
from tests.support.engine import request, run, running_engine


@pytest.fixture(scope="module")
def vocab(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.gguf"
    vocab_only(demo_gguf, path)
    return path


@pytest.fixture(scope="module")
def tiny(vocab: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "tiny.gguf"
    write("tiny", vocab, path, seed=3)
    return path


def test_the_vocab_only_file_holds_no_tensors_and_the_whole_tokenizer(demo_gguf: Path, vocab: Path, tiny: Path) -> None:
    assert vocab.stat().st_size < demo_gguf.stat().st_size / 20
    models = [LlamaModel(path, n_gpu_layers=0) for path in (demo_gguf, tiny)]
    try:
        demo, synthetic = (m.tokenize("Hello, synthetic world!", add_special=True) for m in models)
        assert synthetic == demo
        assert models[1].render_chat([{"role": "user", "content": "hi"}]) == models[0].render_chat(
            [{"role": "user", "content": "hi"}]
        )
    finally:
        for m in models:
            m.close()


def test_the_model_has_the_shape_asked_for(tiny: Path) -> None:
    facts = read_facts(tiny)
    shape = SHAPES["tiny"]
    assert facts.architecture == "llama"
    assert facts.layers == shape.n_layer
    assert facts.kv_bytes_per_token == 2 * 2 * shape.n_layer * shape.n_head_kv * shape.head_dim
    n_vocab = 49152  # the demo model's vocabulary
    assert facts.parameters == sum(math.prod(dims) for _, dims in tensor_shapes(shape, n_vocab))


async def test_it_generates_through_the_engine_alone_and_batched_alike(tiny: Path) -> None:
    model = LlamaModel(tiny, n_gpu_layers=0)
    try:
        async with running_engine(model, n_slots=2) as engine:
            prompts = ["Once upon a time", "The capital of France is"]
            alone = [await run(engine, request(engine, p, 8)) for p in prompts]
            batched = await asyncio.gather(*(run(engine, request(engine, p, 8)) for p in prompts))
    finally:
        model.close()
    assert all(finished.completion_tokens == 8 for _, finished in alone)
    assert [d for d, _ in alone] == [d for d, _ in batched]


def test_the_same_seed_writes_the_same_file_and_another_seed_another(vocab: Path, tiny: Path, tmp_path: Path) -> None:
    write("tiny", vocab, tmp_path / "a.gguf", seed=3)
    write("tiny", vocab, tmp_path / "b.gguf", seed=4)
    assert (tmp_path / "a.gguf").read_bytes() == tiny.read_bytes()
    assert (tmp_path / "b.gguf").read_bytes() != tiny.read_bytes()
