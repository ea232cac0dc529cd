"""Which tool-call format a request is served in: the model's own, when its chat template has a tool syntax the
server knows (`server/engine/chat_template.py` detects it), else the generic one any model can follow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.engine.base import Engine
from server.errors import APIError
from server.protocol.openai import ChatMessage
from server.serving.constrain.tools.generic import GenericFormat
from server.serving.constrain.tools.hermes import HermesFormat
from server.serving.constrain.tools.plan import (
    CallReader,
    ContentStream,
    ParsedAnswer,
    TemplateInput,
    ToolPlan,
    check_parameters,
)


class ToolFormat(Protocol):
    def template_input(self, messages: Sequence[ChatMessage], plan: ToolPlan | None) -> TemplateInput:
        """The messages (and tools) the chat template renders; `plan` None: no tools offered, history only."""
        ...

    def grammar(self, plan: ToolPlan) -> str:
        """GBNF every answer matches: calls whose arguments validate, or text where the plan allows it."""
        ...

    def parse(self, text: str) -> ParsedAnswer | None:
        """The calls and content of a whole answer (one cut short too); None when it is not in the format at all."""
        ...

    def call_reader(self) -> CallReader:
        """A reader of one answer as it is written: its calls as they come, then (`answer`) the whole of it."""
        ...

    def content_stream(self) -> ContentStream:
        """A reader of one answer as it is written: the content it makes certain as it comes."""
        ...


GENERIC = GenericFormat()
HERMES = HermesFormat()


def format_for(engine: Engine) -> ToolFormat:
    return HERMES if engine.tool_syntax == "hermes" else GENERIC


def grammar(tool_format: ToolFormat, plan: ToolPlan) -> str:
    """The format's grammar for `plan`, converted once. Only when that fails is each chosen tool's parameter schema
    converted alone, so that the error names the tool at fault; a fault no single tool has is the tools' together."""
    try:
        return tool_format.grammar(plan)
    except APIError:
        check_parameters(plan)
        raise
