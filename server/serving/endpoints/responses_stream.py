"""The items of a streamed Responses text answer, each opened by its first text: a thinking model's reasoning item
(its reasoning_text deltas), then the message (its output_text part and deltas); `output` is what is done."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel

from server.protocol.responses import OutputText, ReasoningItem, ReasoningText
from server.protocol.responses_replies import (
    ContentPartEvent,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from server.serving.endpoints import responses_items as items


class TextItems:
    """The items of a streamed text answer, each opened by its first text: the reasoning item, then the message."""

    def __init__(self, sequence: Iterator[int]) -> None:
        self.sequence = sequence
        self.output: list[OutputItem] = []
        self.thinking: ReasoningItem | None = None
        self.thoughts: list[str] = []
        self.message: OutputMessage | None = None
        self.parts: list[str] = []

    def think(self, text: str) -> list[BaseModel]:
        if not text:
            return []
        out: list[BaseModel] = []
        if self.thinking is None:
            self.thinking = ReasoningItem(id=items.item_id("reasoning"), content=[], status="in_progress")
            out.append(self._item("response.output_item.added", self.thinking))
        self.thoughts.append(text)
        out.append(ReasoningDeltaEvent(sequence_number=next(self.sequence), item_id=self.thinking.id, output_index=0,
                                       delta=text))  # fmt: skip
        return out

    def say(self, text: str, *, open_anyway: bool = False) -> list[BaseModel]:
        """Answer text; with `open_anyway`, the message is opened even for none (a plain answer opens it at once,
        and every answer has one)."""
        out: list[BaseModel] = []
        if not text and not open_anyway:
            return out
        if self.message is None:
            out += self.end_thinking("completed")
            self.message = OutputMessage(id=items.item_id("message"), status="in_progress", content=[])
            out.append(self._item("response.output_item.added", self.message))
            empty = OutputText(type="output_text", text="")
            out.append(part_event("response.content_part.added", next(self.sequence), self.message.id, empty,
                                   len(self.output)))  # fmt: skip
        if text:
            self.parts.append(text)
            out.append(TextDeltaEvent(sequence_number=next(self.sequence), item_id=self.message.id,
                                      output_index=len(self.output), content_index=0, delta=text))  # fmt: skip
        return out

    def done(self, status: Literal["completed", "incomplete"]) -> list[BaseModel]:
        out = self.end_thinking(status) + self.say("", open_anyway=True)
        message, index, text = self.message, len(self.output), "".join(self.parts)
        if message is None:
            raise RuntimeError("say() opens the message")
        final = message.model_copy(update={"status": status, "content": [OutputText(type="output_text", text=text)]})
        out.append(TextDoneEvent(sequence_number=next(self.sequence), item_id=message.id, output_index=index,
                                 content_index=0, text=text))  # fmt: skip
        out.append(part_event("response.content_part.done", next(self.sequence), message.id, final.content[0], index))
        out.append(self._item("response.output_item.done", final))
        self.output.append(final)
        return out

    def end_thinking(self, status: Literal["completed", "incomplete"]) -> list[BaseModel]:
        """Close the reasoning item, if one is open and nothing follows it yet."""
        if self.thinking is None or self.output:
            return []
        text = "".join(self.thoughts)
        final = self.thinking.model_copy(update={"status": status, "content": [ReasoningText(text=text)]})
        done = ReasoningDoneEvent(sequence_number=next(self.sequence), item_id=final.id, output_index=0, text=text)
        closed = self._item("response.output_item.done", final)
        self.output.append(final)
        return [done, closed]

    def _item(
        self, kind: Literal["response.output_item.added", "response.output_item.done"], item: OutputItem
    ) -> OutputItemEvent:
        index = len(self.output)
        return OutputItemEvent(type=kind, sequence_number=next(self.sequence), output_index=index, item=item)


def part_event(
    kind: Literal["response.content_part.added", "response.content_part.done"],
    sequence_number: int,
    item_id: str,
    part: OutputText,
    output_index: int = 0,
) -> ContentPartEvent:
    return ContentPartEvent(
        type=kind,
        sequence_number=sequence_number,
        item_id=item_id,
        output_index=output_index,
        content_index=0,
        part=part,
    )
