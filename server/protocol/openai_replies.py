"""OpenAI's reply bodies: completions, chat completions and their stream chunks, the model list, embeddings.

Every route declares its response model and its error statuses, so /openapi.json describes what the server really
answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from server.protocol.base import RefusedVersion
from server.protocol.openai import ToolCall


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReasonField = Literal["stop", "length"]
ChatFinishReason = Literal["stop", "length", "tool_calls"]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReasonField | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # The model's thinking, apart from its answer (llama.cpp's server and vLLM name it so); only a thinking model's
    # messages carry the key.
    reasoning_content: str | None = Field(default=None, exclude_if=lambda value: value is None)
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class _Delta(BaseModel):
    """A stream delta names only what it carries, as OpenAI's do: the SDKs' accumulators merge keys, and a null
    would overwrite what an earlier chunk said."""

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ToolCallFunctionDelta(_Delta):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Delta):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta


class ChatDelta(_Delta):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: ChatFinishReason | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this model was loaded (unix time); 0 while it is not loaded.")
    owned_by: str = "ggufstack"
    state: Literal["loaded", "loading", "unloaded", "failed"] = Field(
        "loaded", description="loaded: serves now; loading; unloaded: loads on its first request; failed: see reason."
    )
    reason: str | None = Field(None, description="Why a model is loading or failed.")
    aliases: list[str] = Field(default_factory=list, description="Other names requests may use for it.")
    pinned: bool = Field(False, description="Loaded at startup and never unloaded.")
    sha256: str | None = Field(
        None, description="SHA-256 of the loaded GGUF file; also sent as x-ggufstack-model-version."
    )
    version: str | None = Field(
        None, description="The blob's version id (or ETag) it came from; null for a local file or while not loaded."
    )
    load_seconds: float | None = Field(None, description="Time to load and warm up the model.")
    memory_mib: float | None = Field(
        None, description="Memory it is charged against the budget (weights and KV cache, from its GGUF's header)."
    )
    refused: RefusedVersion | None = Field(None, description="The last new version refused since this one loaded.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or with encoding_format base64 little-endian float32s.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
