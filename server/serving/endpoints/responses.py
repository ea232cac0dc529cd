"""POST /v1/responses (OpenAI's Responses API) as a chat completion: the input items (after those
`previous_response_id` chains in) become chat messages → the chat preparation and the whole pipeline → output items,
kept for `GET /v1/responses/{id}` and continuations unless `store: false`. Streams the Responses event sequence."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from server.engine.base import Finished, FinishReason, GenerationEvent, TextDelta
from server.engine.chat_template import ReasoningSyntax
from server.engine.thinking import ReasoningSplitter, Split
from server.errors import known_error
from server.protocol.responses import (
    ResponseRequest,
    TextConfig,
)
from server.protocol.responses_replies import (
    IncompleteDetails,
    LifecycleEvent,
    OutputItem,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from server.serving.constrain.tools.formats import ToolFormat
from server.serving.endpoints import responses_conversation as conversation
from server.serving.endpoints import responses_items as items
from server.serving.endpoints.field_names import RESPONSES, renamed_fields
from server.serving.endpoints.reasoning import split
from server.serving.endpoints.reply import Reply
from server.serving.endpoints.responses_conversation import Conversation
from server.serving.endpoints.responses_stream import CallItems, TextItems
from server.serving.endpoints.tool_answer import ToolAnswer
from server.serving.pipeline.admission import Admitted, Collected, ServingContext, admit
from server.serving.pipeline.stages import Events
from server.store.errors import StoreUnavailableError
from server.store.responses import ResponseStore, StoredResponse, json_size

log = logging.getLogger(__name__)


@dataclass
class _Draft:
    """One response on its way: what it echoes of the request, and where it is kept."""

    body: ResponseRequest
    model: str
    store: ResponseStore
    owner: str
    conversation: Conversation  # what it continues and its own input, kept with it
    reasoning: ReasoningSyntax | None  # the job's: how the answer's thinking is split off
    tool_format: ToolFormat | None  # the job's: the format calls are parsed in (None: the answer is text)
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def response(
        self,
        status: ResponseStatus,
        output: list[OutputItem],
        finished: Finished | None = None,
        error: ResponseError | None = None,
    ) -> ResponseObject:
        body = self.body
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            completed_at=int(time.time()) if status == "completed" else None,
            status=status,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=self.model,
            output=output,
            parallel_tool_calls=body.parallel_tool_calls,
            previous_response_id=body.previous_response_id,
            temperature=body.temperature,
            top_p=body.top_p,
            tool_choice=body.tool_choice or "auto",
            tools=body.tools or [],
            text=body.text or TextConfig(),
            usage=_usage(finished) if finished is not None else None,
            user=body.user,
            metadata=body.metadata or {},
            store=self.stores,
        )

    def finished(self, output: list[OutputItem], finished: Finished, reason: FinishReason) -> ResponseObject:
        return self.response("completed" if reason == "stop" else "incomplete", output, finished)

    @property
    def stores(self) -> bool:
        """Whether this response is kept: the request asked, and the server keeps responses at all."""
        return self.body.store and self.store.keeps

    async def kept(self, whole: Collected) -> ResponseObject:
        """The response to a whole generation, kept where it is stored."""
        choice = whole.choices[0]
        output = items.output_items(split(self.reasoning, choice.text), choice.finish_reason, self.tool_format)
        response = self.finished(output, whole.finished, choice.finish_reason)
        await self.keep(response)
        return response

    async def keep(self, response: ResponseObject) -> None:
        if not self.stores:
            return
        kept = response.model_dump(mode="json", by_alias=True)
        talk = self.conversation
        size = talk.size + json_size(kept["output"])
        stored = StoredResponse(
            self.id,
            self.owner,
            float(self.created_at),
            kept,
            talk.input_items,
            talk.context,
            size,
            previous_id=self.body.previous_response_id,
        )
        try:
            await self.store.save(stored)
        except StoreUnavailableError as exc:
            raise items.unavailable(exc) from None


def _usage(finished: Finished) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=finished.prompt_tokens,
        output_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


async def create(body: ResponseRequest, ctx: ServingContext, store: ResponseStore) -> Reply[ResponseObject]:
    preparation = conversation.Preparation(body, store, ctx.caller)
    with renamed_fields(RESPONSES):
        admitted = await admit(ctx, "responses", body, preparation, model=body.model, lookup=preparation.read)
    job = admitted.job
    owner = items.owner_of(ctx.caller)
    talk = preparation.conversation
    draft = _Draft(body, job.model.model_id, store, owner, talk, job.reasoning, job.tool_format)
    headers = job.response_headers
    if body.stream:
        chunks = _events(admitted, draft)
        return Reply(headers, chunks=chunks, event_names=True, close=admitted.close, fail=admitted.fail)
    return Reply(headers, body=await admitted.settle(draft.kept))


async def _events(admitted: Admitted, draft: _Draft) -> AsyncGenerator[BaseModel, None]:
    sequence = itertools.count()
    # Started before the first yield: a client that leaves after `response.created` closes the events (and returns the
    # lease) with this generator; events never started would keep the lease until the garbage collector came by.
    async with aclosing(admitted.events()) as events:
        first = await anext(events)
        yield LifecycleEvent(
            type="response.created", sequence_number=next(sequence), response=draft.response("in_progress", [])
        )
        yield LifecycleEvent(
            type="response.in_progress", sequence_number=next(sequence), response=draft.response("in_progress", [])
        )
        answer = _streamed_text if admitted.job.tool_format is None else _tool_answer
        try:
            async with aclosing(answer(_chain(first, events), admitted, draft, sequence)) as stream:
                async for event in stream:
                    yield event
        except Exception as exc:  # the headers are gone: the failure is the stream's last event, as OpenAI sends it
            admitted.job.reply_error = exc  # recorded as the outcome: a response that could not be kept failed
            known = known_error(exc)
            if known is None:
                log.exception("a streamed response failed", exc_info=exc)
            message = known.message if known is not None else "internal error while generating the response"
            failed = draft.response("failed", [], error=ResponseError(code="server_error", message=message))
            yield LifecycleEvent(type="response.failed", sequence_number=next(sequence), response=failed)


async def _chain(first: GenerationEvent, rest: Events) -> Events:
    yield first
    async for event in rest:
        yield event


async def _streamed_text(
    events: Events, admitted: Admitted, draft: _Draft, sequence: Iterator[int]
) -> AsyncGenerator[BaseModel, None]:
    """A text answer streams as the engine decodes it: a thinking model's thinking first, as a reasoning item and its
    reasoning_text deltas (split as the text arrives), then one message item, one output_text part, its deltas."""
    splitter = ReasoningSplitter(admitted.job.reasoning) if admitted.job.reasoning is not None else None
    stream = TextItems(sequence)
    if splitter is None:
        for out in stream.say("", open_anyway=True):
            yield out
    async for event in events:
        if isinstance(event, TextDelta):
            parts = splitter.feed(event.text) if splitter is not None else Split(content=event.text)
            for out in [*stream.think(parts.reasoning), *stream.say(parts.content)]:
                yield out
        elif isinstance(event, Finished):
            rest = splitter.finish() if splitter is not None else Split()
            for out in [*stream.think(rest.reasoning), *stream.say(rest.content)]:
                yield out
            status: Literal["completed", "incomplete"] = "completed" if event.finish_reason == "stop" else "incomplete"
            for out in stream.done(status):
                yield out
            yield await _final(draft, stream.output, event, event.finish_reason, sequence)


async def _tool_answer(
    events: Events, admitted: Admitted, draft: _Draft, sequence: Iterator[int]
) -> AsyncGenerator[BaseModel, None]:
    """An answer that may hold tool calls: a thinking model's reasoning item streams as it is decoded, then the
    message, as the text before the calls is decoded where the format allows, then each function call once its name
    is written, its arguments as the model writes them (`tool_answer.py`); the answer is parsed whole at the end."""
    tool_format = admitted.job.tool_format
    if tool_format is None:
        raise RuntimeError("a tool answer without a tool format")
    held = ToolAnswer(admitted.job.reasoning, tool_format)
    stream = TextItems(sequence)
    calls = CallItems(stream)
    finished: Finished | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            taken = held.feed(event.text)
            for out in [*stream.think(taken.reasoning), *stream.say(taken.content), *calls.take(taken.calls)]:
                yield out
        elif isinstance(event, Finished):
            finished = event
    if finished is None:
        raise RuntimeError("the pipeline ended a generation without a Finished event")
    ending = held.finish()
    status: Literal["completed", "incomplete"] = "completed" if finished.finish_reason == "stop" else "incomplete"
    parsed = ending.answer.calls if ending.answer is not None else ()
    ending_out = [*stream.think(ending.reasoning), *stream.say(ending.content), *calls.take(ending.calls)]
    if parsed:  # the items before the calls closed when the first call began
        ending_out += calls.finish(complete=parsed[-1].complete)
    else:  # every answer without calls has a message, if only an empty one
        ending_out += stream.done(status)
    for out in ending_out:
        yield out
    yield await _final(draft, [*stream.output, *calls.output], finished, finished.finish_reason, sequence)


async def _final(
    draft: _Draft, output: list[OutputItem], finished: Finished, reason: FinishReason, sequence: Iterator[int]
) -> LifecycleEvent:
    response = draft.finished(output, finished, reason)
    # Kept before the client hears it is done: a continuation sent at once finds it.
    await draft.keep(response)
    kind: Literal["response.completed", "response.incomplete"] = (
        "response.completed" if response.status == "completed" else "response.incomplete"
    )
    return LifecycleEvent(type=kind, sequence_number=next(sequence), response=response)
