"""POST /v1/chat/completions: render the chat template → admit through the pipeline → shape as OpenAI's chat
completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from pydantic import BaseModel

from server.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
)
from server.engine.base import TextDelta
from server.serving.prepare import chat_request
from server.serving.run import Admitted, ServingContext, admit
from server.serving.shape import Reply, new_id, now, usage


async def create(body: ChatCompletionRequest, ctx: ServingContext) -> Reply[ChatCompletion]:
    admitted = await admit(ctx, "chat.completions", body, lambda engine: chat_request(engine, body))
    rid, model = new_id("chatcmpl"), admitted.job.model.model_id
    headers = admitted.job.response_headers
    if body.stream:
        return Reply(headers, chunks=_chunks(admitted, rid, model, body.include_usage_in_stream()))
    parts: list[str] = []
    async for event in admitted.events():
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            choice = ChatChoice(
                index=0, message=AssistantMessage(content="".join(parts)), finish_reason=event.finish_reason
            )
            completion = ChatCompletion(id=rid, created=now(), model=model, choices=[choice], usage=usage(event))
            return Reply(headers, body=completion)
    raise RuntimeError("the pipeline ended a generation without a Finished event")


async def _chunks(admitted: Admitted, rid: str, model: str, include_usage: bool) -> AsyncGenerator[BaseModel, None]:
    first = True
    async for event in admitted.events():
        delta = ChatDelta(role="assistant") if first else ChatDelta()
        first = False
        if isinstance(event, TextDelta):
            delta.content = event.text
            choice = ChatChunkChoice(index=0, delta=delta, finish_reason=None)
        else:
            choice = ChatChunkChoice(index=0, delta=delta, finish_reason=event.finish_reason)
        yield ChatCompletionChunk(id=rid, created=now(), model=model, choices=[choice])
        if include_usage and not isinstance(event, TextDelta):
            yield ChatCompletionChunk(id=rid, created=now(), model=model, choices=[], usage=usage(event))
