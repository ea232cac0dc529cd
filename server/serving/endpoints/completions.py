"""POST /v1/completions: prepare → admit through the pipeline → shape as OpenAI's text completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from pydantic import BaseModel

from server.engine.base import ChoiceFinished, TextDelta
from server.protocol.openai import CompletionRequest
from server.protocol.openai_replies import Completion, CompletionChoice
from server.serving.endpoints import logprobs
from server.serving.endpoints.prepare import completion_request
from server.serving.endpoints.reply import Reply, new_id, now, usage
from server.serving.pipeline.admission import Admitted, ServingContext, admit


async def create(body: CompletionRequest, ctx: ServingContext) -> Reply[Completion]:
    admitted = await admit(ctx, "completions", body, lambda engine: completion_request(engine, body), model=body.model)
    rid, model = new_id("cmpl"), admitted.job.model.model_id
    headers = admitted.job.response_headers
    if body.stream:
        return Reply(headers, chunks=_chunks(admitted, rid, model, body), close=admitted.close, fail=admitted.fail)
    whole = await admitted.collect()
    choices = [
        CompletionChoice(
            index=c.index,
            text=c.text,
            logprobs=logprobs.completion(c.logprobs, 0, bool(body.logprobs)) if body.logprobs is not None else None,
            finish_reason=c.finish_reason,
        )
        for c in whole.choices
    ]
    completion = Completion(id=rid, created=now(), model=model, choices=choices, usage=usage(whole.finished))
    return Reply(headers, body=completion)


def _chunk(rid: str, model: str, choice: CompletionChoice) -> Completion:
    return Completion(id=rid, created=now(), model=model, choices=[choice])


async def _chunks(admitted: Admitted, rid: str, model: str, body: CompletionRequest) -> AsyncGenerator[BaseModel, None]:
    offsets = [0] * body.n  # where each choice's next text starts, for the legacy logprobs' text_offset
    ended: set[int] = set()
    # A client that stops reading closes this generator; the events (and the lease) close with it at once, not when
    # the garbage collector finds them.
    async with admitted.streaming() as events:
        async for event in events:
            if isinstance(event, TextDelta):
                lp = None
                if body.logprobs is not None:
                    lp = logprobs.completion(event.logprobs, offsets[event.index], bool(body.logprobs))
                offsets[event.index] += len(event.text)
                choice = CompletionChoice(index=event.index, text=event.text, logprobs=lp, finish_reason=None)
                yield _chunk(rid, model, choice)
            elif isinstance(event, ChoiceFinished):
                ended.add(event.index)
                yield _chunk(
                    rid, model, CompletionChoice(index=event.index, text="", finish_reason=event.finish_reason)
                )
            else:
                for index in range(body.n):
                    if index not in ended:
                        yield _chunk(
                            rid, model, CompletionChoice(index=index, text="", finish_reason=event.finish_reason)
                        )
                if body.include_usage_in_stream():
                    yield Completion(id=rid, created=now(), model=model, choices=[], usage=usage(event))
