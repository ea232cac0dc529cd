"""POST /v1/completions: prepare → admit through the pipeline → shape as OpenAI's text completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from pydantic import BaseModel

from server.api.protocol import Completion, CompletionChoice, CompletionRequest
from server.engine.base import Finished, TextDelta
from server.serving.prepare import completion_request
from server.serving.run import Admitted, ServingContext, admit
from server.serving.shape import Reply, new_id, now, usage


async def create(body: CompletionRequest, ctx: ServingContext) -> Reply[Completion]:
    admitted = await admit(ctx, "completions", body, lambda engine: completion_request(engine, body))
    rid, model = new_id("cmpl"), admitted.job.model.model_id
    headers = admitted.job.response_headers
    if body.stream:
        return Reply(headers, chunks=_chunks(admitted, rid, model, body.include_usage_in_stream()))
    parts: list[str] = []
    async for event in admitted.events():
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            choice = CompletionChoice(index=0, text="".join(parts), finish_reason=event.finish_reason)
            return Reply(
                headers, body=Completion(id=rid, created=now(), model=model, choices=[choice], usage=usage(event))
            )
    raise RuntimeError("the pipeline ended a generation without a Finished event")


def _chunk(rid: str, model: str, text: str, finished: Finished | None, *, with_usage: bool = False) -> Completion:
    if with_usage and finished is not None:
        return Completion(id=rid, created=now(), model=model, choices=[], usage=usage(finished))
    reason = finished.finish_reason if finished else None
    return Completion(
        id=rid, created=now(), model=model, choices=[CompletionChoice(index=0, text=text, finish_reason=reason)]
    )


async def _chunks(admitted: Admitted, rid: str, model: str, include_usage: bool) -> AsyncGenerator[BaseModel, None]:
    async for event in admitted.events():
        if isinstance(event, TextDelta):
            yield _chunk(rid, model, event.text, None)
        else:
            yield _chunk(rid, model, "", event)
            if include_usage:
                yield _chunk(rid, model, "", event, with_usage=True)
