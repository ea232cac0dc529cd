"""Sampling without llama.cpp's sampler chain. Greedy takes an argmax over the logits: it must pick exactly the token
the chain (logit bias, then greedy) picks. Temperature over the whole distribution draws by inverse CDF: it must draw
from the softmax of the biased logits over the temperature, the same way for the same seed. Both leave the logits as
they were decoded."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import llama_cpp
import numpy as np
import pytest

from server.engine.base import SamplingParams
from server.engine.grammars import Grammars
from server.engine.llama_model import LlamaModel
from server.engine.sampler import Sampler, inverse_cdf

PROMPT = "The quick brown fox jumps over the lazy dog, and then it"


def new_sampler(model: LlamaModel, params: SamplingParams, grammar: str | None = None) -> Sampler:
    if grammar is None:
        return Sampler(model, params)
    grammars = Grammars(model.vocab)
    return Sampler(model, params, grammars.compile(grammar, param="test").take(), grammars.free)


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
            sampler = new_sampler(model, SamplingParams(max_tokens=1, temperature=0.0, logit_bias=bias))
            try:
                assert sampler.sample(ctx, index) == _chain_pick(model, ctx, index, bias), (index, bias)
            finally:
                sampler.close()
            assert np.array_equal(_logits(model, ctx, index), logits), "the logits are left as decoded"
            checked += 1
    assert checked == 6 * n


def test_inverse_cdf_by_blocks_draws_what_one_running_sum_would() -> None:
    rng = np.random.default_rng(0)
    weights = rng.exponential(size=1000).astype(np.float32)  # not a multiple of the block
    weights[rng.choice(1000, 300, replace=False)] = 0.0  # tokens that can never be drawn
    running = np.cumsum(weights, dtype=np.float64)
    for u in [0.0, 1e-9, *rng.random(2000), 0.999999999, np.nextafter(1.0, 0.0)]:
        expected = min(int(np.searchsorted(running, u * running[-1], side="right")), 999)
        if weights[expected] == 0:
            expected = int(np.flatnonzero(weights)[-1])
        assert inverse_cdf(weights, u) == expected, u
        assert weights[inverse_cdf(weights, u)] > 0


def test_temperature_sampling_draws_from_the_softmax_of_the_biased_logits(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int]
) -> None:
    ctx, n = decoded
    logits = _logits(model, ctx, n - 1)
    best = int(logits.argmax())
    bias = {best: -100.0}
    biased = logits.astype(np.float64)
    biased[best] -= 100.0
    expected = np.exp((biased - biased.max()) / 0.8)
    expected /= expected.sum()
    draws = 4000
    sampler = new_sampler(model, SamplingParams(max_tokens=1, temperature=0.8, seed=42, logit_bias=bias))
    try:
        tokens = [sampler.sample(ctx, n - 1) for _ in range(draws)]
    finally:
        sampler.close()
    assert best not in tokens
    counts = np.bincount(tokens, minlength=model.info.n_vocab)
    for token in np.argsort(-expected)[:5]:
        p = expected[token]
        assert abs(counts[token] / draws - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-3, (int(token), p)
    assert np.array_equal(_logits(model, ctx, n - 1), logits), "the logits are left as decoded"

    again = new_sampler(model, SamplingParams(max_tokens=1, temperature=0.8, seed=42, logit_bias=bias))
    try:
        assert [again.sample(ctx, n - 1) for _ in range(50)] == tokens[:50], "a seed gives the same draws"
    finally:
        again.close()


def test_temperature_sampling_takes_any_integer_as_a_seed(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int]
) -> None:
    ctx, n = decoded
    draws = []
    for _ in range(2):
        sampler = new_sampler(model, SamplingParams(max_tokens=1, temperature=1.0, seed=-7))
        try:
            draws.append([sampler.sample(ctx, n - 1) for _ in range(20)])
        finally:
            sampler.close()
    assert draws[0] == draws[1]


# Words after a space; and two tokens the model never puts near the top.
WORDS = 'root ::= " " [a-z]+'
RARE = 'root ::= "QQ" [0-9]'


def _allowed(model: LlamaModel, ctx: llama_cpp.llama_context_p, index: int, grammar: str) -> np.ndarray:
    """Which tokens a fresh `grammar` allows first, by llama.cpp's grammar sampler over the whole vocabulary."""
    sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    data = np.zeros(model.info.n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    data["id"] = np.arange(model.info.n_vocab)
    data["logit"] = _logits(model, ctx, index)
    candidates = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=model.info.n_vocab, selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
    llama_cpp.llama_sampler_free(sampler)
    return data["logit"] != -np.inf


def _pushed_to_the_top(model: LlamaModel, ctx: llama_cpp.llama_context_p, index: int, grammar: str) -> dict:
    """A bias that makes the likeliest token one `grammar` refuses, so sampling takes the refusal path."""
    logits, allowed = _logits(model, ctx, index), _allowed(model, ctx, index, grammar)
    refused = int(np.flatnonzero(~allowed)[np.argmax(logits[~allowed])])
    return {refused: float(logits.max() - logits[refused]) + 3.0}


@pytest.mark.parametrize("grammar", [WORDS, RARE])
def test_greedy_under_a_grammar_picks_the_best_token_it_allows(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int], grammar: str
) -> None:
    ctx, n = decoded
    for index in range(n):
        for bias in ({}, _pushed_to_the_top(model, ctx, index, grammar)):
            biased = _logits(model, ctx, index)
            for token, value in bias.items():
                biased[token] += np.float32(value)
            allowed = _allowed(model, ctx, index, grammar)
            expected = int(np.flatnonzero(allowed)[np.argmax(biased[allowed])])
            sampler = new_sampler(model, SamplingParams(max_tokens=1, temperature=0.0, logit_bias=bias), grammar)
            try:
                assert sampler.sample(ctx, index) == expected, (index, bias)
            finally:
                sampler.close()


# RARE's draws mostly take the full filter (5.6 ms each): fewer of them. top_k 0 draws from the whole distribution
# (numpy's generator), top_k 40 through llama.cpp's chain.
@pytest.mark.parametrize(
    ("grammar", "top_k", "draws"), [(WORDS, 0, 3000), (RARE, 0, 500), (WORDS, 40, 2000), (RARE, 40, 500)]
)
def test_a_draw_under_a_grammar_follows_the_distribution_over_what_it_allows(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int], grammar: str, top_k: int, draws: int
) -> None:
    ctx, n = decoded
    index = n - 1
    bias = _pushed_to_the_top(model, ctx, index, grammar)
    biased = _logits(model, ctx, index).astype(np.float64)
    for token, value in bias.items():
        biased[token] += value
    allowed = _allowed(model, ctx, index, grammar)
    if top_k:
        allowed &= biased >= np.sort(np.where(allowed, biased, -np.inf))[-top_k]
    expected = np.where(allowed, np.exp((biased - biased.max()) / 0.9), 0.0)
    expected /= expected.sum()
    params = SamplingParams(max_tokens=1, temperature=0.9, top_k=top_k, seed=3, logit_bias=bias)
    sampler = new_sampler(model, params, grammar)
    tokens = []
    try:
        for _ in range(draws):
            tokens.append(sampler.sample(ctx, index))
            llama_cpp.llama_sampler_reset(sampler.grammar)
    finally:
        sampler.close()
    assert all(allowed[tokens])
    counts = np.bincount(tokens, minlength=model.info.n_vocab)
    for token in np.argsort(-expected)[:5]:
        p = expected[token]
        assert abs(counts[token] / draws - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-3, (int(token), p)


def test_a_top_k_past_int32_keeps_every_token_rather_than_wrapping(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int]
) -> None:
    ctx, _ = decoded
    drawn = set()
    for seed in range(200):  # 2**32 + 5 in llama.cpp's int32 would be a top-k of 5
        sampler = new_sampler(model, SamplingParams(max_tokens=1, temperature=3.0, top_k=2**32 + 5, seed=seed))
        try:
            drawn.add(sampler.sample(ctx, 0))
        finally:
            sampler.close()
    assert len(drawn) > 5


def test_log_probabilities_are_those_of_the_biased_logits(
    model: LlamaModel, decoded: tuple[llama_cpp.llama_context_p, int]
) -> None:
    ctx, n = decoded
    bias = {0: -100.0, 2: -100.0, 7: 5.0}
    params = SamplingParams(max_tokens=1, temperature=0.0, logit_bias=bias, logprobs=3)
    sampler = new_sampler(model, params)
    try:
        for index in range(n):
            logits = _logits(model, ctx, index)
            for token, value in bias.items():
                logits[token] += np.float32(value)
            expected = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - logits.max()).sum())
            expected -= logits.max()
            got = model.logprob(sampler.biased(ctx, index), 7, params)
            assert got.logprob == pytest.approx(expected[7], abs=1e-5)
            assert [t for t, _, _ in got.top] == [int(t) for t in np.argsort(-logits, kind="stable")[:3]]
            assert [p for _, _, p in got.top] == pytest.approx([expected[t] for t, _, _ in got.top], abs=1e-5)
    finally:
        sampler.close()
