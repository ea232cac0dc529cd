"""FastAPI dependencies: what a route may ask for, resolved from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.access.caller import Caller
from server.api.gates import authenticate, check_admin_key
from server.api.middleware import ACCEPTABLE_ID
from server.config.settings import Settings
from server.errors import APIError
from server.lifecycle.registry import ModelRegistry
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.assemble import DataPlane
from server.serving.pipeline.stages import Pipeline
from server.store.keys import KeyStore


def _models(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def _admin(request: Request) -> None:
    check_admin_key(request)


def _admin_keys(request: Request) -> KeyStore:
    """The key store, for a request that carries the admin key (503 without a database)."""
    _admin(request)
    plane = _plane(request)
    if plane.keys is None:
        raise APIError(
            503, "no database is configured (GGUFSTACK_DATABASE_URL)", type="service_unavailable", code="no_database"
        )
    return plane.keys


async def _caller(request: Request) -> Caller:
    return await authenticate(request)


CONVERSATION_HEADER = "x-conversation-id"

ModelsDep = Annotated[ModelRegistry, Depends(_models)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Caller, Depends(_caller)]
PlaneDep = Annotated[DataPlane, Depends(_plane)]
AdminKeysDep = Annotated[KeyStore, Depends(_admin_keys)]
AdminDep = Annotated[None, Depends(_admin)]


def _conversation_id(request: Request) -> str | None:
    """X-Conversation-Id, held to the request id's rules: it becomes a stored, indexed value (one of 8 KB broke the
    index and, with it, the audit writer), so a long or odd one is a 400 rather than a surprise later."""
    value = request.headers.get(CONVERSATION_HEADER)
    if not value:
        return None
    if not ACCEPTABLE_ID.fullmatch(value):
        raise APIError(
            400,
            "X-Conversation-Id must be 1 to 128 characters among letters, digits and . _ : -",
            param="X-Conversation-Id",
            code="invalid_conversation_id",
        )
    return value


def _serving(request: Request, models: ModelsDep, caller: CallerDep) -> ServingContext:
    pipeline: Pipeline = request.app.state.pipeline
    conversation_id = _conversation_id(request)
    return ServingContext(
        models, pipeline, caller, request.state.request_id, conversation_id, request.state.client_request_id
    )


ServingDep = Annotated[ServingContext, Depends(_serving)]
