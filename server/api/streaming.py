"""A serving `Reply` as an HTTP response: JSON, or server-sent events: chat's and completions' end in `data: [DONE]`;
the Responses API's and Anthropic's name each event (`event:` line) after its `type`."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from server.api.errors import anthropic_body, body, from_exception
from server.protocol.anthropic import AnthropicError, PingEvent
from server.protocol.base import ErrorResponse
from server.serving.endpoints.reply import Body, Reply

log = logging.getLogger(__name__)

_REF = "#/components/schemas/"
Failed = Callable[[Exception], None] | None


class _EventStream(EventSourceResponse):
    """Server-sent events whose client must take each chunk (or ping) within the server's stream send timeout.

    The stages around a generation charge its tokens, write its audit row and return its model lease when its last
    event is pulled, which is only once every chunk before it was sent: a client that stops reading its socket (its
    buffers full, the connection left open) would otherwise hold them off for as long as it likes. Past the timeout
    the stream's events are closed, as for a client gone away (499), and the connection is dropped."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.send_timeout = scope["app"].state.settings.stream_send_timeout_s
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("a streaming client took no data for %.0f s: its response is ended", self.send_timeout)
            if self.background is not None:  # the stream's own close, which the base class skips on an error
                await self.background()


def event_stream_schema(chunk: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI schema of one server-sent event: `data` is a chunk, an in-band error, or the `[DONE]` marker."""
    payload = {"anyOf": [{"$ref": f"{_REF}{chunk.__name__}"}, {"$ref": f"{_REF}{ErrorResponse.__name__}"}]}
    data = {
        "anyOf": [
            {"type": "string", "const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
        ]
    }
    return {"type": "object", "required": ["data"], "properties": {"data": data, "event": {"type": "string"}}}


def named_event_stream_schema(*events: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI schema of one Anthropic server-sent event: `event` names it, `data` is it (or an error)."""
    named: tuple[type[BaseModel], ...] = (*events, AnthropicError)
    members = [{"$ref": f"{_REF}{e.__name__}"} for e in named]
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": members}}
    return {"type": "object", "required": ["event", "data"], "properties": {"data": data, "event": {"type": "string"}}}


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas for models no route body names (stream chunks), with the models they refer to."""
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF + "{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


def whole(reply: Reply[Body], response: Response) -> Body:
    """A reply that never streams (a stored item read): its body, with its headers (the request limit's) on the
    response."""
    if reply.body is None:
        raise RuntimeError("a reply that never streams carries no body")
    response.headers.update(reply.headers)
    return reply.body


def respond(reply: Reply[Body], response: Response) -> Body | Response:
    """The body for FastAPI to write, or a response of its own: one written already, or a stream of events."""
    if reply.rendered is not None:  # written already: FastAPI sends a Response as it is
        return Response(reply.rendered, media_type="application/json", headers=reply.headers)
    if reply.body is not None:
        response.headers.update(reply.headers)
        return reply.body
    if reply.chunks is None:
        raise RuntimeError("a reply carries neither a body nor chunks")
    return _EventStream(
        _events(reply.chunks, reply.event_names, reply.fail),
        sep="\n",
        ping=15,
        headers=reply.headers,
        background=_closing(reply),
    )


async def _events(
    chunks: AsyncGenerator[BaseModel, None], event_names: bool, fail: Failed = None
) -> AsyncIterator[dict[str, str]]:
    try:
        async for chunk in chunks:
            data = chunk.model_dump_json(by_alias=True)
            yield {"event": str(getattr(chunk, "type", "")), "data": data} if event_names else {"data": data}
    except Exception as exc:  # headers are gone already: report the failure in-band, as OpenAI does
        _failed(fail, exc)
        error = body(from_exception(exc)).model_dump_json()
        yield {"event": "error", "data": error} if event_names else {"data": error}
    finally:
        await chunks.aclose()
    if not event_names:
        yield {"data": "[DONE]"}


def respond_named(reply: Reply[Body], response: Response) -> Body | EventSourceResponse:
    """As `respond`, with Anthropic's events: named, pinged with a `ping` event, no end marker."""
    if reply.body is not None:
        response.headers.update(reply.headers)
        return reply.body
    if reply.chunks is None:
        raise RuntimeError("a reply carries neither a body nor chunks")
    return _EventStream(
        _named_events(reply.chunks, reply.fail),
        sep="\n",
        ping=15,
        ping_message_factory=_ping,
        headers=reply.headers,
        background=_closing(reply),
    )


def _failed(fail: Failed, exc: Exception) -> None:
    """Tell the reply its stream failed before the chunks are closed (`finally`), so that the request is recorded
    as failed (500 or the failure's status), not as a client that went away or a success."""
    if fail is not None:
        fail(exc)


def _closing(reply: Reply[Body]) -> BackgroundTask | None:
    """The reply's close, run once the response is over: the stream's own cleanup runs only if it started."""
    return BackgroundTask(reply.close) if reply.close is not None else None


def _ping() -> ServerSentEvent:
    ping = PingEvent()
    return ServerSentEvent(data=ping.model_dump_json(), event=ping.type)


async def _named_events(chunks: AsyncGenerator[BaseModel, None], fail: Failed = None) -> AsyncIterator[dict[str, str]]:
    try:
        async for chunk in chunks:
            yield {"event": str(getattr(chunk, "type", "message")), "data": chunk.model_dump_json()}
    except Exception as exc:  # headers are gone already: report the failure in-band, as Anthropic does
        _failed(fail, exc)
        yield {"event": "error", "data": anthropic_body(from_exception(exc)).model_dump_json()}
    finally:
        await chunks.aclose()
