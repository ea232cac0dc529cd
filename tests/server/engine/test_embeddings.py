"""The embeddings engine's queue against one request of many long inputs (2048 inputs fit the body limit).

Threat: such a request holds every other back. Served first come, first served, a request of one short input waited
for all of them (on the server: over 300 s behind 400 inputs of 500 tokens). Now a batch takes the requests' inputs in
turn.

Threat: the client of such a request hangs up at once. Its inputs stayed queued and were all decoded, for nobody.
Now a request that is abandoned takes its inputs still queued with it."""

from __future__ import annotations

import asyncio

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
        assert embedder.waiting == 0
    finally:
        await embedder.close()


@pytest.mark.asyncio
async def test_a_small_request_is_answered_between_a_large_ones_batches(model: LlamaModel) -> None:
    embedder = Embedder(model, n_batch=64, n_threads=2, pooling="mean")
    try:
        long_input = model.tokenize(" ".join(["word"] * 60), add_special=False)[:60]  # one a batch
        large = asyncio.create_task(embedder.embed([long_input] * 40))
        await asyncio.sleep(0.1)
        small = asyncio.create_task(embedder.embed([model.tokenize("hello", add_special=False)]))
        done, _ = await asyncio.wait({large, small}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        assert done == {small} and small.result()[0]
        large.cancel()
    finally:
        await embedder.close()
