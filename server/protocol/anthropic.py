"""Anthropic's Messages API bodies: the request, the message, its stream events and the error body.

Requests are validated as strictly as OpenAI's: a field this server does not serve (images, documents, server tools)
is a 400 naming it, never silently dropped. Extended thinking is served for models that think (docs/api.md).
`cache_control` is accepted and has no effect: it is a hint about Anthropic's prompt caching and changes no answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

from server.protocol.base import ClosedModel, Items, RequestBody, current_limits

Stop = Annotated[str, Field(min_length=1)]


class CacheControl(ClosedModel):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlockParam(ClosedModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ToolUseBlockParam(ClosedModel):
    """An earlier call the assistant made (in an assistant message)."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlockParam(ClosedModel):
    """The result of a call (in a user message), found by its `tool_use_id`."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | Items[TextBlockParam] = ""
    is_error: StrictBool = False
    cache_control: CacheControl | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)


class ThinkingBlockParam(ClosedModel):
    """Earlier thinking, given back as the SDK keeps it (in an assistant message): templates leave it out of the prompt,
    so it is dropped, its signature unchecked."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlockParam(ClosedModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlockParam = Annotated[
    TextBlockParam | ToolUseBlockParam | ToolResultBlockParam | ThinkingBlockParam | RedactedThinkingBlockParam,
    Field(discriminator="type"),
]
BlockParam = TextBlockParam | ToolUseBlockParam | ToolResultBlockParam | ThinkingBlockParam | RedactedThinkingBlockParam


class MessageParam(ClosedModel):
    role: Literal["user", "assistant"]
    content: str | Items[ContentBlockParam]

    def blocks(self) -> list[BlockParam]:
        if isinstance(self.content, str):
            return [TextBlockParam(type="text", text=self.content)]
        return list(self.content)


class ToolParam(ClosedModel):
    """A client tool. Anthropic's server tools (web search, code execution, ...) have other `type`s: a 400."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="A JSON Schema for the tool's input, whose `type` is `object`.")
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None

    @field_validator("input_schema")
    @classmethod
    def _an_object(cls, value: dict[str, Any]) -> dict[str, Any]:
        # As Anthropic requires: a call's `input` is an object (ToolUseBlock), and the grammar writes what the
        # schema says, so any other schema would force a call no reply can carry.
        if value.get("type") != "object":
            raise ValueError('the input schema must describe an object ("type": "object")')
        return value


class ToolChoiceAuto(ClosedModel):
    type: Literal["auto"]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceAny(ClosedModel):
    type: Literal["any"]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceTool(ClosedModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceNone(ClosedModel):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class Metadata(ClosedModel):
    user_id: str | None = Field(None, max_length=256)


class ThinkingEnabled(ClosedModel):
    type: Literal["enabled"]
    budget_tokens: int = Field(
        ge=1024, description="Thinking tokens, after which the server closes the block and the answer begins."
    )


class ThinkingDisabled(ClosedModel):
    type: Literal["disabled"]


Thinking = Annotated[ThinkingEnabled | ThinkingDisabled, Field(discriminator="type")]


class MessagesInput(RequestBody):
    """What a prompt is made of: shared by messages and count_tokens."""

    model: str = Field(min_length=1)
    messages: Items[MessageParam] = Field(min_length=1)
    system: str | Items[TextBlockParam] | None = None
    tools: Items[ToolParam] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    cache_control: CacheControl | None = None
    # As Anthropic's: thinking is off unless enabled (where the model's template can turn it off, docs/api.md).
    thinking: Thinking | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _not_too_many(cls, value: object) -> object:
        most = current_limits().max_messages
        if isinstance(value, list) and len(value) > most:
            raise ValueError(f"at most {most} messages are allowed (this server's GGUFSTACK_MAX_MESSAGES)")
        return value

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system
        return "\n".join(b.text for b in self.system)


class MessagesRequest(MessagesInput):
    max_tokens: int = Field(ge=1)
    stop_sequences: Items[Stop] | None = Field(None, max_length=4)
    temperature: float = Field(1.0, ge=0, le=1)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables it.")
    metadata: Metadata | None = None
    stream: StrictBool = False

    @field_validator("stop_sequences")
    @classmethod
    def _short_stops(cls, value: list[str] | None) -> list[str] | None:
        longest = current_limits().max_stop_chars
        if value and any(len(stop) > longest for stop in value):
            raise ValueError(f"a stop sequence may have at most {longest} characters")
        return value


class CountTokensRequest(MessagesInput):
    pass


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Anthropic signs its thinking so that it can check it when given back; this server checks nothing it is given
    # back (it leaves earlier thinking out of the prompt), so the signature is empty.
    signature: str = ""


ContentBlock = Annotated[ThinkingBlock | TextBlock | ToolUseBlock, Field(discriminator="type")]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


class MessageTokensCount(BaseModel):
    input_tokens: int


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(BaseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(BaseModel):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta, Field(discriminator="type")]


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDeltaBody(BaseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class MessageDeltaUsage(BaseModel):
    output_tokens: int


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: MessageDeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


AnthropicErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]


class AnthropicErrorDetail(BaseModel):
    type: AnthropicErrorType
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error body, for every 4xx and 5xx under /v1/messages; also a stream's in-band `error` event."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
)
