"""A serving `Reply` as an HTTP response: JSON, or server-sent events ending in `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from server.api.errors import body, from_exception
from server.serving.shape import Body, Reply


def respond(reply: Reply[Body], response: Response) -> Body | EventSourceResponse:
    if reply.body is not None:
        response.headers.update(reply.headers)
        return reply.body
    if reply.chunks is None:
        raise RuntimeError("a reply carries neither a body nor chunks")
    return EventSourceResponse(_events(reply.chunks), sep="\n", ping=15, headers=reply.headers)


async def _events(chunks: AsyncGenerator[BaseModel, None]) -> AsyncIterator[dict[str, str]]:
    try:
        async for chunk in chunks:
            yield {"data": chunk.model_dump_json()}
    except Exception as exc:  # headers are gone already: report the failure in-band, as OpenAI does
        yield {"data": body(from_exception(exc)).model_dump_json()}
    finally:
        await chunks.aclose()
    yield {"data": "[DONE]"}
