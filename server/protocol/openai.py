"""OpenAI's request bodies (chat completions, completions, embeddings). Requests are validated strictly, so bad
input is a 400 naming the parameter, and every cap is checked before a byte is tokenized."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from server.protocol.base import ClosedModel, Entries, Items, RequestBody, current_limits

Stop = Annotated[str, Field(min_length=1)]
# Ten digits hold every token id; a longer key would reach Python's int-conversion limit in `int()` (a 500).
TokenIdKey = Annotated[str, Field(pattern=r"^-?[0-9]{1,10}$", description="A token id, as a string.")]
LogitBias = Entries[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]]


class StreamOptions(ClosedModel):
    include_usage: StrictBool = False


class JsonSchemaFormat(ClosedModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema; absent: any JSON.")
    strict: StrictBool | None = None


class ResponseFormatText(ClosedModel):
    type: Literal["text"]


class ResponseFormatJsonObject(ClosedModel):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(ClosedModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


class SamplingFields(RequestBody):
    """Fields both endpoints share. Unknown fields are refused, like OpenAI's 'Unrecognized request argument'."""

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
    stop: Stop | Items[Stop] | None = None
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
    str | Items[str] | Items[int],
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


class TextPart(ClosedModel):
    type: Literal["text"]
    text: str


class FunctionDefinition(ClosedModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema for the arguments; absent: none.")
    strict: StrictBool | None = None


class Tool(ClosedModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(ClosedModel):
    name: str


class NamedToolChoice(ClosedModel):
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


class ChatMessage(ClosedModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Items[TextPart] | None = None
    name: str | None = None
    tool_calls: Items[ToolCall] | None = Field(None, description="Assistant messages: the calls it made.")
    tool_call_id: str | None = Field(None, description="Tool messages: the call this is the result of.")
    reasoning_content: str | None = Field(
        None, description="Assistant messages: earlier thinking, as a reply gave it; left out of the prompt."
    )

    @model_validator(mode="after")
    def _fits_role(self) -> ChatMessage:
        if self.reasoning_content is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry reasoning_content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            article = "an" if self.role == "assistant" else "a"  # the roles: system, developer, user, assistant, tool
            raise ValueError(f"{article} {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


# OpenAI's levels. Only "none" changes anything: it turns thinking off. A budget is `thinking_budget_tokens`, in tokens.
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ChatCompletionRequest(SamplingFields):
    messages: Items[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: StrictBool | None = Field(None, description="Log-probabilities of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="How many likely alternatives, with logprobs.")
    tools: Items[Tool] | None = Field(None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    reasoning_effort: ReasoningEffort | None = Field(
        None,
        description='"none" turns a thinking model\'s thinking off where its template can; the others leave it on.',
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description='Variables given to the model\'s chat template, e.g. {"enable_thinking": false}.'
    )
    thinking_budget_tokens: int | None = Field(
        None,
        ge=0,
        description="A thinking model's thinking may take this many tokens; then the server closes the block for it "
        "and the answer begins (llama.cpp's name for it).",
    )

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

    def thinking_off(self) -> bool:
        """Whether the request turns the model's thinking off: `enable_thinking: false` among the template's
        variables (as vLLM and llama.cpp's server take it), or `reasoning_effort: "none"`."""
        kwargs = self.chat_template_kwargs or {}
        return kwargs.get("enable_thinking") is False or self.reasoning_effort == "none"


EmbeddingInput = Annotated[
    str | Items[str] | Items[int] | Items[Items[int]],
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
        token_ids = [item for item in value if isinstance(item, int)]
        if len(token_ids) == len(value):  # one input, as token ids
            return [token_ids]
        return [item if isinstance(item, str) else list(item) for item in value if not isinstance(item, int)]
