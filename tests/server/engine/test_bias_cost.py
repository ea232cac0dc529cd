"""A logit bias on every token of the vocabulary (49152 entries on the demo model: a 700 KB body, within the limits)
must cost the engine thread about what a small one does. The thread is shared by every generation on the model, so
what one request costs it there, every other stream waits for: built entry by entry, llama.cpp's bias took 49 ms per
choice when the request took its slots, and the log-probabilities added the bias token by token, 9 ms for each token
of each choice. A request for 4 choices with log-probabilities stalled all streams for 0.2 s, then 37 ms a step."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from server.engine.llama_model import LlamaModel
from tests.support.engine import NO_EOS, request, run, running_engine


@pytest.mark.asyncio
async def test_a_bias_on_every_token_costs_the_engine_about_what_a_small_one_does(model: LlamaModel) -> None:
    whole_vocabulary = {t: 0.01 for t in range(model.info.n_vocab)} | NO_EOS
    async with running_engine(model, reuse_prefix=False) as engine:
        small = request(engine, "Once upon a time", 12, logprobs=20, temperature=0.8, seed=3)
        large = replace(small, sampling=replace(small.sampling, logit_bias=whole_vocabulary))
        await run(engine, replace(small, n=4))  # warm

        async def seconds(req) -> float:
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                await run(engine, replace(req, n=4))
                best = min(best, time.perf_counter() - started)
            return best

        small_s, large_s = await seconds(small), await seconds(large)
    assert large_s < 1.5 * small_s + 0.05, (small_s, large_s)
