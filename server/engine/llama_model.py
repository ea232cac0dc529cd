"""A GGUF model loaded through llama-cpp-python's low-level API: vocabulary, chat template and samplers.

Contexts (the KV cache and the decode loop) belong to the engines; this module only owns the weights.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from server.engine.base import EngineError, SamplingParams, TokenLogprob
from server.engine.chat_template import TemplateMessage, TemplateTool, ToolSyntax, detect_tool_syntax

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


_native_log = logging.getLogger("llama_cpp.native")
# ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


@llama_cpp.llama_log_callback
def _forward_native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode(errors="replace").rstrip()
    if message:
        _native_log.log(_LEVELS.get(level, logging.DEBUG), "%s", message)


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # llama.cpp prints hundreds of lines per model load straight to stderr; route them through logging.
            llama_cpp.llama_log_set(_forward_native_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ModelInfo:
    description: str
    n_ctx_train: int
    n_layer: int
    n_vocab: int
    n_params: int
    size_bytes: int


class LlamaModel:
    """Owns a llama_model pointer and answers every question that needs only the weights and vocabulary."""

    def __init__(self, path: Path, *, n_gpu_layers: int) -> None:
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        self.gpu_offload_supported = bool(llama_cpp.llama_supports_gpu_offload())
        # -1 means "everything"; llama.cpp spells that as a layer count larger than the model.
        params.n_gpu_layers = (0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers) if self.gpu_offload_supported else 0
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self.path = path
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        n_layer = llama_cpp.llama_model_n_layer(self.ptr)
        self.n_gpu_layers = min(params.n_gpu_layers, n_layer + 1)
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.ptr, desc, len(desc))
        self.info = ModelInfo(
            description=desc.value.decode(errors="replace"),
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(self.ptr),
            n_layer=n_layer,
            n_vocab=llama_cpp.llama_vocab_n_tokens(self.vocab),
            n_params=llama_cpp.llama_model_n_params(self.ptr),
            size_bytes=llama_cpp.llama_model_size(self.ptr),
        )
        self._pieces: dict[int, bytes] = {}
        self._chat = self._chat_formatter()
        self.tool_syntax: ToolSyntax | None = detect_tool_syntax(self._chat.template, self._render)

    @property
    def kv_bytes_per_token(self) -> int:
        """Size of one token's keys and values over all layers in an f16 cache."""
        head_dim = llama_cpp.llama_model_n_embd(self.ptr) // llama_cpp.llama_model_n_head(self.ptr)
        return 2 * 2 * self.info.n_layer * llama_cpp.llama_model_n_head_kv(self.ptr) * head_dim

    @property
    def gpu_offload(self) -> bool:
        return self.gpu_offload_supported and self.n_gpu_layers > 0

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for; control tokens render as nothing."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def check_token_ids(self, token_ids: Sequence[int], *, param: str) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.info.n_vocab]
        if bad:
            raise EngineError(f"token id {bad[0]} is outside the vocabulary (0..{self.info.n_vocab - 1})", param=param)

    def render_chat(self, messages: Sequence[TemplateMessage], tools: Sequence[TemplateTool] | None = None) -> str:
        """The prompt for `messages`; `tools` are given to the template as its `tools` variable (OpenAI's shape)."""
        try:
            return self._render(messages, tools)
        except Exception as exc:  # a template's raise_exception and jinja errors alike mean the messages don't fit it
            raise EngineError(f"the model's chat template rejected the messages: {exc}", param="messages") from None

    def _render(self, messages: Sequence[TemplateMessage], tools: Sequence[TemplateTool] | None) -> str:
        return self._chat(messages=[dict(m) for m in messages], tools=list(tools) if tools else None).prompt

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        template = llama_cpp.llama_model_chat_template(self.ptr, None)
        if template is None:
            log.warning("model has no chat template; using ChatML")
            template = _CHATML.encode()
        return Jinja2ChatFormatter(
            template=template.decode(),
            eos_token=self._special_text(llama_cpp.llama_vocab_eos(self.vocab)),
            bos_token=self._special_text(llama_cpp.llama_vocab_bos(self.vocab)),
        )

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self.vocab, token).decode(errors="replace")

    def new_sampler(self, params: SamplingParams) -> Sampler:
        return Sampler(self, params)

    def check_grammar(self, grammar: str, *, param: str) -> None:
        """Raise EngineError if llama.cpp cannot parse `grammar` (before it reaches the engine thread)."""
        grammar_sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not grammar_sampler:
            raise EngineError("the grammar built from this request could not be parsed", param=param)
        llama_cpp.llama_sampler_free(grammar_sampler)

    def logprob(self, ctx: llama_cpp.llama_context_p, index: int, token: int, params: SamplingParams) -> TokenLogprob:
        """`token`'s log-probability in the logits of batch position `index`, with logit bias applied."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self.info.n_vocab,))
        if params.logit_bias:
            logits = logits.copy()
            for biased, bias in params.logit_bias.items():
                logits[biased] += bias
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
        top: tuple[tuple[int, bytes, float], ...] = ()
        if params.logprobs:
            best = np.argpartition(-logits, params.logprobs)[: params.logprobs]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((int(t), self.piece(int(t)), float(logits[t]) - log_total) for t in best)
        return TokenLogprob(token, self.piece(token), float(logits[token]) - log_total, top)


_NEG_INF = float("-inf")
_CDF_BLOCK = 256
# Tokens checked one by one after the grammar refuses the sampled one, before it filters the whole vocabulary.
_RECHECKS = 16
# The likeliest tokens the grammar filters first when the chain has a top-k.
_SHORTLIST = 256


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


class Sampler:
    """A llama.cpp sampler chain for one sequence's sampling parameters, and its grammar if it has one.

    The grammar is kept out of the chain: applying it to the whole vocabulary every step costs more than the rest of
    the step. Like llama.cpp's own server, a token is sampled without it and checked against it alone; only when the
    grammar refuses that token is it sampled again: from the next likeliest tokens checked one by one (greedy and
    whole-distribution draws), from the likeliest few hundred filtered by the grammar (a chain with top-k), or from
    every candidate the grammar allows. The result is exactly what grammar-first sampling would allow.

    Greedy sampling skips the chain too: the chain copies the whole vocabulary into a candidate array per token
    (53 µs against 10 µs for an argmax over the logits, for a 49k vocabulary), and at 8 streams that is a percent of
    every step. The chain's answer is the same: the first highest logit after the bias is added in float32.

    So does sampling at a temperature from the whole distribution (OpenAI's defaults: no top-k, top-p or min-p):
    llama.cpp's dist sampler takes 444 µs a token over 49k candidates, `_draw` 90 µs for the same distribution
    (softmax of the biased logits over the temperature, drawn by inverse CDF with the sampler's own seeded generator,
    so a seed still gives the same answer every time, though not the answer llama.cpp's generator would give).
    """

    def __init__(self, model: LlamaModel, params: SamplingParams) -> None:
        self._n_vocab = model.info.n_vocab
        self.grammar = None
        self._greedy = params.greedy
        self._top_k = params.top_k
        self._temperature = np.float32(params.temperature)
        whole = not params.greedy and params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0
        # Any integer is a seed (OpenAI's clients send negative ones too); numpy's generator takes non-negative ones.
        seed = None if params.seed is None else params.seed % 2**64
        self._rng = np.random.default_rng(seed) if whole else None
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        self.ptr = llama_cpp.llama_sampler_chain_init(chain_params)
        add = lambda s: llama_cpp.llama_sampler_chain_add(self.ptr, s)  # noqa: E731
        if params.grammar is not None:
            self.grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, params.grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise EngineError("the grammar could not be parsed", param="response_format")
            # Checked once per token: built once, refilled per check.
            self._one = (llama_cpp.llama_token_data * 1)()
            self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
            self._one_ref = ctypes.byref(self._one_array)
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
                *(llama_cpp.llama_logit_bias(token=t, bias=b) for t, b in params.logit_bias.items())
            )
            add(llama_cpp.llama_sampler_init_logit_bias(model.info.n_vocab, len(params.logit_bias), biases))
        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Sample from the logits of batch position `index` and accept the token into the chain's state."""
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
        shortlist = np.argpartition(-self._biased(ctx, index), _SHORTLIST)[:_SHORTLIST]
        data, candidates = self._filtered(ctx, index, shortlist.astype(np.int32))
        if np.count_nonzero(data["logit"] != _NEG_INF) < self._top_k:
            return None
        return self._chain_pick(data, candidates)

    def _best_allowed(self, ctx: llama_cpp.llama_context_p, index: int) -> int | None:
        logits = self._biased(ctx, index)
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
        for _ in range(_RECHECKS if weights is not None else 0):
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
            return int(self._biased(ctx, index).argmax())
        return inverse_cdf(weights, rng.random())

    def _biased(self, ctx: llama_cpp.llama_context_p, index: int) -> np.ndarray:
        """A copy of the logits with the logit bias added (in float32, as llama.cpp's bias sampler adds it)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,)).copy()
        logits[self._bias_ids] += self._bias
        return logits

    def _weights(self, ctx: llama_cpp.llama_context_p, index: int) -> np.ndarray | None:
        """The softmax of the biased logits over the temperature, unnormalised; None if no token has any weight."""
        scaled = self._biased(ctx, index)
        scaled /= self._temperature
        peak = scaled.max()
        if not np.isfinite(peak):
            return None
        scaled -= peak
        return np.exp(scaled, out=scaled)

    def _grammar_allows(self, token: int) -> bool:
        one = self._one
        one[0].id, one[0].logit = token, 1.0
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.grammar, self._one_ref)
        return one[0].logit != _NEG_INF

    def _sample_within_grammar(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        return self._chain_pick(*self._filtered(ctx, index, np.arange(self._n_vocab, dtype=np.int32)))

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
        token = int(data["id"][candidates.selected])
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def close(self) -> None:
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
