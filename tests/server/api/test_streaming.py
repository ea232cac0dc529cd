"""The HTTP side of a streamed reply: whatever happens to the stream, the reply's close runs once it is over."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import Response
from pydantic import BaseModel

from server.api.streaming import respond, respond_named
from server.serving.endpoints.reply import Reply


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
