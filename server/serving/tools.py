"""Tool calls in a generic, documented format that any chat model can follow.

The tools are described in a system message, and generation is constrained by a grammar to one JSON object:
`{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` to call tools, or `{"content": "..."}` to answer in text
(only allowed with `tool_choice: "auto"`). `"required"` and a named function leave only the calls in the grammar, and
each call's arguments are constrained by its function's parameter schema, so they always validate. This is how
llama.cpp's server serves models whose chat template has no tool syntax; ggufstack uses it for every model.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from server.api.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, Tool
from server.serving.errors import APIError
from server.serving.grammar import json_schema_grammar

_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request uses its tools: the instructions to add and the grammar the answer must match."""

    instructions: str
    grammar: str
    allows_content: bool


@dataclass(frozen=True, slots=True)
class ParsedCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    content: str | None
    calls: tuple[ParsedCall, ...]


def plan(body: ChatCompletionRequest) -> ToolPlan | None:
    """The tool plan of a request, or None when it generates plain text (no tools, or tool_choice "none")."""
    if body.tool_choice is not None and not body.tools:
        raise APIError(400, "tool_choice is only allowed when tools are specified", param="tool_choice")
    if not body.tools or body.tool_choice == "none":
        return None
    names = [tool.function.name for tool in body.tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise APIError(400, f"two tools are named {name!r}", param=f"tools[{i}].function.name")
    chosen = body.tools
    if isinstance(body.tool_choice, NamedToolChoice):
        chosen = [t for t in body.tools if t.function.name == body.tool_choice.function.name]
        if not chosen:
            raise APIError(
                400, f"tool_choice names {body.tool_choice.function.name!r}, which is not among the tools",
                param="tool_choice",
            )  # fmt: skip
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format cannot be combined with tools", param="response_format")
    allows_content = body.tool_choice in (None, "auto")
    calls = [_call_schema(tool, body.tools.index(tool)) for tool in chosen]
    schema_calls = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
        "maxItems": 8 if body.parallel_tool_calls else 1,
    }
    answer = {"type": "object", "properties": {"tool_calls": schema_calls}, "required": ["tool_calls"]}
    if allows_content:
        text = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
        answer = {"anyOf": [answer, text]}
    # Each function's parameters were checked on their own (errors name the tool); the whole only combines them.
    grammar = json_schema_grammar(answer, param="tools")
    return ToolPlan(_instructions(body.tools, chosen, allows_content), grammar, allows_content)


def _call_schema(tool: Tool, index: int) -> dict:
    parameters = tool.function.parameters or _NO_ARGUMENTS
    json_schema_grammar(parameters, param=f"tools[{index}].function.parameters")
    return {
        "type": "object",
        "properties": {"name": {"const": tool.function.name}, "arguments": parameters},
        "required": ["name", "arguments"],
    }


def _instructions(tools: list[Tool], chosen: list[Tool], allows_content: bool) -> str:
    described = [
        {"name": t.function.name, "description": t.function.description or "", "parameters": t.function.parameters}
        for t in tools
    ]
    lines = [
        "You can call these tools:",
        json.dumps(described, ensure_ascii=False),
        'To call tools, answer with only JSON: {"tool_calls": [{"name": "<tool name>", "arguments": {...}}]}.',
    ]
    if allows_content:
        lines.append('To answer without a tool, answer with only JSON: {"content": "<your answer>"}.')
    elif len(chosen) == 1:
        lines.append(f"You must call the tool {chosen[0].function.name}.")
    else:
        lines.append("You must call at least one tool.")
    return "\n".join(lines)


def render_messages(messages: list[ChatMessage], tool_plan: ToolPlan | None) -> list[dict[str, str]]:
    """Messages as the chat template takes them: tool calls and results written in the generic format, as plain
    user/assistant turns, since many templates accept no other roles."""
    rendered: list[dict[str, str]] = []
    if tool_plan is not None:
        rendered.append({"role": "system", "content": tool_plan.instructions})
    for message in messages:
        if message.role == "tool":
            rendered.append(
                {"role": "user", "content": f"Result of tool call {message.tool_call_id}: {message.text()}"}
            )
        elif message.tool_calls:
            calls = [{"name": c.function.name, "arguments": _loads(c.function.arguments)} for c in message.tool_calls]
            rendered.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
        else:
            rendered.append({"role": message.role, "content": message.text()})
    return _merge_system(rendered) if tool_plan is not None else rendered


def _merge_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """One leading system message: templates such as Gemma's accept no other."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + rest


def _loads(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def parse(text: str) -> ParsedAnswer | None:
    """The calls or content in a completed answer; None when it is not the format (cut short by max_tokens)."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(answer, dict) and isinstance(answer.get("tool_calls"), list):
        calls = tuple(
            ParsedCall(f"call_{uuid.uuid4().hex[:24]}", c["name"], json.dumps(c["arguments"], ensure_ascii=False))
            for c in answer["tool_calls"]
        )
        return ParsedAnswer(None, calls)
    if isinstance(answer, dict) and isinstance(answer.get("content"), str):
        return ParsedAnswer(answer["content"], ())
    return None
