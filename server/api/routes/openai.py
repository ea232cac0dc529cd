"""OpenAI's /v1 surface. Each route hands its validated body to the serving layer and shapes nothing itself."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sse_starlette import EventSourceResponse

from server.api.deps import CallerDep, HolderDep, ServingDep
from server.api.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from server.api.streaming import respond
from server.serving import chat, completions
from server.serving.run import require_model

router = APIRouter(prefix="/v1")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


# Every generation may be refused for bad input (400), a bad key (401), a key without the model (403), an unknown
# model (404), overload or rate limits (429), and while the model is not ready or the server drains (503).
_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(400, 401, 403, 404, 429, 500, 503),
    200: {"content": _STREAM, "description": "The completion, or with `stream: true` server-sent events."},
}
MODEL_RESPONSES = _errors(401, 404, 500, 503)


@router.get("/models", responses=MODEL_RESPONSES)
async def list_models(holder: HolderDep, _: CallerDep) -> ModelList:
    served = holder.serving()
    return ModelList(data=[ModelCard(id=served.model_id, created=served.loaded_at)])


@router.get("/models/{model_id:path}", responses=MODEL_RESPONSES)
async def get_model(model_id: str, holder: HolderDep, _: CallerDep) -> ModelCard:
    served = holder.serving()
    require_model(served, model_id)
    return ModelCard(id=served.model_id, created=served.loaded_at)


@router.post("/completions", response_model=Completion, responses=GENERATION_RESPONSES)
async def create_completion(
    body: CompletionRequest, serving: ServingDep, response: Response
) -> Completion | EventSourceResponse:
    return respond(await completions.create(body, serving), response)


@router.post("/chat/completions", response_model=ChatCompletion, responses=GENERATION_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, serving: ServingDep, response: Response
) -> ChatCompletion | EventSourceResponse:
    return respond(await chat.create(body, serving), response)
