"""One generation request on its way through the serving pipeline, and who sent it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from server.access.caller import ANONYMOUS, Caller
from server.engine.base import Engine, Finished, GenerationRequest
from server.engine.chat_template import ReasoningSyntax
from server.lifecycle.holder import ServedModel
from server.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from server.protocol.ops import DetokenizeRequest, TokenizeRequest
from server.protocol.responses import ResponseRequest
from server.serving.constrain.tools.formats import ToolFormat

Endpoint = Literal[
    "chat.completions",
    "responses",
    "completions",
    "embeddings",
    "tokenize",
    "detokenize",
    "messages",
    "messages.count_tokens",
]
TOKENIZER_ENDPOINTS = ("tokenize", "detokenize", "messages.count_tokens")
# Requests that run no model: a stored Responses API response read, its input items listed, or deleted.
ErrandEndpoint = Literal["responses.retrieve", "responses.input_items", "responses.delete", "conversations.retrieve"]
Body = (
    ChatCompletionRequest | CompletionRequest | EmbeddingRequest | TokenizeRequest | DetokenizeRequest | ResponseRequest
)


@dataclass(frozen=True, slots=True)
class PreparedGeneration:
    """What a generation's preparation decides: the engine request (its grammar compiled), the tool-call format
    its answer is parsed in (None: the answer is text), how its thinking is split from the answer (None: the
    output is all answer), and the chat request it was prepared from when the preparation built that itself (a
    Responses request's, with the conversation it continues): the job's body from then on."""

    request: GenerationRequest
    tool_format: ToolFormat | None = None
    reasoning: ReasoningSyntax | None = None
    body: ChatCompletionRequest | None = None


@dataclass(frozen=True, slots=True)
class Errand:
    """A request that ran no model, once it ended: what its audit row says. One of the ErrandEndpoints, or a request
    for a model refused (or given up) before its pipeline ran, while the model was being leased."""

    request_id: str
    endpoint: ErrandEndpoint | Endpoint
    caller: Caller
    client_request_id: str | None
    latency_ms: float
    status: int


@dataclass(eq=False)
class ServingJob:
    """What the stages share. Stages fill `response_headers` before the first event, and the outcome as it happens.

    The expensive part of admission (rendering the chat template, tokenizing, compiling the grammar) is the job's
    `preparation`, which the `prepare` stage runs in a worker thread once the request limit admitted the request. It
    returns a PreparedGeneration (the job's `generation` and `tool_format`), an embeddings request's `embedding_inputs`
    (its terminal stage leaves the vectors in `embeddings`), or a tokenizer request's answer (`prepared`); such jobs
    end with one Finished event. What the preparation must read first (a Responses request's stored conversation)
    is the job's `lookup`, which the `prepare` stage awaits just before it: a request refused earlier reads nothing.
    """

    request_id: str  # the server's own id: the one identity of the request (audit row, rate-limit entries)
    endpoint: Endpoint
    # A Responses request's body is its own until its preparation turns it into chat (PreparedGeneration.body).
    body: Body
    model: ServedModel
    preparation: Callable[[Engine], object] | None = None
    caller: Caller = ANONYMOUS
    lookup: Callable[[], Awaitable[None]] | None = None
    generation: GenerationRequest | None = None  # its grammar is the prepare stage's to close until the engine takes it
    tool_format: ToolFormat | None = None
    reasoning: ReasoningSyntax | None = None
    prepared: object = None
    conversation_id: str | None = None  # X-Conversation-Id: where the record stage files this exchange
    client_request_id: str | None = None  # X-Request-Id as the client sent it, recorded beside request_id
    arrived_at: float = field(default_factory=time.monotonic)
    response_headers: dict[str, str] = field(default_factory=dict)
    cache_hit: bool = False
    first_token_at: float | None = None
    finished: Finished | None = None
    # Completion tokens the engine generated, set when the last stage ends however it ends: what a generation that
    # never reached Finished (a client gone, a drain, a failure) is charged and recorded with.
    generated_tokens: int = 0
    embedding_inputs: list[list[int]] = field(default_factory=list)
    embeddings: list[list[float]] | None = None
    # A failure after the generation finished, while its reply was being settled (a Responses answer that could not
    # be stored): the client hears it, so the record stage records it as the request's outcome.
    reply_error: Exception | None = None
    # The request limit admitted (and counted) it before its model was loaded (Pipeline.before_load).
    request_counted: bool = False

    @property
    def runs_model(self) -> bool:
        """Whether the request decodes with the model (generations, embeddings), not only its tokenizer."""
        return self.endpoint not in TOKENIZER_ENDPOINTS

    @property
    def prompt_tokens(self) -> int:
        """The tokens the request reads, counted by the model's tokenizer before it runs."""
        if self.generation is not None:
            return len(self.generation.prompt_tokens)
        return sum(len(tokens) for tokens in self.embedding_inputs)
