"""HTTP endpoints: OpenAI's /v1 surface and the health probes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from server.api import responses
from server.api.errors import from_exception
from server.api.pipeline import collect, prepare_chat, prepare_completion, select_engine
from server.api.schemas import ChatCompletionRequest, CompletionRequest
from server.engine.base import Finished, GenerationEvent, TextDelta
from server.model_holder import ModelHolder

log = logging.getLogger(__name__)
router = APIRouter()


def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    state = _holder(request).readiness()
    body = {"status": "ready" if state.ready else "not_ready", "state": state.state, "reason": state.reason}
    return JSONResponse(body, status_code=200 if state.ready else 503)


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ggufstack"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    engine = _holder(request).engine()
    return {"object": "list", "data": [_model_card(engine.model_id, request.app.state.started)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    engine = select_engine(_holder(request), model_id)
    return _model_card(engine.model_id, request.app.state.started)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | EventSourceResponse:
    engine = select_engine(_holder(request), body.model)
    events = engine.generate(prepare_completion(engine, body))
    rid = responses.new_id("cmpl")
    if not body.stream:
        result = await collect(events)
        return responses.completion(rid, engine.model_id, result.text, result.finished)

    def chunk(event: GenerationEvent) -> dict[str, Any]:
        if isinstance(event, TextDelta):
            return responses.completion_chunk(rid, engine.model_id, event.text, None)
        return responses.completion_chunk(rid, engine.model_id, "", event.finish_reason)

    usage = body.include_usage_in_stream()
    return _sse(events, chunk, lambda f: responses.usage_chunk(rid, engine.model_id, "text_completion", f), usage)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | EventSourceResponse:
    engine = select_engine(_holder(request), body.model)
    events = engine.generate(prepare_chat(engine, body))
    rid = responses.new_id("chatcmpl")
    if not body.stream:
        result = await collect(events)
        return responses.chat_completion(rid, engine.model_id, result.text, result.finished)

    first = True

    def chunk(event: GenerationEvent) -> dict[str, Any]:
        nonlocal first
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        first = False
        if isinstance(event, TextDelta):
            return responses.chat_chunk(rid, engine.model_id, {**delta, "content": event.text}, None)
        return responses.chat_chunk(rid, engine.model_id, delta, event.finish_reason)

    usage = body.include_usage_in_stream()
    return _sse(events, chunk, lambda f: responses.usage_chunk(rid, engine.model_id, "chat.completion.chunk", f), usage)


def _sse(
    events: AsyncIterator[GenerationEvent],
    chunk: Callable[[GenerationEvent], dict[str, Any]],
    usage_chunk: Callable[[Finished], dict[str, Any]],
    include_usage: bool,
) -> EventSourceResponse:
    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            # aclosing: a client that hangs up cancels this generator, and the engine must hear of it at once.
            async with aclosing(events):
                async for event in events:
                    yield {"data": json.dumps(chunk(event))}
                    if isinstance(event, Finished) and include_usage:
                        yield {"data": json.dumps(usage_chunk(event))}
        except Exception as exc:  # headers are gone already: report the failure in-band, as OpenAI does
            yield {"data": json.dumps(from_exception(exc).body())}
        yield {"data": "[DONE]"}

    return EventSourceResponse(stream(), sep="\n", ping=15)
