"""Anthropic's Messages API. Each route hands its validated body to the serving layer and shapes nothing itself; errors
under these paths leave in Anthropic's shape (`server/api/errors.py`). The `anthropic-version` header is accepted and
not checked: one wire format is served, whatever version a client names."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sse_starlette import EventSourceResponse

from server.api.deps import ServingDep
from server.api.gates import KeyFirstRoute
from server.api.streaming import named_event_stream_schema, respond_named
from server.protocol.anthropic import (
    AnthropicError,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    CountTokensRequest,
    Message,
    MessageDeltaEvent,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    MessageTokensCount,
    PingEvent,
)
from server.serving.endpoints import messages

router = APIRouter(prefix="/v1", route_class=KeyFirstRoute)

# Stream events appear in no route's JSON body; the event-stream schema refers to them.
STREAM_EVENTS = (
    MessageStartEvent,
    ContentBlockStartEvent,
    ContentBlockDeltaEvent,
    ContentBlockStopEvent,
    MessageDeltaEvent,
    MessageStopEvent,
    PingEvent,
)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": AnthropicError} for status in statuses}


_MESSAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(400, 401, 403, 404, 429, 500, 503),
    200: {
        "content": {"text/event-stream": {"schema": named_event_stream_schema(*STREAM_EVENTS)}},
        "description": "The message, or with `stream: true` Anthropic's server-sent events.",
    },
}


@router.post("/messages", response_model=Message, responses=_MESSAGE_RESPONSES)
async def create_message(
    body: MessagesRequest, serving: ServingDep, response: Response
) -> Message | EventSourceResponse:
    return respond_named(await messages.create(body, serving), response)


@router.post(
    "/messages/count_tokens", response_model=MessageTokensCount, responses=_errors(400, 401, 403, 404, 429, 500, 503)
)
async def count_message_tokens(
    body: CountTokensRequest, serving: ServingDep, response: Response
) -> MessageTokensCount | EventSourceResponse:
    return respond_named(await messages.count_tokens(body, serving), response)
