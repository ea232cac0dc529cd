"""Sampling one sequence's next token: llama.cpp's sampler chain, a grammar checked beside it, and the shortcuts that
keep the chain out of the common cases (greedy argmax, a whole-distribution draw by inverse CDF).

docs and bench/ hold what each shortcut saves; the tests in tests/server/engine/test_sampler.py check each one against
the chain it stands in for.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from server.engine.base import SamplingParams

if TYPE_CHECKING:
    from server.engine.llama_model import LlamaModel

_NEG_INF = float("-inf")
_CDF_BLOCK = 256
# Tokens checked one by one after the grammar refuses the sampled one, before it filters the whole vocabulary.
_RECHECKS = 16
# The likeliest tokens the grammar filters first when the chain has a top-k.
_SHORTLIST = 256


class NoAllowedTokenError(Exception):
    """The grammar allows no token of the vocabulary next: nothing can be sampled, and accepting a token it refused
    aborts the process inside llama.cpp."""


def inverse_cdf(weights: np.ndarray, u: float) -> int:
    """The index where the running sum of `weights` first exceeds `u` times their total (0 <= u < 1): a draw from
    the distribution the weights describe. A cumulative sum over the whole vocabulary costs more than everything
    else in a draw, so it goes in two levels: the sums of blocks of 256, then the running sum within one block."""
    starts = np.arange(0, weights.shape[0], _CDF_BLOCK)
    cumulative = np.cumsum(np.add.reduceat(weights, starts, dtype=np.float64))
    target = u * cumulative[-1]
    block = min(int(np.searchsorted(cumulative, target, side="right")), len(cumulative) - 1)
    within = target - (cumulative[block - 1] if block else 0.0)
    first = int(starts[block])
    running = np.cumsum(weights[first : first + _CDF_BLOCK], dtype=np.float64)
    token = first + min(int(np.searchsorted(running, within, side="right")), len(running) - 1)
    if weights[token] == 0:  # rounding put the target past the total: the last token that can be drawn
        token = int(np.flatnonzero(weights)[-1])
    return token


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
_LOGIT_BIAS = np.dtype([("token", np.int32), ("bias", np.float32)])  # llama_logit_bias


def _bias_entries(ids: np.ndarray, biases: np.ndarray) -> ctypes.Array[llama_cpp.llama_logit_bias]:
    """llama.cpp's logit-bias entries (which it copies), laid out by numpy: built one ctypes object at a time, a bias on
    every token of a 49152-token vocabulary took 49 ms of the engine thread, which every generation waits for."""
    entries = np.empty(len(ids), dtype=_LOGIT_BIAS)
    entries["token"], entries["bias"] = ids, biases
    return (llama_cpp.llama_logit_bias * len(ids)).from_buffer(entries.data)


class Sampler:
    """A llama.cpp sampler chain for one sequence's sampling parameters, and its grammar if it has one.

    The grammar is kept out of the chain: applying it to the whole vocabulary every step costs more than the rest of
    the step. Like llama.cpp's own server, a token is sampled without it and checked against it alone; only when the
    grammar refuses that token is it sampled again: from the next likeliest tokens checked one by one (greedy and
    whole-distribution draws), from the likeliest few hundred filtered by the grammar (a chain with top-k), or from
    every candidate the grammar allows. The result is exactly what grammar-first sampling would allow.

    Greedy sampling skips the chain too: the chain copies the whole vocabulary into a candidate array per token, an
    argmax over the logits does not, and its answer is the chain's (the first highest logit after the bias is added
    in float32). So does sampling at a temperature from the whole distribution (OpenAI's defaults: no top-k, top-p or
    min-p): `_draw` takes the softmax of the biased logits over the temperature and draws by inverse CDF with the
    sampler's own seeded generator, so a seed still gives the same answer every time, though not the answer
    llama.cpp's generator would give.
    """

    def __init__(
        self,
        model: LlamaModel,
        params: SamplingParams,
        grammar: llama_cpp.llama_sampler_p | None = None,
        free_grammar: Callable[[llama_cpp.llama_sampler_p], None] = llama_cpp.llama_sampler_free,
    ) -> None:
        """`grammar`, compiled beforehand (see `grammars.py`), is the sampler's from now on: `close` frees it with
        `free_grammar`."""
        self._n_vocab = model.info.n_vocab
        self.grammar = grammar
        self._free_grammar = free_grammar
        self._greedy = params.greedy
        # Past the vocabulary a top-k keeps every token; clamped, as ctypes would wrap it into llama.cpp's int32.
        self._top_k = min(params.top_k, self._n_vocab)
        self._temperature = np.float32(params.temperature)
        whole = not params.greedy and params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0
        # Any integer is a seed (OpenAI's clients send negative ones too); numpy's generator takes non-negative ones.
        seed = None if params.seed is None else params.seed % 2**64
        self._rng = np.random.default_rng(seed) if whole else None
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        self.ptr = llama_cpp.llama_sampler_chain_init(chain_params)

        def add(sampler: llama_cpp.llama_sampler_p) -> None:
            llama_cpp.llama_sampler_chain_add(self.ptr, sampler)

        if grammar is not None:
            # Checked once per token: built once, refilled per check.
            self._one = (llama_cpp.llama_token_data * 1)()
            self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
            self._one_ref = ctypes.byref(self._one_array)
        if params.logit_bias:
            biases = _bias_entries(self._bias_ids, self._bias)
            add(llama_cpp.llama_sampler_init_logit_bias(model.info.n_vocab, len(params.logit_bias), biases))
        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(self._top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Sample from the logits of batch position `index` and accept the token into the chain's state;
        NoAllowedTokenError, with nothing accepted, when the grammar allows no token."""
        if self._greedy:
            token = self._argmax(ctx, index)
        elif self._rng is not None:
            token = self._draw(ctx, index, self._rng)
        else:
            token = llama_cpp.llama_sampler_sample(self.ptr, ctx, index)
        if self.grammar is None:
            return token
        if not self._grammar_allows(token):
            token = self._next_allowed(ctx, index, token)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def allows(self, token: int) -> bool:
        """Whether the grammar, if there is one, lets `token` come next."""
        return self.grammar is None or self._grammar_allows(token)

    def accept(self, token: int) -> None:
        """Take a token written for the model rather than sampled (the checked `allows` it) into the grammar's
        state; the chain keeps none that a written token changes (no repetition penalties)."""
        if self.grammar is not None:
            llama_cpp.llama_sampler_accept(self.grammar, token)

    def _next_allowed(self, ctx: llama_cpp.llama_context_p, index: int, refused: int) -> int:
        """What grammar-first sampling gives, now that the grammar refused `refused`. The grammar usually allows one
        of the next few likeliest tokens, and checking those one by one costs far less than filtering the whole
        vocabulary (5.6 ms for 49k tokens): greedy takes the best allowed one, a draw draws again without the refused
        ones (the same distribution as drawing among the allowed ones), each up to _RECHECKS times; a chain with
        top-k runs over the likeliest _SHORTLIST tokens the grammar allows. Failing those, the full filter."""
        token = None
        if self._greedy:
            token = self._best_allowed(ctx, index)
        elif self._rng is not None:
            token = self._redraw_allowed(ctx, index, refused, self._rng)
        elif 0 < self._top_k <= _SHORTLIST:
            token = self._chain_over_likeliest(ctx, index)
        return token if token is not None else self._sample_within_grammar(ctx, index)

    def _chain_over_likeliest(self, ctx: llama_cpp.llama_context_p, index: int) -> int | None:
        """With top-k in the chain only the k likeliest tokens the grammar allows can be drawn: when the grammar
        allows at least k of the _SHORTLIST likeliest, the chain over those alone draws from the same k."""
        shortlist = np.argpartition(-self.biased(ctx, index), _SHORTLIST)[:_SHORTLIST]
        data, candidates = self._filtered(ctx, index, shortlist.astype(np.int32))
        if np.count_nonzero(data["logit"] != _NEG_INF) < self._top_k:
            return None
        return self._chain_pick(data, candidates)

    def _best_allowed(self, ctx: llama_cpp.llama_context_p, index: int) -> int | None:
        logits = self.biased(ctx, index)
        best = np.argpartition(-logits, _RECHECKS)[:_RECHECKS]
        for token in best[np.lexsort((best, -logits[best]))]:  # highest first, the lowest id on a tie, as the chain
            if logits[token] == _NEG_INF:
                return None
            if self._grammar_allows(int(token)):
                return int(token)
        return None

    def _redraw_allowed(
        self, ctx: llama_cpp.llama_context_p, index: int, refused: int, rng: np.random.Generator
    ) -> int | None:
        weights = self._weights(ctx, index)
        if weights is None:
            return None
        for _ in range(_RECHECKS):
            weights[refused] = 0.0
            if not weights.any():
                return None
            refused = inverse_cdf(weights, rng.random())
            if self._grammar_allows(refused):
                return refused
        return None

    def _argmax(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        if not self._bias.size:
            return int(logits.argmax())
        # Biased in place and put back: the logits stay as decoded for log-probabilities and a grammar's resample.
        original = logits[self._bias_ids]
        logits[self._bias_ids] += self._bias
        try:
            return int(logits.argmax())
        finally:
            logits[self._bias_ids] = original

    def _draw(self, ctx: llama_cpp.llama_context_p, index: int, rng: np.random.Generator) -> int:
        weights = self._weights(ctx, index)
        if weights is None:  # every token biased away: nothing to weigh
            return int(self.biased(ctx, index).argmax())
        return inverse_cdf(weights, rng.random())

    def biased(self, ctx: llama_cpp.llama_context_p, index: int) -> np.ndarray:
        """A copy of the logits with the logit bias added (in float32, as llama.cpp's bias sampler adds it)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,)).copy()
        logits[self._bias_ids] += self._bias
        return logits

    def _weights(self, ctx: llama_cpp.llama_context_p, index: int) -> np.ndarray | None:
        """The softmax of the biased logits over the temperature, unnormalised; None if no token has any weight."""
        scaled = self.biased(ctx, index)
        scaled /= self._temperature
        peak = scaled.max()
        if not np.isfinite(peak):
            return None
        scaled -= peak
        weights: np.ndarray = np.exp(scaled, out=scaled)
        return weights

    def _grammar_allows(self, token: int) -> bool:
        one = self._one
        one[0].id, one[0].logit = token, 1.0  # type: ignore[assignment]  # ctypes stores an int in a c_int32 field
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.grammar, self._one_ref)
        return one[0].logit != _NEG_INF

    def _sample_within_grammar(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        data, candidates = self._filtered(ctx, index, np.arange(self._n_vocab, dtype=np.int32))
        # The chain would still pick one of the refused tokens, and the grammar would abort on accepting it.
        if not np.any(data["logit"] != _NEG_INF):
            raise NoAllowedTokenError
        return self._chain_pick(data, candidates)

    def _filtered(
        self, ctx: llama_cpp.llama_context_p, index: int, ids: np.ndarray
    ) -> tuple[np.ndarray, llama_cpp.llama_token_data_array]:
        """The tokens `ids` as candidates, those the grammar refuses at -inf (the array and its llama.cpp view)."""
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids
        data["logit"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))[ids]
        pointer = data.ctypes.data_as(llama_cpp.llama_token_data_p)
        candidates = llama_cpp.llama_token_data_array(data=pointer, size=len(ids), selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(candidates))
        return data, candidates

    def _chain_pick(self, data: np.ndarray, candidates: llama_cpp.llama_token_data_array) -> int:
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(candidates))  # the bias, top-k ..., then the pick
        if data["logit"][candidates.selected] == _NEG_INF:  # a refused token: never one to accept
            raise NoAllowedTokenError
        token = int(data["id"][candidates.selected])
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def close(self) -> None:
        if self.grammar:
            self._free_grammar(self.grammar)
            self.grammar = None
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
