"""OpenAI request and response bodies. Requests are validated strictly, so bad input is a 400 naming the parameter.

Every route declares its response model and its error statuses with `ErrorResponse`, so /openapi.json describes
what the server really answers.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from server.config.settings import Settings

if TYPE_CHECKING:
    from server.lifecycle.holder import Refusal, ServedModel

# A JSON escape such as "\\ud800" decodes to a lone surrogate: a str that no UTF-8 encoder accepts. Let in, it fails
# far from its source (the tokenizer, a log line, or PostgreSQL in the audit writer), so every request body refuses it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate_at(value: object, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in a parsed JSON body a string (or an object's key) holds a lone surrogate; None when none does."""
    if isinstance(value, str):
        return path if _LONE_SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate_at(key, (*path, str(key))) or _lone_surrogate_at(item, (*path, str(key)))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate_at(item, (*path, str(i)))
            if found is not None:
                return found
    return None


class RequestBody(BaseModel):
    """A request body: its text, wherever it sits, is valid Unicode (a 400 naming the field otherwise)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, value: object) -> object:
        where = _lone_surrogate_at(value)
        if where is not None:
            field = ".".join(where) or "the body"
            raise ValueError(f"{field} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): not text")
        return value


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The server's caps on what one request may carry, checked while its body is validated: before a byte of it
    is tokenized or rendered, so an oversized request costs only its parsing."""

    max_messages: int
    max_stop_chars: int
    max_tokenize_input: int
    max_embedding_inputs: int

    @classmethod
    def of(cls, settings: Settings | None = None) -> RequestLimits:
        """The limits `settings` set; None: the settings' defaults."""
        values = {name: Settings.model_fields[name].default for name in cls.__dataclass_fields__}
        if settings is not None:
            values = {name: getattr(settings, name) for name in cls.__dataclass_fields__}
        return cls(**values)


DEFAULT_LIMITS = RequestLimits.of()
# The server sets its limits per request (the API's middleware); a body validated elsewhere gets the defaults.
request_limits: ContextVar[RequestLimits | None] = ContextVar("request_limits", default=None)


def current_limits() -> RequestLimits:
    return request_limits.get() or DEFAULT_LIMITS


Stop = Annotated[str, Field(min_length=1)]
TokenIdKey = Annotated[str, Field(pattern=r"^-?[0-9]+$", description="A token id, as a string.")]
LogitBias = dict[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema; absent: any JSON.")
    strict: StrictBool | None = None


class ResponseFormatText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class ResponseFormatJsonObject(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class ResponseFormatJsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


class SamplingFields(RequestBody):
    """Fields both endpoints share. Unknown fields are refused, like OpenAI's 'Unrecognized request argument'."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="llama.cpp extension; 0 disables it.")
    min_p: float = Field(0.0, ge=0, le=1, description="llama.cpp extension; 0 disables it.")
    n: int = Field(
        1,
        ge=1,
        le=128,
        description="How many choices to generate; they share one prefill of the prompt. At most GGUFSTACK_MAX_N "
        "(default 4) and the server's slot count; more is a 400.",
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: Stop | list[Stop] | None = None
    seed: int | None = None
    logit_bias: LogitBias | None = None
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Not supported; only 0 is accepted.")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Not supported; only 0 is accepted.")
    user: str | None = None
    response_format: ResponseFormat | None = Field(
        None, description="Constrain the output to JSON, or to JSON that validates against a schema (a grammar)."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _few_short_stops(cls, value: object) -> object:
        stops = value if isinstance(value, list) else [value]
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        longest = current_limits().max_stop_chars
        if any(isinstance(stop, str) and len(stop) > longest for stop in stops):
            raise ValueError(f"a stop sequence may have at most {longest} characters")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# Validated by `_one_prompt` (for messages that say what is wrong); documented exactly as accepted.
Prompt = Annotated[
    str | list[str] | list[int],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            ],
            "description": "A string, a list of one string, or a list of token ids.",
        }
    ),
]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: Literal[False] = False
    logprobs: int | None = Field(
        None, ge=0, le=5, description="Log-probabilities of each token and of this many likely alternatives."
    )
    suffix: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported")
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema for the arguments; absent: none.")
    strict: StrictBool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON string.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="Assistant messages: the calls it made.")
    tool_call_id: str | None = Field(None, description="Tool messages: the call this is the result of.")

    @model_validator(mode="after")
    def _fits_role(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: StrictBool | None = Field(None, description="Log-probabilities of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="How many likely alternatives, with logprobs.")
    tools: list[Tool] | None = Field(None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True

    @field_validator("messages", mode="before")
    @classmethod
    def _not_too_many(cls, value: object) -> object:
        most = current_limits().max_messages
        if isinstance(value, list) and len(value) > most:
            raise ValueError(f"at most {most} messages are allowed (this server's GGUFSTACK_MAX_MESSAGES)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("set max_tokens or max_completion_tokens, not both")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


EmbeddingInput = Annotated[
    str | list[str] | list[int] | list[list[int]],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 2048},
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                    "minItems": 1,
                    "maxItems": 2048,
                },
            ],
            "description": "A string, a list of strings, a list of token ids, or a list of such lists.",
        }
    ),
]


class EmbeddingRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = Field(None, description="Not supported: the model's own size is returned.")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _not_too_many(cls, value: object) -> object:
        most = current_limits().max_embedding_inputs
        if isinstance(value, list) and len(value) > most and value and not isinstance(value[0], int):
            raise ValueError(f"at most {most} inputs per request (this server's GGUFSTACK_MAX_EMBEDDING_INPUTS)")
        return value

    @field_validator("input")
    @classmethod
    def _inputs(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be empty")
        if any(isinstance(item, str | list) and len(item) == 0 for item in items):
            raise ValueError("inputs must not be empty")
        return value

    def token_lists(self) -> list[str | list[int]]:
        """Each input, as text or as token ids."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [[int(item) for item in value]]
        return [item if isinstance(item, str) else list(item) for item in value]


class TokenizeRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(description="At most GGUFSTACK_MAX_TOKENIZE_INPUT characters.")
    add_special: StrictBool = Field(False, description="Add the model's special tokens (BOS) as a prompt would.")
    with_pieces: StrictBool = Field(False, description="Return each token's text beside its id.")

    @field_validator("content", mode="before")
    @classmethod
    def _not_too_long(cls, value: object) -> object:
        most = current_limits().max_tokenize_input
        if isinstance(value, str) and len(value) > most:
            raise ValueError(f"at most {most} characters (this server's GGUFSTACK_MAX_TOKENIZE_INPUT)")
        return value


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[Annotated[int, Field(ge=0)]] = Field(description="At most GGUFSTACK_MAX_TOKENIZE_INPUT token ids.")

    @field_validator("tokens", mode="before")
    @classmethod
    def _not_too_many(cls, value: object) -> object:
        most = current_limits().max_tokenize_input
        if isinstance(value, list) and len(value) > most:
            raise ValueError(f"at most {most} token ids (this server's GGUFSTACK_MAX_TOKENIZE_INPUT)")
        return value


# ---- responses ----


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body, for every 4xx and 5xx."""

    error: ErrorDetail


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


class RefusedVersion(BaseModel):
    """A new model version the server refused to serve; the previous model serves on."""

    version: str = Field(description="The blob version (or ETag) refused.")
    reason: str
    refused_at: int = Field(description="Unix time.")


def refused_version(refusal: Refusal | None) -> RefusedVersion | None:
    if refusal is None:
        return None
    return RefusedVersion(version=refusal.version, reason=refusal.reason, refused_at=refusal.at)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this model was loaded (unix time).")
    owned_by: str = "ggufstack"
    sha256: str = Field(description="SHA-256 of the GGUF file; also sent as x-ggufstack-model-version.")
    version: str | None = Field(description="The blob's version id (or ETag) it came from; null for a local file.")
    load_seconds: float = Field(description="Time to load and warm up the model.")
    refused: RefusedVersion | None = Field(None, description="The last new version refused since this one loaded.")

    @classmethod
    def of(cls, served: ServedModel, refusal: Refusal | None) -> ModelCard:
        return cls(
            id=served.model_id,
            created=served.loaded_at,
            sha256=served.sha256,
            version=served.source_version,
            load_seconds=served.load_seconds,
            refused=refused_version(refusal),
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Liveness(BaseModel):
    status: Literal["alive", "failing"] = "alive"
    reason: str | None = None


class ReadinessReport(BaseModel):
    status: Literal["ready", "not_ready"]
    state: str
    reason: str
    refused: RefusedVersion | None = Field(None, description="The last new model version refused, and why.")


class TokenPiece(BaseModel):
    id: int
    piece: str


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeResponse(BaseModel):
    content: str


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


# --- the admin API (/admin/keys) and stored conversations ------------------------------------------------------


_INT32_MAX = 2**31 - 1  # the limits are PostgreSQL integers
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL


class KeyCreateRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=_NO_NUL)
    models: list[Annotated[str, Field(pattern=_NO_NUL)]] | None = Field(
        None, min_length=1, description="Models the key may use; absent: all of them."
    )
    rpm: int | None = Field(None, ge=1, le=_INT32_MAX, description="Requests per minute; absent: unlimited.")
    tpm: int | None = Field(
        None, ge=1, le=_INT32_MAX, description="Prompt + completion tokens per minute; absent: unlimited."
    )
    owner: str | None = Field(None, max_length=200, pattern=_NO_NUL)


class KeyInfo(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    owner: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart; never enough to use it.")
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    created: int
    revoked: int | None


class CreatedKey(KeyInfo):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class KeyUsageReport(BaseModel):
    id: str
    object: Literal["api_key.usage"] = "api_key.usage"
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cache_hits: int
    first_request: int | None
    last_request: int | None


class ConversationMessageOut(BaseModel):
    role: str
    content: str
    request_id: str
    created: int


class Conversation(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    messages: list[ConversationMessageOut]
