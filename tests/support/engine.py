"""Helpers for tests that run the batching engine on a real model: a small engine per test, greedy requests that run
to max_tokens, one generation's text and Finished event, and the check that a prompt gets the same tokens alone and
batched. Nothing here imports pytest: the GPU kit runs that check in a plain process (bench/gpu/engine_bench.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from server.engine.base import Finished, GenerationRequest, Grammar, SamplingParams, TextDelta
from server.engine.batching import BatchingEngine
from server.engine.llama_model import LlamaModel

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "List three colours:",
    "The best way to learn a language",
    "In 1969, astronauts",
    "A recipe for pancakes:",
    "Water boils at",
]

# Two ways batching could change a prompt's tokens: in its greedy picks, and in a seeded sampler's draws.
SAMPLINGS: dict[str, dict[str, object]] = {
    "greedy": {"temperature": 0.0},
    "seeded": {"temperature": 0.9, "seed": 1234, "top_k": 40},
}

# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>): pushed down so every generation runs to max_tokens.
NO_EOS = {0: -100.0, 2: -100.0}


@contextlib.asynccontextmanager
async def running_engine(model: LlamaModel, **options: object) -> AsyncIterator[BatchingEngine]:
    settings = {"model_id": "demo", "n_ctx": 1024, "n_batch": 256, "n_threads": 2, "n_slots": 4, "max_queue": 8}
    engine = BatchingEngine(model, **(settings | options))
    try:
        yield engine
    finally:
        await engine.close()


def request(
    engine: BatchingEngine,
    prompt: str,
    max_tokens: int,
    *,
    stop: Sequence[str] = (),
    n: int = 1,
    grammar: Grammar | None = None,
    **sampling: object,
) -> GenerationRequest:
    params = {"temperature": 0.0, "logit_bias": NO_EOS} | sampling
    return GenerationRequest(
        engine.tokenize(prompt, add_special=True),
        SamplingParams(max_tokens=max_tokens, stop=stop, **params),
        n=n,
        grammar=grammar,
    )


async def run(engine: BatchingEngine, req: GenerationRequest) -> tuple[list[str], Finished]:
    """The text deltas of one generation, and its Finished event."""
    deltas: list[str] = []
    async for event in engine.generate(req):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            return deltas, event
    raise AssertionError("no Finished event")


async def differ_batched(model: LlamaModel, **sampling: object) -> list[str]:
    """The PROMPTS whose 16 tokens differ when all eight run side by side from when each runs alone (each slot has
    its own KV stream, so none should)."""
    async with running_engine(model, n_slots=8) as engine:
        alone = [await run(engine, request(engine, p, 16, **sampling)) for p in PROMPTS]
        batched = await asyncio.gather(*(run(engine, request(engine, p, 16, **sampling)) for p in PROMPTS))
    return [p for p, (a, _), (b, _) in zip(PROMPTS, alone, batched, strict=True) if "".join(a) != "".join(b)]
