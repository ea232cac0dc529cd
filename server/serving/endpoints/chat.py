"""POST /v1/chat/completions: plan tools, render the chat template → admit through the pipeline → shape as OpenAI's
chat completion (text, or tool calls in the model's own format or the generic one, see `server/serving/tools.py`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator

from pydantic import BaseModel

from server.engine.base import ChoiceFinished, Finished, FinishReason, TextDelta, TokenLogprob
from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split
from server.protocol.openai import ChatCompletionRequest, ToolCall, ToolCallFunction
from server.protocol.openai_replies import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatFinishReason,
    ChatLogprobs,
    ToolCallDelta,
    ToolCallFunctionDelta,
)
from server.serving.constrain.tools import formats as tools
from server.serving.constrain.tools.plan import CallBegun, CallEvent, ParsedAnswer
from server.serving.endpoints import logprobs
from server.serving.endpoints.prepare import chat_request
from server.serving.endpoints.reasoning import split
from server.serving.endpoints.reply import Reply, new_id, now, usage
from server.serving.endpoints.tool_answer import ToolAnswer
from server.serving.pipeline.admission import Admitted, Collected, ServingContext, admit


async def create(body: ChatCompletionRequest, ctx: ServingContext) -> Reply[ChatCompletion]:
    # Planning tools, rendering and compiling the grammar: the preparation, which runs after the limits, off the loop.
    admitted = await admit(ctx, "chat.completions", body, lambda engine: chat_request(engine, body), model=body.model)
    tool_format = admitted.job.tool_format  # decided by the preparation: None when the answer is text
    reasoning = admitted.job.reasoning  # likewise: None when the output is all answer
    rid, model = new_id("chatcmpl"), admitted.job.model.model_id
    headers = admitted.job.response_headers
    if body.stream:
        if tool_format is not None:
            chunks = _tool_chunks(admitted, rid, model, body, tool_format, reasoning)
            return Reply(headers, chunks=chunks, close=admitted.close, fail=admitted.fail)
        chunks = _text_chunks(admitted, rid, model, body, reasoning)
        return Reply(headers, chunks=chunks, close=admitted.close, fail=admitted.fail)

    async def shaped(whole: Collected) -> ChatCompletion:
        choices = []
        for c in whole.choices:
            message, reason = _message(split(reasoning, c.text), c.finish_reason, tool_format)
            lp = ChatLogprobs(content=logprobs.chat(c.logprobs)) if body.logprobs else None
            choices.append(ChatChoice(index=c.index, message=message, logprobs=lp, finish_reason=reason))
        return ChatCompletion(id=rid, created=now(), model=model, choices=choices, usage=usage(whole.finished))

    # Shaped before the generation closes (settle): a failure shaping it is the request's recorded outcome.
    return Reply(headers, body=await admitted.settle(shaped))


def _message(
    output: Split, finish_reason: FinishReason, tool_format: tools.ToolFormat | None
) -> tuple[AssistantMessage, ChatFinishReason]:
    """The message for one choice: tool calls are parsed from the answer after the thinking, never from it."""
    answer = tool_format.parse(output.content) if tool_format is not None else None
    return _parsed_message(output.reasoning, answer, output.content, finish_reason)


def _parsed_message(
    thinking: str, answer: ParsedAnswer | None, text: str, finish_reason: FinishReason
) -> tuple[AssistantMessage, ChatFinishReason]:
    if answer is None:
        return AssistantMessage(content=text, reasoning_content=thinking or None), finish_reason
    if answer.calls:
        calls = [ToolCall(id=c.id, function=ToolCallFunction(name=c.name, arguments=c.arguments)) for c in answer.calls]
        # An answer cut short by max_tokens may have more calls to come, and its last call's arguments be cut too:
        # "length" says so.
        reason: ChatFinishReason = "tool_calls" if finish_reason == "stop" else finish_reason
        return AssistantMessage(content=answer.content, reasoning_content=thinking or None, tool_calls=calls), reason
    return AssistantMessage(content=answer.content, reasoning_content=thinking or None), finish_reason


def _chunk(
    rid: str,
    model: str,
    index: int,
    delta: ChatDelta,
    reason: ChatFinishReason | None,
    lp: ChatLogprobs | None = None,
) -> ChatCompletionChunk:
    choice = ChatChunkChoice(index=index, delta=delta, logprobs=lp, finish_reason=reason)
    return ChatCompletionChunk(id=rid, created=now(), model=model, choices=[choice])


def _usage_chunk(rid: str, model: str, finished: Finished) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=rid, created=now(), model=model, choices=[], usage=usage(finished))


async def _text_chunks(
    admitted: Admitted, rid: str, model: str, body: ChatCompletionRequest, reasoning: ReasoningSyntax | None
) -> AsyncGenerator[BaseModel, None]:
    """As OpenAI streams: a choice's first chunk carries the role, its last the finish reason; with n > 1 the
    choices' chunks interleave, told apart by `index`. A thinking model's deltas are split as they arrive
    (`delta.reasoning_content`, then `delta.content`); logprobs of text held back ride on the next chunk sent."""
    started: set[int] = set()
    ended: set[int] = set()
    splitters: dict[int, ReasoningSplitter] = {}
    held_logprobs: dict[int, list[TokenLogprob]] = {}

    def delta(index: int) -> ChatDelta:
        first = index not in started
        started.add(index)
        return ChatDelta(role="assistant") if first else ChatDelta()

    def split_chunks(index: int, parts: Split) -> list[ChatCompletionChunk]:
        chunks, held = [], held_logprobs.get(index, [])
        for d in _deltas(parts, delta, index):
            lp = ChatLogprobs(content=logprobs.chat(tuple(held))) if body.logprobs else None
            held.clear()
            chunks.append(_chunk(rid, model, index, d, None, lp))
        return chunks

    def rest(index: int) -> list[ChatCompletionChunk]:
        """What a choice's splitter still held when its output ended (an unclosed block, a marker's start)."""
        splitter = splitters.pop(index, None)
        return split_chunks(index, splitter.finish()) if splitter is not None else []

    # A client that stops reading closes this generator; the events (and the lease) close with it at once, not when
    # the garbage collector finds them.
    async with admitted.streaming() as events:
        async for event in events:
            if isinstance(event, TextDelta):
                if reasoning is None:
                    d = delta(event.index)
                    d.content = event.text
                    lp = ChatLogprobs(content=logprobs.chat(event.logprobs)) if body.logprobs else None
                    yield _chunk(rid, model, event.index, d, None, lp)
                    continue
                held_logprobs.setdefault(event.index, []).extend(event.logprobs)
                splitter = splitters.setdefault(event.index, ReasoningSplitter(reasoning))
                for chunk in split_chunks(event.index, splitter.feed(event.text)):
                    yield chunk
            elif isinstance(event, ChoiceFinished):
                ended.add(event.index)
                for chunk in rest(event.index):
                    yield chunk
                yield _chunk(rid, model, event.index, delta(event.index), event.finish_reason)
            else:
                for index in range(body.n):
                    if index not in ended:
                        for chunk in rest(index):
                            yield chunk
                        yield _chunk(rid, model, index, delta(index), event.finish_reason)
                if body.include_usage_in_stream():
                    yield _usage_chunk(rid, model, event)


def _deltas(parts: Split, delta: Callable[[int], ChatDelta], index: int) -> Iterator[ChatDelta]:
    if parts.reasoning:
        d = delta(index)
        d.reasoning_content = parts.reasoning
        yield d
    if parts.content:
        d = delta(index)
        d.content = parts.content
        yield d


async def _tool_chunks(
    admitted: Admitted,
    rid: str,
    model: str,
    body: ChatCompletionRequest,
    tool_format: tools.ToolFormat,
    reasoning: ReasoningSyntax | None,
) -> AsyncGenerator[BaseModel, None]:
    """A tool answer: a thinking model's thinking streams as it is decoded (`delta.reasoning_content`), and so does
    the text before the calls where the format allows (`delta.content`), then each call as OpenAI streams it: its
    id and name once the name is written, then its arguments in pieces as they are written (`tool_answer.py`). Each
    choice's answer is parsed whole when that choice ends, for what is left and its finish reason."""
    held = [ToolAnswer(reasoning, tool_format) for _ in range(body.n)]
    started: set[int] = set()
    ended: set[int] = set()

    def first(index: int) -> ChatDelta:
        opening = index not in started
        started.add(index)
        return ChatDelta(role="assistant") if opening else ChatDelta()

    def pieces(index: int, parts: Split, calls: list[CallEvent]) -> Iterator[ChatCompletionChunk]:
        for d in _deltas(parts, first, index):
            yield _chunk(rid, model, index, d, None)
        for event in calls:
            d = first(index)
            if isinstance(event, CallBegun):
                function = ToolCallFunctionDelta(name=event.name, arguments="")
                d.tool_calls = [ToolCallDelta(index=event.index, id=event.id, type="function", function=function)]
            else:
                d.tool_calls = [ToolCallDelta(index=event.index, function=ToolCallFunctionDelta(arguments=event.text))]
            yield _chunk(rid, model, index, d, None)

    def answer(index: int, finish_reason: FinishReason) -> Iterator[ChatCompletionChunk]:
        ended.add(index)
        ending = held[index].finish()
        _, reason = _parsed_message("", ending.answer, ending.whole, finish_reason)
        yield from pieces(index, Split(ending.reasoning, ending.content), ending.calls)
        if index not in started:
            yield _chunk(rid, model, index, first(index), None)
        yield _chunk(rid, model, index, ChatDelta(), reason)

    finished = False
    # Each answer is shaped while the events are open, so a failure shaping one is the request's outcome.
    async with admitted.streaming() as events:
        async for event in events:
            if isinstance(event, TextDelta):
                taken = held[event.index].feed(event.text)
                for chunk in pieces(event.index, Split(taken.reasoning, taken.content), taken.calls):
                    yield chunk
            elif isinstance(event, ChoiceFinished):  # n > 1: a choice that ended need not wait for the others
                for chunk in answer(event.index, event.finish_reason):
                    yield chunk
            else:
                finished = True
                for index in range(body.n):
                    if index not in ended:
                        for chunk in answer(index, event.finish_reason):
                            yield chunk
                if body.include_usage_in_stream():
                    yield _usage_chunk(rid, model, event)
        if not finished:
            raise RuntimeError("the pipeline ended a generation without a Finished event")
