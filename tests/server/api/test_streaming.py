"""The HTTP side of a streamed reply: whatever happens to the stream, the reply's close runs once it is over, and a
chunk that cannot be sent is the request's recorded outcome."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import pytest
from fastapi import Response
from pydantic import BaseModel

from server.access.caller import ANONYMOUS
from server.api.streaming import _events, _named_events, respond, respond_named
from server.protocol.openai import CompletionRequest
from server.serving.endpoints import completions
from server.serving.endpoints.reply import Reply
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.stages import Pipeline, prepare
from server.serving.stages.record import RecordStage
from tests.support.audit import AuditRows
from tests.support.fake_engine import FakeEngine, registry_serving


class Chunk(BaseModel):
    type: str = "chunk"


async def _chunks() -> AsyncGenerator[BaseModel, None]:
    yield Chunk()


async def test_every_streamed_response_runs_the_replys_close_as_its_background_task() -> None:
    for shape in (respond, respond_named):
        closed: list[bool] = []

        async def close(closed: list[bool] = closed) -> None:
            closed.append(True)

        answer = shape(Reply({}, chunks=_chunks(), close=close), Response())
        background = getattr(answer, "background", None)
        assert background is not None, shape.__name__
        await background()
        assert closed == [True], shape.__name__


class _Unsendable(BaseModel):
    value: Any  # an object() here has no JSON form: serialising the chunk fails


@pytest.mark.parametrize("send", ["openai", "openai-named", "anthropic"])
async def test_a_chunk_that_cannot_be_sent_is_the_requests_recorded_outcome(send: str) -> None:
    """Not a client that went away (499), nor a success: the audit row says what the client heard, an error."""
    rows = AuditRows()
    engine = FakeEngine(reply="a long answer")
    pipeline = Pipeline([RecordStage(rows, store_conversations=False), prepare])  # type: ignore[list-item, arg-type]  # stages are plain async generator functions; the stand-in writer
    ctx = ServingContext(registry_serving(engine), pipeline, ANONYMOUS, request_id="r1")
    body = CompletionRequest.model_validate({"model": "fake", "prompt": "hi", "max_tokens": 8, "stream": True})
    reply = await completions.create(body, ctx)
    assert reply.chunks is not None

    async def chunks(real: AsyncGenerator[BaseModel, None] = reply.chunks) -> AsyncGenerator[BaseModel, None]:
        async with aclosing(real):
            yield await anext(real)
            yield _Unsendable(value=object())

    events = (
        _named_events(chunks(), reply.fail)
        if send == "anthropic"
        else _events(chunks(), send == "openai-named", reply.fail)
    )
    sent = [event async for event in events]
    assert sent[1].get("event", "error") == "error" and "internal error" in sent[1]["data"]
    assert rows.statuses == [500]
    assert ctx.models.in_flight == 0 and engine.streams[0].closed
