"""What a chat template is given (messages and tools in OpenAI's shape), and which tool-call syntax it speaks.

Pure logic: the template itself is rendered by the model (`llama_model.py`), which hands a render function in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

# Tool-call syntaxes a chat template can carry, and that the serving layer knows how to prompt, constrain and parse.
# "hermes": calls written as `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks, results given
# back as role "tool" messages (Hermes 2 Pro / 3, Qwen 2.5 / 3 and the many models trained on their templates).
ToolSyntax = Literal["hermes"]
# The tags a Hermes call is written between.
HERMES_TAGS = ("<tool_call>", "</tool_call>")


class TemplateFunctionCall(TypedDict):
    name: str
    # A mapping when the arguments are a JSON object: templates write them with `tojson`, iterate them, or test
    # `is string` first; a string reaches the template only when it is not a JSON object.
    arguments: Mapping[str, Any] | str


class TemplateToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: TemplateFunctionCall


class TemplateMessage(TypedDict):
    role: str
    content: str  # "" for an assistant turn that only calls tools: templates concatenate it
    tool_calls: NotRequired[list[TemplateToolCall]]
    tool_call_id: NotRequired[str]


# A tool as OpenAI's API describes it: {"type": "function", "function": {"name", "description", "parameters"}}.
TemplateTool = Mapping[str, Any]

# Further variables a request gives the template (`chat_template_kwargs`), such as Qwen3's `enable_thinking`.
TemplateVariables = Mapping[str, Any]
# What the server itself gives every template: a request may not set them.
RESERVED_VARIABLES = frozenset(
    {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception", "strftime_now"}
    | {"functions", "function_call", "tool_choice"}
)

Render = Callable[[Sequence[TemplateMessage], Sequence[TemplateTool] | None], str]

# Templates that put <tool_call> around XML arguments rather than JSON (Qwen3-Coder, GLM 4.5): not Hermes.
_XML_ARGUMENTS = ("<function=", "<parameter=", "<arg_key>")
_PROBE_ARGUMENTS = {"probe_argument": "probe value"}
_PROBE_TOOL: TemplateTool = {
    "type": "function",
    "function": {
        "name": "probe_function",
        "description": "probe description",
        "parameters": {"type": "object", "properties": {"probe_argument": {"type": "string"}}},
    },
}
_PROBE: list[TemplateMessage] = [
    {"role": "user", "content": "probe question"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_probe",
                "type": "function",
                "function": {"name": "probe_function", "arguments": _PROBE_ARGUMENTS},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_probe", "content": "probe result"},
]
_CALL_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def detect_tool_syntax(source: str, render: Render) -> ToolSyntax | None:
    """The template's native tool-call syntax, or None when it has none the server knows.

    llama.cpp's server picks the Hermes format for any template whose source contains `<tool_call>`. That alone would
    also catch templates that wrap XML arguments in the same tag, so the source check only shortlists: a probe
    conversation is rendered, and the template counts as Hermes when it describes the tool and writes the earlier call
    back as a `<tool_call>` block holding `{"name": ..., "arguments": {...}}` JSON, the syntax its model was trained on.
    """
    if "<tool_call>" not in source or any(marker in source for marker in _XML_ARGUMENTS):
        return None
    try:
        rendered = render(_PROBE, [_PROBE_TOOL])
    except Exception:  # a template that cannot render the probe has no tool syntax we can use
        return None
    if "probe description" not in rendered:  # the tools were not described to the model
        return None
    for block in _CALL_BLOCK.findall(rendered):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            continue
        if call == {"name": "probe_function", "arguments": _PROBE_ARGUMENTS}:
            return "hermes"
    return None


@dataclass(frozen=True, slots=True)
class ReasoningSyntax:
    """How a model writes its thinking: a block between `open` and `close` at the start of its answer. With
    `starts_inside`, the template's generation prompt already opened the block, so the output begins inside it."""

    open: str = "<think>"
    close: str = "</think>"
    starts_inside: bool = False
    # The template reads `enable_thinking` (Qwen3, SmolLM3): false turns the thinking off. DeepSeek-R1's has no switch.
    switch: bool = False


# Marker pairs of the templates the server knows (Qwen3, DeepSeek-R1 and its distills, SmolLM3 all use <think>).
_REASONING_MARKERS = (("<think>", "</think>"),)
_PROBE_QUESTION: list[TemplateMessage] = [{"role": "user", "content": "probe question"}]


def output_tags(tool_syntax: ToolSyntax | None, reasoning: ReasoningSyntax | None) -> tuple[str, ...]:
    """The tags the server reads a model's output by: its thinking's and its tool calls'."""
    thinking = (reasoning.open, reasoning.close) if reasoning is not None else ()
    return thinking + (HERMES_TAGS if tool_syntax == "hermes" else ())


def detect_reasoning(source: str, render: Render) -> ReasoningSyntax | None:
    """The template's thinking markers, or None when it writes none. As llama.cpp's server does, the source is what
    says a model thinks (its template strips or writes back the block); rendering a question then tells whether the
    generation prompt opens the block itself (DeepSeek-R1's later templates, Qwen3 with thinking forced on)."""
    for open_, close in _REASONING_MARKERS:
        if close not in source:
            continue
        try:
            rendered = render(_PROBE_QUESTION, None)
        except Exception:  # a template that cannot render a plain question: thinking still splits from the output
            rendered = ""
        inside = rendered.rstrip().endswith(open_)
        return ReasoningSyntax(open_, close, starts_inside=inside, switch="enable_thinking" in source)
    return None
