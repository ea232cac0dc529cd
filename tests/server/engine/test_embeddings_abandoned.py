"""Threat: one key sends an embeddings request of many long inputs (2048 inputs fit the body limit) and hangs up at
once. The inputs stayed on the embeddings worker's queue and were all decoded, for nobody, while every other key's
embeddings waited behind them (measured on the server: 400 inputs of 500 tokens, abandoned after 1 s, kept another
key's 2-token request waiting past 300 s). Now a request that is abandoned takes its inputs still queued with it."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine.embeddings import Embedder
from server.engine.llama_model import LlamaModel


@pytest.mark.asyncio
async def test_an_abandoned_request_leaves_the_queue_with_its_inputs(model: LlamaModel) -> None:
    embedder = Embedder(model, n_batch=64, n_threads=2, pooling="mean")
    try:
        long_input = model.tokenize(" ".join(["word"] * 60), add_special=False)[:60]
        abandoned = asyncio.create_task(embedder.embed([long_input] * 300))
        await asyncio.sleep(0.3)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        started = time.monotonic()
        [vector] = await asyncio.wait_for(embedder.embed([model.tokenize("hello", add_special=False)]), 20)
        assert vector and time.monotonic() - started < 5
    finally:
        await embedder.close()
