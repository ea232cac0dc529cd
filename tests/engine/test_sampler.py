"""Greedy sampling takes an argmax over the logits instead of llama.cpp's sampler chain: it must pick exactly the token
the chain (logit bias, then greedy) picks, and leave the logits as they were decoded."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import numpy as np
import pytest

from server.engine.base import SamplingParams
from server.engine.llama_model import LlamaModel

PROMPT = "The quick brown fox jumps over the lazy dog, and then it"


@pytest.fixture(scope="module")
def decoded(model: LlamaModel) -> Iterator[tuple[llama_cpp.llama_context_p, int]]:
    """A context holding the logits of every position of PROMPT, and how many positions there are."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 64
    params.n_threads = params.n_threads_batch = 2
    ctx = llama_cpp.llama_init_from_model(model.ptr, params)
    tokens = model.tokenize(PROMPT, add_special=True)
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    for i, token in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
        batch.seq_id[i][0] = 0
    batch.n_tokens = len(tokens)
    assert llama_cpp.llama_decode(ctx, batch) == 0
    yield ctx, len(tokens)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)


def _chain_pick(model: LlamaModel, ctx: llama_cpp.llama_context_p, index: int, bias: dict[int, float]) -> int:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if bias:
        entries = (llama_cpp.llama_logit_bias * len(bias))(*(llama_cpp.llama_logit_bias(t, b) for t, b in bias.items()))
        llama_cpp.llama_sampler_chain_add(
            chain, llama_cpp.llama_sampler_init_logit_bias(model.info.n_vocab, len(bias), entries)
        )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    try:
        return llama_cpp.llama_sampler_sample(chain, ctx, index)
    finally:
        llama_cpp.llama_sampler_free(chain)


def _logits(model: LlamaModel, ctx: llama_cpp.llama_context_p, index: int) -> np.ndarray:
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(model.info.n_vocab,)).copy()


def test_greedy_picks_what_llama_cpp_s_chain_picks_under_every_kind_of_bias(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int]
) -> None:
    ctx, n = decoded
    checked = 0
    for index in range(n):
        logits = _logits(model, ctx, index)
        best, runner_up = (int(t) for t in np.argsort(-logits, kind="stable")[:2])
        # A bias that brings a lower-ranked token level with the best: ties go to the lower token id in both.
        tie = {max(best, runner_up): float(logits[min(best, runner_up)] - logits[max(best, runner_up)])}
        for bias in ({}, {0: -100.0, 2: -100.0}, {best: -100.0}, {best: -1e30, runner_up: -1e30}, {7: 50.0}, tie):
            sampler = model.new_sampler(SamplingParams(max_tokens=1, temperature=0.0, logit_bias=bias))
            try:
                assert sampler.sample(ctx, index) == _chain_pick(model, ctx, index, bias), (index, bias)
            finally:
                sampler.close()
            assert np.array_equal(_logits(model, ctx, index), logits), "the logits are left as decoded"
            checked += 1
    assert checked == 6 * n
