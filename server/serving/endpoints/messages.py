"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, served as a chat completion (see
`messages_chat.py`) → admitted through the same pipeline → shaped as Anthropic's message or its stream events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from pydantic import BaseModel
from pydantic_core import from_json

from server.engine.base import Engine, Finished, FinishReason, GenerationEvent, TextDelta
from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split
from server.protocol.anthropic import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    CountTokensRequest,
    InputJsonDelta,
    Message,
    MessageDeltaBody,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    MessageTokensCount,
    MessageUsage,
    PingEvent,
    SignatureDelta,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from server.protocol.anthropic import TextDelta as TextDeltaBody
from server.serving.constrain.tools import formats as tools
from server.serving.constrain.tools.plan import CallBegun, CallEvent, ParsedCall
from server.serving.endpoints.field_names import MESSAGES, renamed_fields
from server.serving.endpoints.messages_chat import chat_body, prefilled
from server.serving.endpoints.prepare import chat_prompt, chat_request
from server.serving.endpoints.reasoning import split
from server.serving.endpoints.reply import Reply
from server.serving.endpoints.tool_answer import ToolAnswer
from server.serving.pipeline.admission import Admitted, Collected, ServingContext, admit
from server.serving.pipeline.stages import answer_prepared


async def create(body: MessagesRequest, ctx: ServingContext) -> Reply[Message]:
    chat, prefill = chat_body(body), prefilled(body)
    with renamed_fields(MESSAGES):
        admitted = await admit(
            ctx, "messages", chat, lambda engine: chat_request(engine, chat, prefill=prefill), model=body.model
        )
    tool_format = admitted.job.tool_format  # None when the answer is text
    reasoning = admitted.job.reasoning  # None when the output is all answer
    mid, model = f"msg_{uuid.uuid4().hex}", admitted.job.model.model_id
    headers = admitted.job.response_headers
    if body.stream:
        if tool_format is not None:
            chunks = _tool_events(admitted, mid, model, tool_format, reasoning)
            return Reply(headers, chunks=chunks, close=admitted.close, fail=admitted.fail)
        chunks = _text_events(admitted, mid, model, reasoning)
        return Reply(headers, chunks=chunks, close=admitted.close, fail=admitted.fail)

    async def shaped(whole: Collected) -> Message:
        choice = whole.choices[0]
        content, stop_reason = _content(split(reasoning, choice.text), choice.finish_reason, tool_format)
        return _message(mid, model, content, stop_reason, whole.finished)

    # Shaped before the generation closes (settle): a failure shaping it is the request's recorded outcome.
    return Reply(headers, body=await admitted.settle(shaped))


async def count_tokens(body: CountTokensRequest, ctx: ServingContext) -> Reply[MessageTokensCount]:
    """The prompt's tokens as /v1/messages would render them (template, tools and all), through the tokenizer path:
    the same key, model permission and request limit, without the model running."""
    chat, prefill = chat_body(body), prefilled(body)

    def run(engine: Engine) -> MessageTokensCount:
        prompt = chat_prompt(engine, chat, prefill=prefill).tokens
        return MessageTokensCount(input_tokens=len(prompt))

    with renamed_fields(MESSAGES):
        admitted = await admit(ctx, "messages.count_tokens", chat, run, model=body.model, terminal=answer_prepared)
        await admitted.finish()
    if not isinstance(admitted.job.prepared, MessageTokensCount):
        raise RuntimeError("the pipeline ended a count_tokens request without its count")
    return Reply(admitted.job.response_headers, body=admitted.job.prepared)


def _content(
    output: Split, finish_reason: FinishReason, tool_format: tools.ToolFormat | None
) -> tuple[list[ContentBlock], StopReason]:
    """The thinking block (a thinking model's), the text, then the calls parsed from the answer after the thinking."""
    answer = tool_format.parse(output.content) if tool_format is not None else None
    content_text = answer.content if answer is not None else output.content
    content: list[ContentBlock] = [ThinkingBlock(thinking=output.reasoning)] if output.reasoning else []
    if content_text:
        content.append(TextBlock(text=content_text))
    calls = answer.calls if answer is not None else ()
    content.extend(ToolUseBlock(id=_tool_use_id(c.id), name=c.name, input=_input(c)) for c in calls)
    return content, _stop_reason(finish_reason, bool(calls))


def _stop_reason(finish_reason: FinishReason, calls: bool) -> StopReason:
    if finish_reason == "length":  # a cut answer's calls may not be all of them, its last one's input cut too
        return "max_tokens"
    return "tool_use" if calls else "end_turn"


def _stop(reason: StopReason, finished: Finished) -> tuple[StopReason, str | None]:
    """A stop string ended the answer: Anthropic names it."""
    if reason == "end_turn" and finished.stop_sequence is not None:
        return "stop_sequence", finished.stop_sequence
    return reason, None


def _message(mid: str, model: str, content: list[ContentBlock], reason: StopReason, finished: Finished) -> Message:
    stop_reason, stop_sequence = _stop(reason, finished)
    return Message(
        id=mid,
        content=content,
        model=model,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=MessageUsage(input_tokens=finished.prompt_tokens, output_tokens=finished.completion_tokens),
    )


def _start(mid: str, model: str, admitted: Admitted) -> MessageStartEvent:
    usage = MessageUsage(input_tokens=admitted.job.prompt_tokens, output_tokens=0)
    return MessageStartEvent(message=Message(id=mid, content=[], model=model, stop_reason=None, usage=usage))


def _end(reason: StopReason, finished: Finished) -> list[BaseModel]:
    stop_reason, stop_sequence = _stop(reason, finished)
    delta = MessageDeltaBody(stop_reason=stop_reason, stop_sequence=stop_sequence)
    usage = MessageDeltaUsage(output_tokens=finished.completion_tokens)
    return [MessageDeltaEvent(delta=delta, usage=usage), MessageStopEvent()]


class _Blocks:
    """The streamed blocks: one open at a time, by kind; text after thinking closes the thinking block (with its
    empty signature, see ThinkingBlock) and opens a text block at the next index; each call opens a tool_use block
    once its name is written, its input then streams as JSON deltas."""

    def __init__(self) -> None:
        self.kind: type[ThinkingBlock] | type[TextBlock] | type[ToolUseBlock] | None = None
        self.index = -1

    def send(self, parts: Split) -> list[BaseModel]:
        out: list[BaseModel] = []
        if parts.reasoning:
            out += self._open(ThinkingBlock)
            out.append(ContentBlockDeltaEvent(index=self.index, delta=ThinkingDelta(thinking=parts.reasoning)))
        if parts.content:
            out += self._open(TextBlock)
            out.append(ContentBlockDeltaEvent(index=self.index, delta=TextDeltaBody(text=parts.content)))
        return out

    def call(self, events: list[CallEvent]) -> list[BaseModel]:
        out: list[BaseModel] = []
        for event in events:
            if isinstance(event, CallBegun):
                out += self.close()
                self.kind, self.index = ToolUseBlock, self.index + 1
                block = ToolUseBlock(id=_tool_use_id(event.id), name=event.name, input={})
                out.append(ContentBlockStartEvent(index=self.index, content_block=block))
            else:
                out.append(ContentBlockDeltaEvent(index=self.index, delta=InputJsonDelta(partial_json=event.text)))
        return out

    def close(self) -> list[BaseModel]:
        out: list[BaseModel] = []
        if self.kind is ThinkingBlock:
            out.append(ContentBlockDeltaEvent(index=self.index, delta=SignatureDelta(signature="")))
        if self.kind is not None:
            out.append(ContentBlockStopEvent(index=self.index))
        self.kind = None
        return out

    def _open(self, kind: type[ThinkingBlock] | type[TextBlock]) -> list[BaseModel]:
        if self.kind is kind:
            return []
        out = self.close()
        self.kind, self.index = kind, self.index + 1
        block = ThinkingBlock(thinking="") if kind is ThinkingBlock else TextBlock(text="")
        out.append(ContentBlockStartEvent(index=self.index, content_block=block))
        return out


async def _text_events(
    admitted: Admitted, mid: str, model: str, reasoning: ReasoningSyntax | None
) -> AsyncGenerator[BaseModel, None]:
    """As Anthropic streams text: a thinking block (a thinking model's), then one text block, each opened by its
    first delta (an empty answer has no block); the thinking is split from the text as it arrives."""
    blocks = _Blocks()
    splitter = ReasoningSplitter(reasoning) if reasoning is not None else None

    def translate(event: GenerationEvent) -> list[BaseModel]:
        out: list[BaseModel] = []
        if isinstance(event, TextDelta) and event.text:
            out += blocks.send(splitter.feed(event.text) if splitter is not None else Split(content=event.text))
        elif isinstance(event, Finished):
            if splitter is not None:
                out += blocks.send(splitter.finish())
            out += blocks.close()
            out.extend(_end("max_tokens" if event.finish_reason == "length" else "end_turn", event))
        return out

    async with aclosing(_translated(admitted, mid, model, translate)) as outs:
        async for out in outs:
            yield out


async def _translated(
    admitted: Admitted, mid: str, model: str, translate: Callable[[GenerationEvent], list[BaseModel]]
) -> AsyncGenerator[BaseModel, None]:
    """`message_start` and a ping, then what `translate` makes of each event. The events start before anything is
    sent: only a started generator returns its lease when closed. A client that stops reading closes the caller,
    which closes this (aclosing), and the events and the lease close with it at once; a failure in `translate` is
    the request's recorded outcome (`streaming`)."""
    async with admitted.streaming() as events:
        first = await anext(events)
        yield _start(mid, model, admitted)
        yield PingEvent()
        for out in translate(first):
            yield out
        async for event in events:
            for out in translate(event):
                yield out


async def _tool_events(
    admitted: Admitted, mid: str, model: str, tool_format: tools.ToolFormat, reasoning: ReasoningSyntax | None
) -> AsyncGenerator[BaseModel, None]:
    """A tool answer, streamed as Anthropic does: a thinking model's thinking block as it is decoded, then the text
    block, as the text before the calls is decoded where the format allows, then each call as a tool_use block once
    its name is written, its input as JSON deltas as the model writes it (`tool_answer.py`). The answer is parsed
    whole on the Finished event, while the events are open: a failure shaping it is the outcome."""
    blocks = _Blocks()
    held = ToolAnswer(reasoning, tool_format)
    finished: Finished | None = None

    def take(event: GenerationEvent) -> list[BaseModel]:
        nonlocal finished
        if isinstance(event, TextDelta):
            taken = held.feed(event.text)
            return [*blocks.send(Split(taken.reasoning, taken.content)), *blocks.call(taken.calls)]
        if isinstance(event, Finished):
            finished = event
            ending = held.finish()
            out = [*blocks.send(Split(ending.reasoning, ending.content)), *blocks.call(ending.calls), *blocks.close()]
            calls = ending.answer.calls if ending.answer is not None else ()
            return [*out, *_end(_stop_reason(event.finish_reason, bool(calls)), event)]
        return []

    async with aclosing(_translated(admitted, mid, model, take)) as outs:
        async for out in outs:
            yield out
    if finished is None:
        raise RuntimeError("the pipeline ended a generation without a Finished event")


def _tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _input(call: ParsedCall) -> dict[str, object]:
    """A call's input as an object: a call cut short by max_tokens gives what its arguments hold so far, as the SDKs
    read a stream's partial JSON."""
    try:
        value = from_json(call.arguments, allow_partial=not call.complete)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
