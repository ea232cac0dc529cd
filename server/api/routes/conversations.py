"""GET /v1/conversations/{id}: a stored conversation, for the key that wrote it only (anyone else gets 404); counted
against the key's RPM and audited. The route hands the id to the serving layer and shapes nothing itself."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.api.deps import PlaneDep, ServingDep
from server.api.gates import KeyFirstRoute
from server.api.streaming import whole
from server.protocol.admin import Conversation
from server.protocol.base import ErrorResponse
from server.serving.endpoints import conversations

router = APIRouter(prefix="/v1", route_class=KeyFirstRoute)


@router.get(
    "/conversations/{conversation_id}", responses={s: {"model": ErrorResponse} for s in (401, 404, 429, 500, 503)}
)
async def get_conversation(
    conversation_id: str, serving: ServingDep, plane: PlaneDep, response: Response
) -> Conversation:
    return whole(await conversations.retrieve(conversation_id, serving, plane.conversations), response)
