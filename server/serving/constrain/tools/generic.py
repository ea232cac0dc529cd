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
from server.serving.constrain.tools.call_json import Calls
from server.serving.constrain.tools.plan import CallEvent, ParsedAnswer, ParsedCall, TemplateInput, ToolPlan


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
        reader = self.call_reader()
        reader.feed(text)
        return reader.answer(text)

    def call_reader(self) -> GenericCalls:
        return GenericCalls()

    def content_stream(self) -> ContentString:
        return ContentString()


_CALLS_START = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[')
_CALLS_OPENING = '{"tool_calls":['  # _CALLS_START without its whitespace
_CONTENT_START = re.compile(r'\s*\{\s*"content"\s*:\s*"')
_CONTENT_OPENING = '{"content":"'  # _CONTENT_START without its whitespace
_QUOTE_OR_ESCAPE = re.compile(r'["\\]')


class GenericCalls:
    """The calls of an answer as it is written: once it opens `{"tool_calls": [`, each call object in the array
    (`CallJson`), up to the array's end."""

    def __init__(self) -> None:
        self._calls = Calls()
        self._opening = ""  # the answer until it is known whether it calls tools
        self._in_array = False
        self._between = ""  # after a call: its object's close, then a comma (another call) or the array's end
        self._done = False

    def feed(self, text: str) -> list[CallEvent]:
        if self._done:
            return []
        if not self._in_array:
            self._opening += text
            opening = _CALLS_START.match(self._opening)
            if opening is None:
                self._done = not _CALLS_OPENING.startswith("".join(self._opening.split()))
                return []
            self._in_array, text = True, self._opening[opening.end() :]
            self._calls.start()
        events: list[CallEvent] = []
        at = 0
        while not self._done and at < len(text):
            if self._calls.reading:
                read, used = self._calls.feed(text[at:])
                events += read
                at += used
                self._done = self._calls.failed
                continue
            self._between += text[at]
            at += 1
            between = "".join(self._between.split())
            if between == "},":  # another call follows
                self._between = ""
                self._calls.start()
            elif between not in ("", "}"):  # the array's end (or what no grammar writes)
                self._done = True
        return events

    def calls(self) -> tuple[ParsedCall, ...]:
        return self._calls.parsed()

    def answer(self, text: str) -> ParsedAnswer | None:
        """The calls or content in the whole answer `text`; None when it is not the format at all. An answer cut
        short by max_tokens gives the calls it began (the last with its arguments as far as they got, as OpenAI
        sends them; its wrapper is never content), or the text of its content string so far."""
        if _CALLS_START.match(text) is not None:
            return ParsedAnswer(None, self.calls())
        if (start := _CONTENT_START.match(text)) is not None:
            try:
                answer = json.loads(text)
            except json.JSONDecodeError:
                return ParsedAnswer(_partial_string(text[start.end() :]), ())
            if isinstance(answer, dict) and isinstance(answer.get("content"), str):
                return ParsedAnswer(answer["content"], ())
        # Cut before the wrapper said which it is: nothing complete to give, and the wrapper is never content.
        return ParsedAnswer(None, ()) if text.lstrip().startswith("{") else None


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
