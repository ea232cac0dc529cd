"""Tool calls in a generic, documented format that any chat model can follow.

The tools are described in a system message, and generation is constrained by a grammar to one JSON object:
`{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` to call tools, or `{"content": "..."}` to answer in text
(only allowed with `tool_choice: "auto"`). This is how llama.cpp's server serves models whose chat template has no
tool syntax; ggufstack uses it for every model whose template has none it knows (`server/serving/tools.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from server.engine.chat_template import TemplateMessage
from server.protocol.base import body_fault
from server.protocol.openai import ChatMessage
from server.serving.constrain.grammar import json_schema_grammar
from server.serving.constrain.tools.plan import ParsedAnswer, ParsedCall, TemplateInput, ToolPlan, new_call_id


class GenericFormat:
    def template_input(self, messages: Sequence[ChatMessage], plan: ToolPlan | None) -> TemplateInput:
        """Messages as any template takes them: the tools described in a system message, tool calls and results
        written in the generic format as plain user/assistant turns, since many templates accept no other roles."""
        rendered: list[TemplateMessage] = []
        if plan is not None:
            rendered.append({"role": "system", "content": _instructions(plan)})
        for message in messages:
            if message.role == "tool":
                rendered.append(
                    {"role": "user", "content": f"Result of tool call {message.tool_call_id}: {message.text()}"}
                )
            elif message.tool_calls:
                calls = [
                    {"name": c.function.name, "arguments": _loads(c.function.arguments)} for c in message.tool_calls
                ]
                answer = json.dumps({"tool_calls": calls}, ensure_ascii=False)
                rendered.append({"role": "assistant", "content": answer})
            else:
                rendered.append({"role": message.role, "content": message.text()})
        return TemplateInput(_merge_system(rendered) if plan is not None else rendered)

    def grammar(self, plan: ToolPlan) -> str:
        schema_calls: dict[str, Any] = {
            "type": "array",
            "items": plan.call_schema(),
            "minItems": 1,
            "maxItems": plan.max_calls,
        }
        answer: dict[str, Any] = {
            "type": "object",
            "properties": {"tool_calls": schema_calls},
            "required": ["tool_calls"],
        }
        if plan.allows_content:
            text = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
            answer = {"anyOf": [answer, text]}
        return json_schema_grammar(answer, param="tools")

    def parse(self, text: str) -> ParsedAnswer | None:
        """The calls or content in an answer; one cut short by max_tokens gives the calls it completed (its wrapper
        is never content); None when the text is not the format at all."""
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            return _cut_short(text)
        if isinstance(answer, dict) and isinstance(answer.get("tool_calls"), list):
            return ParsedAnswer(None, tuple(_call(c) for c in answer["tool_calls"]))
        if isinstance(answer, dict) and isinstance(answer.get("content"), str):
            return ParsedAnswer(answer["content"], ())
        return None

    def content_stream(self) -> ContentString:
        return ContentString()


_CALLS_START = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[\s*')
_CONTENT_START = re.compile(r'\s*\{\s*"content"\s*:\s*"')
_DECODER = json.JSONDecoder()
_CONTENT_OPENING = '{"content":"'  # _CONTENT_START without its whitespace
_QUOTE_OR_ESCAPE = re.compile(r'["\\]')


class ContentString:
    """An answer that opens `{"content": "` is a JSON string being written: its text is content as its characters
    and escapes complete (an escape cut between tokens waits for its rest, a surrogate escape for its pair, which
    decode to one character), up to the string's closing quote. An answer that calls tools has no content."""

    def __init__(self) -> None:
        self._raw = ""  # written, not yet decoded: the opening until it is whole, then the string's rest
        self._in_string = False
        self._done = False

    def feed(self, text: str) -> str:
        if self._done:
            return ""
        self._raw += text
        if not self._in_string:
            opening = _CONTENT_START.match(self._raw)
            if opening is None:
                self._done = not _CONTENT_OPENING.startswith("".join(self._raw.split()))
                return ""
            self._in_string, self._raw = True, self._raw[opening.end() :]
        end = self._decodable_end()
        try:
            decoded: str = json.loads('"' + self._raw[:end] + '"')
        except json.JSONDecodeError:  # not JSON after all (the grammar allows none): the parse will say what it is
            self._done = True
            return ""
        self._raw = self._raw[end:]
        return decoded

    def _decodable_end(self) -> int:
        """Where the string's whole characters end in `_raw`; the closing quote, once written, ends the string."""
        raw, at = self._raw, 0
        while (found := _QUOTE_OR_ESCAPE.search(raw, at)) is not None:
            start = found.start()
            if found.group() == '"':
                self._done = True
                return start
            size = 6 if raw[start + 1 : start + 2] == "u" else 2
            if size == 6 and "d800" <= raw[start + 2 : start + 6].lower() <= "dbff":  # a pair's high half
                if raw[start + 6 : start + 8] == "\\u":
                    size = 12
                elif len(raw) < start + 8:
                    return start  # its low half may follow
            if len(raw) < start + size:
                return start
            at = start + size
        return len(raw)


def _call(value: dict[str, object]) -> ParsedCall:
    return ParsedCall(new_call_id(), str(value["name"]), json.dumps(value["arguments"], ensure_ascii=False))


def _cut_short(text: str) -> ParsedAnswer | None:
    """An answer the grammar was still writing when max_tokens ended it: the calls it finished, or its text so far."""
    if (start := _CALLS_START.match(text)) is not None:
        calls: list[ParsedCall] = []
        at = start.end()
        while True:
            try:
                value, at = _DECODER.raw_decode(text, at)
            except json.JSONDecodeError:
                break
            if not isinstance(value, dict) or "name" not in value or "arguments" not in value:
                break
            calls.append(_call(value))
            rest = text[at:].lstrip()
            if not rest.startswith(","):
                break
            at = len(text) - len(rest) + 1
            at += len(text[at:]) - len(text[at:].lstrip())
        return ParsedAnswer(None, tuple(calls))
    if (start := _CONTENT_START.match(text)) is not None:
        return ParsedAnswer(_partial_string(text[start.end() :]), ())
    # Cut before the wrapper said which it is: nothing complete to give, and the wrapper is never content.
    return ParsedAnswer(None, ()) if text.lstrip().startswith("{") else None


def _partial_string(body: str) -> str:
    """The text of a JSON string whose closing quote never came (an escape cut in half is dropped)."""
    for end in range(len(body), max(len(body) - 12, -1), -1):
        try:
            # A JSON text that opens with a quote is a string or no JSON at all.
            text: str = json.loads(f'"{body[:end]}"')
            return text
        except json.JSONDecodeError:
            continue
    return ""


def _instructions(plan: ToolPlan) -> str:
    described = [
        {"name": t.function.name, "description": t.function.description or "", "parameters": t.function.parameters}
        for t in plan.tools
    ]
    lines = [
        "You can call these tools:",
        json.dumps(described, ensure_ascii=False),
        'To call tools, answer with only JSON: {"tool_calls": [{"name": "<tool name>", "arguments": {...}}]}.',
    ]
    if plan.allows_content:
        lines.append('To answer without a tool, answer with only JSON: {"content": "<your answer>"}.')
    elif len(plan.chosen) == 1:
        lines.append(f"You must call the tool {plan.chosen[0].function.name}.")
    else:
        lines.append("You must call at least one tool.")
    return "\n".join(lines)


def _merge_system(messages: list[TemplateMessage]) -> list[TemplateMessage]:
    """One leading system message: templates such as Gemma's accept no other."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return ([TemplateMessage(role="system", content="\n\n".join(system))] if system else []) + rest


def _loads(arguments: str) -> object:
    """The arguments' JSON value; the text itself when they are not JSON, or nest deeper than a request body may."""
    try:
        decoded = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError):
        return arguments
    return decoded if body_fault(decoded) is None else arguments
