"""The inference engine's interface: what the HTTP side may know about generation.

Nothing here imports llama-cpp-python, so the API layer and tests can depend on these types without loading a model.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from server.engine.chat_template import ReasoningSyntax, TemplateMessage, TemplateTool, TemplateVariables, ToolSyntax
from server.engine.control_text import ControlTexts
from server.engine.thinking import ThinkingBudget
from server.errors import FailureKind, ForeseenError

if TYPE_CHECKING:  # it raises this module's ContextOverflowError
    from server.engine.token_bound import TokenBound

FinishReason = Literal["stop", "length"]
# Bump when the same request on the same model may sample other tokens (the sampler chain's order, a new default):
# the response cache's keys include it, so answers cached before the change are never served after it.
SAMPLER_VERSION = "2"  # 2: a thinking model thinks before a constrained answer


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: Sequence[str] = ()
    logprobs: int | None = None  # report each token's log-probability and this many top alternatives; None: off

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Grammar:
    """A grammar compiled by `Engine.compile_grammar`, on its way to the generation that samples under it.

    Its holder owns the native grammar until `generate` takes it, which happens exactly once: from then on the engine
    frees it however the generation ends, refused ones included. `close()` frees it when it was never taken and does
    nothing after a take or a first close, so a holder closes it on every path without asking who has it. Both are
    safe from any thread: a preparation compiles grammars in a worker thread, and one whose request was abandoned
    meanwhile is closed from the event loop.
    """

    def __init__(self, handle: object, free: Callable[[object], None], *, param: str, origin: object = None) -> None:
        self.param = param  # the request field the grammar came from, named by errors about it
        self.origin = origin  # what compiled it: an engine takes only its own grammars
        self._handle: object = handle
        self._free = free
        self._state = "open"
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        """Neither taken nor closed."""
        return self._state == "open"

    def take(self) -> object:
        """The native grammar, which the caller (the engine) now owns; EngineError if it was closed first."""
        with self._lock:
            if self._state == "closed":
                raise EngineError("the request's grammar was released before its generation started", param=self.param)
            if self._state == "taken":
                raise RuntimeError("a grammar is handed to the engine once")
            self._state = "taken"
            handle, self._handle = self._handle, None
        return handle

    def close(self) -> None:
        with self._lock:
            if self._state != "open":
                return
            self._state = "closed"
            handle, self._handle = self._handle, None
        self._free(handle)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_tokens: Sequence[int]
    sampling: SamplingParams
    prompt_param: str = "prompt"  # the request field the prompt came from, named by errors about it
    n: int = 1  # choices: n sequences continue from one prefill of the prompt; choice i samples with seed + i
    # Every completion matches its `root` (structured outputs, tool calls); `generate` takes it, see Grammar.
    grammar: Grammar | None = None
    # How long the model may think before the engine closes its thinking block for it (engine/thinking.py).
    thinking: ThinkingBudget | None = None
    # Whose cached prompts it may reuse: a slot keeps the KV of its last prompt for the next request that starts the
    # same way, and only a request of the same scope gets it. Reused, a long prompt's first token comes many times
    # sooner, so with one scope for every tenant a key could time whether another recently sent a given prompt.
    cache_scope: str = ""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token's log-probability under the distribution it was drawn from: after logit bias, before
    temperature and truncation (top-k/p, min-p, grammar); `top` are the most likely alternatives, best first."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New completion text; never part of a stop string and never half a UTF-8 character. With logprobs asked for,
    the tokens whose text this delta completes. `index` is the choice it belongs to."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    index: int = 0


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    """One choice of a generation with n > 1 ended; the generation's Finished follows the last of them."""

    index: int
    finish_reason: FinishReason
    completion_tokens: int
    stop_sequence: str | None = None  # the stop string that ended it, when one did


@dataclass(frozen=True, slots=True)
class Finished:
    """The generation ended. With n > 1, `finish_reason` is the first choice's (each choice's came in its
    ChoiceFinished) and `completion_tokens` counts every choice's tokens, as OpenAI's usage does."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None  # the stop string that ended the first choice, when one did


GenerationEvent = TextDelta | ChoiceFinished | Finished


class GenerationStream(Protocol):
    """A generation's events; `aclose()` cancels it. `completion_tokens` counts the tokens generated so far (every
    choice's), readable at any time: what a generation that never reached its Finished event cost."""

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    async def __anext__(self) -> GenerationEvent: ...

    @property
    def completion_tokens(self) -> int: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine's load and speed, for `/metrics`.

    Counters only grow; the `recent_*` figures cover the last `window_s` seconds (0.0 when nothing happened in it).
    """

    slots_total: int
    slots_busy: int
    queue_depth: int
    requests_finished: int
    requests_rejected: int
    prompt_tokens_total: int
    prompt_tokens_reused_total: int  # prompt tokens whose KV a slot already held (prefix reuse), not recomputed
    completion_tokens_total: int
    window_s: float
    recent_tokens_per_s: float
    recent_ttft_s: float
    recent_time_per_output_token_s: float
    kv_cells_used: int  # KV cells holding a token, over all slots (cached prefixes of idle slots included)
    kv_cells_total: int


class EngineError(ForeseenError):
    """A request the engine cannot run; `param` names the request field at fault, if any."""


class ContextOverflowError(EngineError):
    """The prompt, or prompt plus max_tokens, does not fit in the context window."""


class GrammarDeadEndError(EngineError):
    """The request's grammar allows no token next: no text this model can write continues it (a character class
    that admits nothing, say). The generation ends here rather than take a token the grammar refused."""

    code = "grammar_dead_end"


class EngineClosedError(EngineError):
    """The engine shut down before the generation finished."""

    kind = FailureKind.UNAVAILABLE
    code = "server_shutting_down"


class EngineOverloadedError(EngineError):
    """Every slot is busy and the waiting queue is full; try again later."""

    kind = FailureKind.OVERLOADED
    code = "engine_overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class Engine(Protocol):
    """Runs generations on one loaded model.

    `generate` yields TextDelta events (and, with n > 1, a ChoiceFinished per choice) and then exactly one Finished
    event. Closing the iterator early (a client that went away) cancels the generation and frees its resources.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def embedding_max_tokens(self) -> int:
        """The most tokens one embeddings input may hold (the embeddings context's batch)."""
        ...

    @property
    def gpu_offload(self) -> bool: ...

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """`text`'s tokens; with `parse_special`, a control token's text becomes that token, without it, text."""
        ...

    @property
    def control_texts(self) -> ControlTexts:
        """The texts of the model's control tokens, which a client's strings may spell only as text."""
        ...

    @property
    def token_bound(self) -> TokenBound:
        """How few tokens a text can hold, from its length: a prompt refused before it is tokenized."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def token_piece(self, token: int) -> bytes: ...

    @property
    def tool_syntax(self) -> ToolSyntax | None:
        """The tool-call syntax the chat template speaks natively; None: it has none (tools use a generic format)."""
        ...

    @property
    def reasoning(self) -> ReasoningSyntax | None:
        """How the model writes its thinking, from its chat template; None: its output is all answer."""
        ...

    def render_chat(
        self,
        messages: Sequence[TemplateMessage],
        tools: Sequence[TemplateTool] | None = None,
        variables: TemplateVariables | None = None,
    ) -> str: ...

    def compile_grammar(self, gbnf: str, *, param: str, root: str = "root") -> Grammar:
        """`gbnf`, starting at its rule `root`, compiled for this model's vocabulary (thread-safe); EngineError
        naming `param`, the request field the grammar came from, when it does not compile. The caller closes it
        unless `generate` took it."""
        ...

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Start a generation. It takes the request's grammar first: refused or not, the engine frees it."""
        ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One L2-normalised embedding per input (token ids)."""
        ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None: ...
