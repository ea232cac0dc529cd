"""GET /v1/conversations/{id}: a stored conversation, for the key that wrote it only (anyone else gets 404)."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import CallerDep, PlaneDep
from server.errors import APIError
from server.protocol.admin import Conversation, ConversationMessageOut
from server.protocol.base import ErrorResponse
from server.store.errors import StoreUnavailableError

router = APIRouter(prefix="/v1")


@router.get("/conversations/{conversation_id}", responses={s: {"model": ErrorResponse} for s in (401, 404, 503)})
async def get_conversation(conversation_id: str, caller: CallerDep, plane: PlaneDep) -> Conversation:
    store = plane.conversations
    not_found = APIError(
        404, f"no conversation {conversation_id!r}", type="not_found_error", code="conversation_not_found"
    )
    if store is None:
        raise not_found
    try:
        messages = await store.messages(conversation_id, caller.key_id)
    except StoreUnavailableError as exc:
        raise APIError(503, str(exc), type="service_unavailable", code="database_unavailable") from None
    if not messages:
        raise not_found
    return Conversation(
        id=conversation_id,
        messages=[
            ConversationMessageOut(
                role=m.role, content=m.content, request_id=m.request_id, created=int(m.created_at.timestamp())
            )
            for m in messages
        ],
    )
