"""The items of a streamed Responses answer, each opened by its first text: a thinking model's reasoning item (its
reasoning_text deltas), then the message (its output_text part and deltas); `output` is what is done. A tool
answer's function calls follow, each opened once its name is written (`CallItems`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel

from server.protocol.responses import OutputText, ReasoningItem, ReasoningText
from server.protocol.responses_replies import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    FunctionCall,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from server.serving.constrain.tools.plan import CallBegun, CallEvent
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


class CallItems:
    """A tool answer's function calls, after the items of `text`: the first call closes them (the text before the
    calls is whole by then), each call's item opens once its name is written, its arguments stream as deltas, and
    it is done when the next call begins or the answer ends (`finish`)."""

    def __init__(self, text: TextItems) -> None:
        self.text = text
        self.output: list[FunctionCall] = []  # the calls done
        self._open: FunctionCall | None = None
        self._arguments: list[str] = []

    def take(self, events: list[CallEvent]) -> list[BaseModel]:
        out: list[BaseModel] = []
        for event in events:
            if isinstance(event, CallBegun):
                if self._open is None and not self.output:  # the first call: what came before it is done
                    out += self.text.done("completed") if self.text.message is not None else []
                    out += self.text.end_thinking("completed")
                out += self._close(complete=True)
                self._open = FunctionCall(id=items.item_id("function_call"), call_id=event.id, name=event.name,
                                          arguments="", status="in_progress")  # fmt: skip
                out.append(self._item("response.output_item.added", self._open))
            elif self._open is not None:
                self._arguments.append(event.text)
                out.append(ArgumentsDeltaEvent(sequence_number=next(self.text.sequence), item_id=self._open.id,
                                               output_index=self._index(), delta=event.text))  # fmt: skip
        return out

    def finish(self, *, complete: bool) -> list[BaseModel]:
        """The last call's item done: `complete`, its arguments' value ended (else max_tokens cut them)."""
        return self._close(complete=complete)

    def _close(self, *, complete: bool) -> list[BaseModel]:
        if self._open is None:
            return []
        arguments = "".join(self._arguments)
        status: Literal["completed", "incomplete"] = "completed" if complete else "incomplete"
        done = self._open.model_copy(update={"arguments": arguments, "status": status})
        out: list[BaseModel] = [
            ArgumentsDoneEvent(
                sequence_number=next(self.text.sequence),
                item_id=done.id,
                output_index=self._index(),
                name=done.name,
                arguments=arguments,
            ),
            self._item("response.output_item.done", done),
        ]
        self.output.append(done)
        self._open, self._arguments = None, []
        return out

    def _index(self) -> int:
        return len(self.text.output) + len(self.output)

    def _item(
        self, kind: Literal["response.output_item.added", "response.output_item.done"], item: FunctionCall
    ) -> OutputItemEvent:
        return OutputItemEvent(type=kind, sequence_number=next(self.text.sequence), output_index=self._index(),
                               item=item)  # fmt: skip


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
