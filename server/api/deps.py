"""FastAPI dependencies: what a route may ask for, resolved from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.lifecycle.holder import ModelHolder
from server.serving.job import Authenticator, Caller
from server.serving.run import ServingContext
from server.serving.stages import Pipeline
from server.settings import Settings


def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder


def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _caller(request: Request) -> Caller:
    authenticate: Authenticator = request.app.state.authenticator
    return await authenticate(request.headers.get("authorization"))


CONVERSATION_HEADER = "x-conversation-id"

HolderDep = Annotated[ModelHolder, Depends(_holder)]
SettingsDep = Annotated[Settings, Depends(_settings)]
CallerDep = Annotated[Caller, Depends(_caller)]


def _serving(request: Request, holder: HolderDep, caller: CallerDep) -> ServingContext:
    pipeline: Pipeline = request.app.state.pipeline
    conversation_id = request.headers.get(CONVERSATION_HEADER) or None
    return ServingContext(holder, pipeline, caller, request.state.request_id, conversation_id)


ServingDep = Annotated[ServingContext, Depends(_serving)]
