"""GET /v1/conversations/{id}: a stored conversation, a page at a time, for the key that wrote it only (anyone else
gets 404); counted against the key's RPM and audited. The route hands the id to the serving layer and shapes nothing
itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.api.deps import PlaneDep, ServingDep
from server.api.gates import KeyFirstRoute
from server.api.streaming import whole
from server.protocol.admin import Conversation, ConversationQuery
from server.protocol.base import ErrorResponse
from server.serving.endpoints import conversations

router = APIRouter(prefix="/v1", route_class=KeyFirstRoute)


@router.get(
    "/conversations/{conversation_id}", responses={s: {"model": ErrorResponse} for s in (401, 404, 429, 500, 503)}
)
async def get_conversation(
    conversation_id: str,
    query: Annotated[ConversationQuery, Query()],
    serving: ServingDep,
    plane: PlaneDep,
    response: Response,
) -> Conversation:
    """A page of the conversation's messages, oldest first: `limit` of them at most, and about 4 MiB of text."""
    return whole(await conversations.retrieve(conversation_id, query, serving, plane.conversations), response)
