"""OpenAI's Responses API request body (`POST /v1/responses`) and its input items.

Validated as strictly as chat: an unknown field, a built-in tool (web search, file search, ...) or an input part this
server cannot read (images, files) is a 400 naming the field. The items kept for a stored response are these models
as JSON, so `GET /v1/responses/{id}/input_items` answers what the request said, with ids."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, field_validator

from server.protocol.base import ClosedModel, Entries, Items, RequestBody, current_limits
from server.protocol.openai import ReasoningEffort

ItemStatus = Literal["in_progress", "completed", "incomplete"]
# An item's id, as a previous response's id: ids are kept with the response and listed back, never read by the model.
ItemId = Annotated[str, Field(min_length=1, max_length=128)]
Metadata = Annotated[
    Entries[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class InputText(ClosedModel):
    type: Literal["input_text"]
    text: str


class TopLogprob(ClosedModel):
    token: str
    logprob: float
    bytes: Items[Annotated[int, Field(ge=0, le=255)]] | None = None


class Logprob(TopLogprob):
    """One token of a replayed answer's log-probabilities, in OpenAI's shape (kept with the item, never read)."""

    top_logprobs: Items[TopLogprob] = Field(default_factory=list, max_length=20)


class OutputText(ClosedModel):
    """Assistant text, as a response's output and as input that replays it."""

    type: Literal["output_text"]
    text: str
    annotations: Items[dict[str, Any]] = Field(default_factory=list, max_length=0)
    logprobs: Items[Logprob] | None = None


ContentPart = Annotated[InputText | OutputText, Field(discriminator="type")]


class MessageItem(ClosedModel):
    type: Literal["message"] = "message"
    id: ItemId | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | Items[ContentPart]
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(ClosedModel):
    type: Literal["function_call"]
    id: ItemId | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = Field(description="The arguments as a JSON string.")
    status: ItemStatus | None = None


class FunctionCallOutputItem(ClosedModel):
    type: Literal["function_call_output"]
    id: ItemId | None = None
    call_id: str = Field(min_length=1)
    output: str | Items[InputText]
    status: ItemStatus | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


class ReasoningText(ClosedModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryText(ClosedModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(ClosedModel):
    """A thinking model's thinking, as an output item (its text as `content`; no summaries are written). Given back in
    `input` (or chained by previous_response_id), it is left out of the prompt, as chat templates leave it out: it is
    kept, in OpenAI's shape, and counts towards the conversation's bounds like any item."""

    type: Literal["reasoning"] = "reasoning"
    id: ItemId
    summary: Items[SummaryText] = Field(default_factory=list)
    content: Items[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


def _item_kind(value: object) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) else "message"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class FunctionTool(ClosedModel):
    """A function the model may call; the Responses API's flat shape (no nested `function` object)."""

    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema for the arguments; absent: none.")
    strict: StrictBool | None = None


class FunctionToolChoice(ClosedModel):
    type: Literal["function"]
    name: str


ResponsesToolChoice = Literal["none", "auto", "required"] | FunctionToolChoice


class TextFormatText(ClosedModel):
    type: Literal["text"]


class TextFormatJsonObject(ClosedModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(ClosedModel):
    model_config = ConfigDict(populate_by_name=True)
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema the output validates against.")
    strict: StrictBool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextConfig(ClosedModel):
    format: TextFormat = Field(default_factory=lambda: TextFormatText(type="text"))
    verbosity: Literal["medium"] | None = Field(None, description="Only the default is supported.")


_BUILT_IN_TOOLS = "only function tools are supported; built-in tools ({kind!r}) are not"


class ReasoningConfig(ClosedModel):
    """`reasoning`: only the effort has an effect ("none" turns a thinking model's thinking off where its template
    can, see chat's `reasoning_effort`); no summaries are written, so `summary` is accepted and changes nothing."""

    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseRequest(RequestBody):
    """`POST /v1/responses`. Fields OpenAI documents that this server cannot honour (`background`, `include`,
    built-in tools, ...) are refused rather than ignored."""

    model: str = Field(min_length=1)
    input: str | Items[InputItem]
    instructions: str | None = Field(None, description="A system message; not carried over by previous_response_id.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, description="llama.cpp extension: a seed makes sampling repeatable.")
    tools: Items[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: ResponsesToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    text: TextConfig | None = None
    metadata: Metadata | None = None
    user: str | None = None
    store: StrictBool = Field(True, description="Keep the response for GET and for previous_response_id.")
    previous_response_id: str | None = Field(None, min_length=1, max_length=128)
    stream: StrictBool = False
    truncation: Literal["disabled"] | None = None
    background: Literal[False] | None = Field(None, description="Not supported; only false is accepted.")
    reasoning: ReasoningConfig | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _bounded_input(cls, value: object) -> object:
        most = current_limits().max_messages
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if len(value) > most:
                raise ValueError(f"at most {most} input items are allowed (this server's GGUFSTACK_MAX_MESSAGES)")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, value: object) -> object:
        for tool in value if isinstance(value, list) else []:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(_BUILT_IN_TOOLS.format(kind=kind))
        return value

    def input_items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)


class InputItemsQuery(BaseModel):
    """`GET /v1/responses/{id}/input_items`: a page of the items, newest first unless `order` says asc."""

    model_config = ConfigDict(extra="forbid")
    after: str | None = None
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"
