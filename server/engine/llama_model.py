"""A GGUF model loaded through llama-cpp-python's low-level API: vocabulary, chat template, token log-probabilities.

Contexts (the KV cache and the decode loop) belong to the engines; this module only owns the weights.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from server.engine.base import EngineClosedError, EngineError, SamplingParams, TokenLogprob
from server.engine.chat_template import (
    ReasoningSyntax,
    TemplateMessage,
    TemplateTool,
    TemplateVariables,
    ToolSyntax,
    detect_reasoning,
    detect_tool_syntax,
    output_tags,
)
from server.engine.control_text import ControlTexts, ControlToken
from server.engine.token_bound import TokenBound
from server.engine.validation import check_token_ids

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


_native_log = logging.getLogger("llama_cpp.native")
# ggml's levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


def _forward_native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode(errors="replace").rstrip()
    if message:
        _native_log.log(_LEVELS.get(level, logging.DEBUG), "%s", message)


# Kept referenced for the process's life: llama.cpp calls it from C.
_NATIVE_LOG_CALLBACK = llama_cpp.llama_log_callback(_forward_native_log)


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # llama.cpp prints hundreds of lines per model load straight to stderr; route them through logging.
            llama_cpp.llama_log_set(_NATIVE_LOG_CALLBACK, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


def amx_kernels(system_info: str) -> bool:
    """Whether a llama.cpp build (its `llama_print_system_info()`) has the AMX kernels, which crash the process at
    their first matrix product on the Xeons that run them (llama.cpp issue 20824). The builds ./dev and the images make
    leave them out; a llama-cpp-python compiled natively on such a Xeon by other means has them."""
    return "AMX_INT8 = 1" in system_info


def _safe_from_amx(params: llama_cpp.llama_model_params) -> None:
    """Keep the weights out of the AMX kernels' buffers, where a build has them: llama.cpp puts weights in the
    "extra" buffer types (AMX, and the CPU repacking of Q4_0 and Q4_K) only when allowed to."""
    if amx_kernels(llama_cpp.llama_print_system_info().decode(errors="replace")):
        log.warning(
            "this llama.cpp build has AMX kernels, which crash the process (llama.cpp issue 20824): they are not "
            "used, nor is the CPU weight repacking; rebuild llama-cpp-python with CFLAGS and CXXFLAGS -U__AMX_INT8__ "
            "(as ./dev does)"
        )
        params.use_extra_bufts = False


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
        # Worker threads reading the vocabulary (tokenizing a prompt, compiling a grammar) while close() may come:
        # close waits for them, and refuses those that come after it.
        self._readers = 0
        self._closing = False
        self._freeing = threading.Condition()
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        self.gpu_offload_supported = bool(llama_cpp.llama_supports_gpu_offload())
        # -1 means "everything"; llama.cpp spells that as a layer count larger than the model.
        params.n_gpu_layers = (0x7FFFFFFF if n_gpu_layers < 0 else n_gpu_layers) if self.gpu_offload_supported else 0
        _safe_from_amx(params)
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
        self.reasoning: ReasoningSyntax | None = detect_reasoning(self._chat.template, self._render)
        # Thinking tags and user-defined tokens (`<tool_response>`) stay as written in a client's strings, for the
        # templates that look for them there; llama.cpp reads user-defined tokens from any text anyway.
        thinking_tags = (self.reasoning.open, self.reasoning.close) if self.reasoning is not None else ()
        # SentencePiece and BPE cover every byte of a text, and tokenize the text between special tokens run by run,
        # each as if after one (see TokenBound and tokenize); the others (WordPiece, Unigram) are left to llama.cpp.
        self._covering = llama_cpp.llama_vocab_type(self.vocab) in _COVERING_VOCABULARIES
        control, user_defined, self.token_bound = self._scan_vocabulary()
        self.control_texts = ControlTexts(control, as_written=(*thinking_tags, *user_defined))
        # A vocabulary may make the tags the output is read by control tokens, which render as nothing: the thinking
        # would not split from the answer, and calls would come back as bare JSON in the content. They render as
        # their text instead (llama.cpp's server keeps them as its "preserved tokens").
        self._tag_tokens = {control[tag].id for tag in output_tags(self.tool_syntax, self.reasoning) if tag in control}
        self._add_bos = [llama_cpp.llama_vocab_bos(self.vocab)] if llama_cpp.llama_vocab_get_add_bos(self.vocab) else []
        self._add_eos = [llama_cpp.llama_vocab_eos(self.vocab)] if llama_cpp.llama_vocab_get_add_eos(self.vocab) else []

    @property
    def kv_bytes_per_token(self) -> int:
        """Size of one token's keys and values over all layers in an f16 cache."""
        head_dim = llama_cpp.llama_model_n_embd(self.ptr) // llama_cpp.llama_model_n_head(self.ptr)
        return int(2 * 2 * self.info.n_layer * llama_cpp.llama_model_n_head_kv(self.ptr) * head_dim)

    @property
    def gpu_offload(self) -> bool:
        return self.gpu_offload_supported and self.n_gpu_layers > 0

    def close(self) -> None:
        """Free the weights, once the threads reading them are done; the vocabulary refuses every use after this.
        Blocks for as long as those threads take: call it off the event loop."""
        with self._freeing:
            self._closing = True
            self._freeing.wait_for(lambda: self._readers == 0)
            if self.ptr:
                llama_cpp.llama_model_free(self.ptr)
                self.ptr = self.vocab = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the weights while a thread reads them (the vocabulary, by pointer): a request that outlived its
        model's unload (an admin's drain ran out) gets a foreseen 503 instead of reading freed memory."""
        with self._freeing:
            if self._closing:
                raise EngineClosedError("the model was unloaded while this request was being prepared; try again")
            self._readers += 1
        try:
            yield
        finally:
            with self._freeing:
                self._readers -= 1
                if not self._readers:
                    self._freeing.notify_all()

    def _scan_vocabulary(self) -> tuple[dict[str, ControlToken], list[str], TokenBound]:
        """In one pass over the vocabulary: the tokens llama.cpp reads from text only when told to parse special tokens
        (control and unknown), by their text; the texts of the user-defined ones, which it reads from any text; and,
        for a vocabulary that covers every byte of a text, the longest text one token stands for (special tokens'
        included), in bytes, and whether a token strips the whitespace beside it (TokenBound)."""
        quoted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        strips = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
        get_attr = llama_cpp.llama_vocab_get_attr
        control: dict[str, ControlToken] = {}
        user_defined: list[str] = []
        buf = ctypes.create_string_buffer(256)
        longest, whitespace_may_vanish = 1, False
        for token in range(self.info.n_vocab):
            attr = get_attr(self.vocab, token)
            if attr & quoted:
                lstrip, rstrip = (
                    bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP),
                    bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP),
                )
                control.setdefault(self._special_text(token), ControlToken(token, lstrip, rstrip))
            elif attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED:
                user_defined.append(self._special_text(token))
            if self._covering:
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
                longest = max(longest, n if n >= 0 else -n)  # -n: the length of a piece longer than the buffer
                whitespace_may_vanish |= bool(attr & strips)
        bound = TokenBound(longest, whitespace_may_vanish) if self._covering else TokenBound()
        return control, user_defined, bound

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """`text`'s tokens; with `parse_special`, a control token's text becomes that token, without it, text."""
        if parse_special and self._covering and self.control_texts.may_hold_one(text):
            return self._tokenize_cut(text, add_special=add_special)
        return self._tokenize(text, add_special=add_special, parse_special=parse_special)

    def _tokenize_cut(self, text: str, *, add_special: bool) -> list[int]:
        """`text`'s tokens with its control texts parsed, found in one pass here rather than by llama.cpp, which looks
        for each control token's text in turn over the whole text: with thousands of them (Gemma's `<unusedN>`) a text
        full of their first character took seconds. The runs between are tokenized as text, as
        llama.cpp tokenizes them (its strips, and SentencePiece's space prefix after a special token, included)."""
        tokens = self.control_texts.tokenize(text, self._text_tokens)
        return self._add_bos + tokens + self._add_eos if add_special else tokens

    def _text_tokens(self, run: str) -> list[int]:
        return self._tokenize(run, add_special=False, parse_special=False)

    def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        with self.reading():
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n < 0:
                capacity = -n
                buf = (llama_cpp.llama_token * capacity)()
                n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for; control tokens render as nothing, but for the tags the output is
        read by."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            special = token in self._tag_tokens
            with self.reading():
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
                if n < 0:
                    buf = ctypes.create_string_buffer(-n)
                    n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def check_token_ids(self, token_ids: Sequence[int], *, param: str) -> None:
        check_token_ids(token_ids, n_vocab=self.info.n_vocab, param=param)

    def render_chat(
        self,
        messages: Sequence[TemplateMessage],
        tools: Sequence[TemplateTool] | None = None,
        variables: TemplateVariables | None = None,
    ) -> str:
        """The prompt for `messages`; `tools` are given to the template as its `tools` variable (OpenAI's shape),
        `variables` as further variables of their names."""
        try:
            return self._render(messages, tools, variables)
        except Exception as exc:  # a template's raise_exception and jinja errors alike mean the messages don't fit it
            raise EngineError(f"the model's chat template rejected the messages: {exc}", param="messages") from None

    def _render(
        self,
        messages: Sequence[TemplateMessage],
        tools: Sequence[TemplateTool] | None,
        variables: TemplateVariables | None = None,
    ) -> str:
        # llama_cpp types the messages and tools as its own TypedDicts of OpenAI's shapes, which ours are.
        chat_messages: list[Any] = [dict(m) for m in messages]
        chat_tools: list[Any] | None = list(tools) if tools else None
        prompt: str = self._chat(messages=chat_messages, tools=chat_tools, **(variables or {})).prompt
        return prompt

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
        text: bytes = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return text.decode(errors="replace")

    def logprob(self, logits: np.ndarray, token: int, params: SamplingParams) -> TokenLogprob:
        """`token`'s log-probability in `logits` (with the logit bias applied: see `Sampler.biased`), and the
        `params.logprobs` likeliest tokens'."""
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
        top: tuple[tuple[int, bytes, float], ...] = ()
        if params.logprobs:
            best = np.argpartition(-logits, params.logprobs)[: params.logprobs]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = tuple((int(t), self.piece(int(t)), float(logits[t]) - log_total) for t in best)
        return TokenLogprob(token, self.piece(token), float(logits[token]) - log_total, top)


_COVERING_VOCABULARIES = (llama_cpp.LLAMA_VOCAB_TYPE_SPM, llama_cpp.LLAMA_VOCAB_TYPE_BPE)

_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
