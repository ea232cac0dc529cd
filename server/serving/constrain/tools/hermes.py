"""Tool calls in the Hermes syntax, for models whose own chat template speaks it (Qwen 2.5/3, Hermes 2 Pro/3, ...).

The template is given the tools and the history in OpenAI's shape and describes them as its model was trained to see
them; the model calls tools with `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks, which are
parsed back into OpenAI tool calls, and reads results as role "tool" messages (its template wraps them in
`<tool_response>`). llama.cpp's server serves these templates the same way (`common/chat.cpp`, Hermes 2 Pro format).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from server.engine.chat_template import TemplateMessage, TemplateTool, TemplateToolCall
from server.engine.thinking import partial_suffix
from server.errors import APIError
from server.protocol.openai import ChatMessage
from server.serving.constrain.grammar import json_schema_rules
from server.serving.constrain.text_without import literal, text_without
from server.serving.constrain.tools.call_json import Calls
from server.serving.constrain.tools.plan import (
    CallEvent,
    ParsedAnswer,
    ParsedCall,
    TemplateInput,
    ToolPlan,
    decoded_arguments,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL_JSON = "hermes-call-json"  # the converter names the call schema's own rules after it


class HermesFormat:
    def template_input(self, messages: Sequence[ChatMessage], plan: ToolPlan | None) -> TemplateInput:
        tools: list[TemplateTool] | None = (
            [tool.model_dump(exclude_none=True) for tool in plan.tools] if plan is not None else None
        )
        return TemplateInput([_template_message(m) for m in messages], tools)

    def grammar(self, plan: ToolPlan) -> str:
        """One or more (`max_calls`) `<tool_call>` blocks whose JSON is a call to a chosen tool with valid arguments;
        with tool_choice "auto", free text first, and the calls optional.

        Not llama.cpp's lazy grammar (`llama_sampler_init_grammar_lazy_patterns`, which llama-cpp-python 0.3.36 does
        expose). A lazy grammar only wakes up once `<tool_call>` appears, and then feeds it the rest of the token
        that completed the trigger without checking it first: when that text does not parse (`>.` is one token in
        SmolLM2's vocabulary), llama.cpp throws a C++ exception through its C API, which terminates the process.
        Instead the text before the calls is part of the grammar, as "any text that does not contain `<tool_call>`":
        the same language as the lazy grammar's, and every token is checked before it is accepted, so the sampler's
        sample-first check (the grammar filters the whole vocabulary only when it refuses the sampled token) keeps
        working for it.
        """
        rules = {
            "root": "hermes-text-0" if plan.allows_content else "hermes-calls",
            "hermes-calls": _calls(plan.max_calls),
            "hermes-call": f"{literal(OPEN)} hermes-gap {_CALL_JSON} hermes-gap {literal(CLOSE)}",
            "hermes-gap": "[ \\t\\n]{0,4}",
        }
        if plan.allows_content:
            rules |= text_without(OPEN, prefix="hermes-text", then="hermes-calls", may_end=True)
        call_rules = json_schema_rules(plan.call_schema(), rule=_CALL_JSON, param="tools")
        clash = set(re.findall(r"^([a-zA-Z0-9-]+) ::=", call_rules, re.MULTILINE)) & rules.keys()
        if clash:
            raise APIError(
                400, f"a $defs name in the tools' parameters becomes the grammar rule {min(clash)!r}, which the tool "
                "call grammar needs; rename it", param="tools",
            )  # fmt: skip
        return call_rules + "\n" + "\n".join(f"{name} ::= {body}" for name, body in rules.items())

    def parse(self, text: str) -> ParsedAnswer:
        reader = self.call_reader()
        reader.feed(text)
        return reader.answer(text)

    def call_reader(self) -> HermesCalls:
        return HermesCalls()

    def content_stream(self) -> TextBeforeCalls:
        return TextBeforeCalls()


class TextBeforeCalls:
    """The grammar lets text come only before the first call, so the text up to `<tool_call>` is content as it is
    written. A tail that may be the start of the marker is held until it is whole or proves not to be, and trailing
    whitespace is held too (the parse drops it before a call); from the marker on, nothing is certain until the
    answer is parsed: a block cut short by max_tokens before its call's name is content after all, marker and all."""

    def __init__(self) -> None:
        self._held = ""  # written, not yet certain
        self._calls_began = False

    def feed(self, text: str) -> str:
        if self._calls_began:
            return ""
        pending = self._held + text
        found = pending.find(OPEN)
        if found >= 0:
            self._calls_began, self._held = True, ""
            return pending[:found].rstrip()
        certain = len(pending[: len(pending) - partial_suffix(pending, OPEN)].rstrip())
        self._held = pending[certain:]
        return pending[:certain]


class HermesCalls:
    """The calls of an answer as it is written: a call object (`CallJson`) in each `<tool_call>` block."""

    def __init__(self) -> None:
        self.first_call_at = 0  # where the first call's block starts in the answer
        self._calls = Calls()
        self._read = 0  # how much of the answer came before `_held`
        self._held = ""  # outside the blocks: a tail that may be the start of the marker
        self._block_at = 0

    def feed(self, text: str) -> list[CallEvent]:
        events: list[CallEvent] = []
        pending, at, base = self._held + text, 0, self._read
        while not self._calls.failed and at < len(pending):
            if not self._calls.reading:
                found = pending.find(OPEN, at)
                if found < 0:
                    at = len(pending) - partial_suffix(pending[at:], OPEN)
                    break
                self._calls.start()
                self._block_at, at = base + found, found + len(OPEN)
                continue
            before = len(self._calls)
            read, used = self._calls.feed(pending[at:])
            if before == 0 and len(self._calls) == 1:
                self.first_call_at = self._block_at
            events += read
            at += used
        # Past a block that is not a call nothing more is read, so nothing is held for it.
        self._held, self._read = "" if self._calls.failed else pending[at:], base + at
        return events

    def calls(self) -> tuple[ParsedCall, ...]:
        return self._calls.parsed()

    def answer(self, text: str) -> ParsedAnswer:
        """The calls read in the whole answer `text`, and its content: the text before the first call, less the
        whitespace it ends with (the grammar lets text come only there). A call whose name is written is a call,
        even one cut short by max_tokens (its arguments as far as they got, as OpenAI sends them); a block cut short
        before that, and an answer without calls, are content as written. So the text before the first call, less
        its trailing whitespace, starts the content either way: a stream sends it as it is written
        (`TextBeforeCalls`)."""
        calls = self.calls()
        if not calls:
            return ParsedAnswer(text, ())
        return ParsedAnswer(text[: self.first_call_at].rstrip() or None, calls)


def _calls(most: int) -> str:
    more = f" ( hermes-gap hermes-call ){{0,{most - 1}}}" if most > 1 else ""
    return f"hermes-call{more} hermes-gap"


def _template_message(message: ChatMessage) -> TemplateMessage:
    rendered: TemplateMessage = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        rendered["tool_calls"] = [
            TemplateToolCall(
                id=c.id,
                type="function",
                function={"name": c.function.name, "arguments": decoded_arguments(c.function.arguments)},
            )
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered
