"""OpenAI's /v1 surface. Each route hands its validated body to the serving layer and shapes nothing itself."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from server.api.cards import model_card
from server.api.deps import CallerDep, ModelsDep, ServingDep
from server.api.gates import KeyFirstRoute
from server.api.streaming import event_stream_schema, respond
from server.lifecycle.holder import ModelNotReadyError
from server.protocol.base import ErrorResponse
from server.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from server.protocol.openai_replies import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    EmbeddingList,
    ModelCard,
    ModelList,
)
from server.serving.endpoints import chat, completions, embeddings
from server.serving.pipeline.admission import model_not_found
from server.serving.stages.permit import require_permitted

router = APIRouter(prefix="/v1", route_class=KeyFirstRoute)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


def _generation_responses(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """Every generation may be refused for bad input (400), a bad key (401), a key without the model (403), an
    unknown model (404), overload or rate limits (429), and while the model is not ready or the server drains (503)."""
    stream = {"text/event-stream": {"schema": event_stream_schema(chunk)}}
    return {
        **_errors(400, 401, 403, 404, 429, 500, 503),
        200: {"content": stream, "description": "The completion, or with `stream: true` server-sent events."},
    }


# Stream chunks appear in no route's JSON body; the event-stream schemas refer to them.
STREAM_CHUNKS = (Completion, ChatCompletionChunk)
MODEL_RESPONSES = _errors(401, 403, 404, 500, 503)


@router.get("/models", responses=MODEL_RESPONSES)
async def list_models(models: ModelsDep, caller: CallerDep) -> ModelList:
    """Every catalogue model the caller may use, with its state: a key limited to some models learns nothing of the
    others (their state and load times would tell it what other tenants use). With the single-model settings, 503
    until the model serves (its card has nothing to show before)."""
    if (sole := models.sole) is not None and sole.holder.current is None:
        raise ModelNotReadyError(sole.holder.readiness().reason)
    return ModelList(data=[model_card(models, m) for m in models.models if caller.may_use(m.id)])


@router.get("/models/{model_id:path}", responses=MODEL_RESPONSES)
async def get_model(model_id: str, models: ModelsDep, caller: CallerDep) -> ModelCard:
    """A model's card; 403 for a model the caller may not use, as a generation on it would be."""
    found = models.resolve(model_id)
    if found is None:
        raise model_not_found(models, model_id, caller)
    require_permitted(caller, found.id)
    if found is models.sole and found.holder.current is None:
        raise ModelNotReadyError(found.holder.readiness().reason)
    return model_card(models, found)


def embeddings_router() -> APIRouter:
    """POST /v1/embeddings, included only while GGUFSTACK_EMBEDDINGS is on."""
    embeddings_routes = APIRouter(prefix="/v1", route_class=KeyFirstRoute)

    @embeddings_routes.post(
        "/embeddings", response_model=EmbeddingList, responses=_errors(400, 401, 403, 404, 429, 500, 503)
    )
    async def create_embeddings(
        body: EmbeddingRequest, serving: ServingDep, response: Response
    ) -> EmbeddingList | Response:
        return respond(await embeddings.create(body, serving), response)

    return embeddings_routes


@router.post("/completions", response_model=Completion, responses=_generation_responses(Completion))
async def create_completion(body: CompletionRequest, serving: ServingDep, response: Response) -> Completion | Response:
    return respond(await completions.create(body, serving), response)


@router.post("/chat/completions", response_model=ChatCompletion, responses=_generation_responses(ChatCompletionChunk))
async def create_chat_completion(
    body: ChatCompletionRequest, serving: ServingDep, response: Response
) -> ChatCompletion | Response:
    return respond(await chat.create(body, serving), response)
