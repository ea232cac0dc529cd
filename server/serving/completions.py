"""POST /v1/completions: prepare → admit through the pipeline → shape as OpenAI's text completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from pydantic import BaseModel

from server.api.protocol import Completion, CompletionChoice, CompletionRequest
from server.engine.base import TextDelta
from server.serving import logprobs
from server.serving.prepare import completion_request
from server.serving.run import Admitted, ServingContext, admit
from server.serving.shape import Reply, new_id, now, usage


async def create(body: CompletionRequest, ctx: ServingContext) -> Reply[Completion]:
    admitted = await admit(ctx, "completions", body, lambda engine: completion_request(engine, body))
    rid, model = new_id("cmpl"), admitted.job.model.model_id
    headers = admitted.job.response_headers
    if body.stream:
        return Reply(headers, chunks=_chunks(admitted, rid, model, body))
    whole = await admitted.collect()
    lp = logprobs.completion(whole.logprobs, 0, bool(body.logprobs)) if body.logprobs is not None else None
    choice = CompletionChoice(index=0, text=whole.text, logprobs=lp, finish_reason=whole.finished.finish_reason)
    completion = Completion(id=rid, created=now(), model=model, choices=[choice], usage=usage(whole.finished))
    return Reply(headers, body=completion)


def _chunk(rid: str, model: str, choice: CompletionChoice) -> Completion:
    return Completion(id=rid, created=now(), model=model, choices=[choice])


async def _chunks(admitted: Admitted, rid: str, model: str, body: CompletionRequest) -> AsyncGenerator[BaseModel, None]:
    offset = 0
    async for event in admitted.events():
        if isinstance(event, TextDelta):
            lp = None
            if body.logprobs is not None:
                lp = logprobs.completion(event.logprobs, offset, bool(body.logprobs))
            offset += len(event.text)
            yield _chunk(rid, model, CompletionChoice(index=0, text=event.text, logprobs=lp, finish_reason=None))
        else:
            yield _chunk(rid, model, CompletionChoice(index=0, text="", finish_reason=event.finish_reason))
            if body.include_usage_in_stream():
                yield Completion(id=rid, created=now(), model=model, choices=[], usage=usage(event))
