"""What every tool-call format shares: the request's checked tool plan, what the template is given, the parsed answer.

`"required"` and a named function leave only calls in a format's grammar, and each call's arguments are constrained by
its function's parameter schema, so they always validate; `"auto"` also lets the model answer in text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from server.engine.chat_template import TemplateMessage, TemplateTool
from server.errors import APIError
from server.protocol.base import body_fault
from server.protocol.openai import ChatCompletionRequest, NamedToolChoice, Tool
from server.serving.constrain.grammar import json_schema_grammar

MAX_PARALLEL_CALLS = 8
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request uses its tools, whatever the format."""

    tools: tuple[Tool, ...]  # every tool of the request: all are described to the model
    chosen: tuple[Tool, ...]  # those the answer may call: one with a named tool_choice
    allows_content: bool  # tool_choice "auto": the model may answer in text instead
    max_calls: int  # 1 without parallel_tool_calls

    def call_schema(self) -> dict[str, Any]:
        """The JSON schema of one call, `{"name": ..., "arguments": {...}}`, to any chosen tool."""
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters or NO_ARGUMENTS},
                "required": ["name", "arguments"],
            }
            for t in self.chosen
        ]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}


@dataclass(frozen=True, slots=True)
class TemplateInput:
    """What the chat template renders: the messages, and the tools for templates that describe them themselves."""

    messages: list[TemplateMessage]
    tools: list[TemplateTool] | None = None


@dataclass(frozen=True, slots=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # the JSON the model wrote, as it wrote it: what a stream sent, piece by piece
    complete: bool = True  # False: cut short (max_tokens, a stop string) while its arguments were being written


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    content: str | None
    calls: tuple[ParsedCall, ...]


@dataclass(frozen=True, slots=True)
class CallBegun:
    """A call's name is written: the call is certain, its arguments come next."""

    index: int  # the call's place among the answer's calls
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ArgumentsWritten:
    """More of a begun call's arguments, as the model wrote them."""

    index: int
    text: str


CallEvent = CallBegun | ArgumentsWritten


def uses_tools(body: ChatCompletionRequest) -> bool:
    """Whether a request's answer may be tool calls: it offers tools, and tool_choice is not "none"."""
    return bool(body.tools) and body.tool_choice != "none"


def plan(body: ChatCompletionRequest) -> ToolPlan | None:
    """The tool plan of a request, or None when it generates plain text (no tools, or tool_choice "none")."""
    if body.tool_choice is not None and not body.tools:
        raise APIError(400, "tool_choice is only allowed when tools are specified", param="tool_choice")
    tools = body.tools
    if not tools or not uses_tools(body):
        return None
    names = [tool.function.name for tool in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise APIError(400, f"two tools are named {name!r}", param=f"tools[{i}].function.name")
    chosen = tools
    if isinstance(body.tool_choice, NamedToolChoice):
        chosen = [t for t in tools if t.function.name == body.tool_choice.function.name]
        if not chosen:
            raise APIError(
                400, f"tool_choice names {body.tool_choice.function.name!r}, which is not among the tools",
                param="tool_choice",
            )  # fmt: skip
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format cannot be combined with tools", param="response_format")
    # The parameter schemas are converted once, into the format's grammar (`tools.grammar`).
    return ToolPlan(
        tools=tuple(tools),
        chosen=tuple(chosen),
        allows_content=body.tool_choice in (None, "auto"),
        max_calls=MAX_PARALLEL_CALLS if body.parallel_tool_calls else 1,
    )


def check_parameters(plan: ToolPlan) -> None:
    """Convert each chosen tool's parameter schema on its own: APIError naming the first tool whose schema cannot be
    a grammar."""
    for tool in plan.chosen:
        index = plan.tools.index(tool)
        json_schema_grammar(tool.function.parameters or NO_ARGUMENTS, param=f"tools[{index}].function.parameters")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def decoded_arguments(arguments: str) -> Mapping[str, Any] | str:
    """A call's arguments as a template best renders them: the object when they are a JSON object, else the text
    (also for an object nested deeper than a request body may be: they are a string in the body, unchecked)."""
    try:
        decoded = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError):
        return arguments
    return decoded if isinstance(decoded, dict) and body_fault(decoded) is None else arguments


class CallReader(Protocol):
    """One answer read as it is written, for its calls: each call once its name is written, then its arguments as
    they come (`server/serving/endpoints/tool_answer.py`). A format's parse reads the whole answer with one, so a
    stream and the answer unstreamed have the same calls."""

    def feed(self, text: str) -> list[CallEvent]:
        """The answer's next text; returns what it made certain of the calls."""
        ...

    def calls(self) -> tuple[ParsedCall, ...]:
        """The calls begun so far, each with the arguments written so far."""
        ...

    def answer(self, text: str) -> ParsedAnswer | None:
        """The calls and content of the whole answer `text`, all of it fed: None when it is not in the format."""
        ...


class ContentStream(Protocol):
    """One answer read as it is written, for what of its content is already certain, so that a stream can send it
    before the answer is whole and parsed (`server/serving/endpoints/tool_answer.py`)."""

    def feed(self, text: str) -> str:
        """The answer's next text; returns the content it made certain, after what earlier calls returned: always
        the start of the content the whole answer parses to."""
        ...
