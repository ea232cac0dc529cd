"""`GET /v1/conversations/{id}`: the messages a key filed under a conversation id (X-Conversation-Id), for that key
only (anyone else gets 404), a page at a time (`limit`, `after`). Counted against the key's RPM and audited
(`conversations.retrieve`), as the stored Responses API reads are: a read of stored data is no free way past a key's
limits."""

from __future__ import annotations

from server.errors import APIError
from server.protocol.admin import Conversation, ConversationMessageOut, ConversationQuery
from server.serving.endpoints.reply import Reply
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.errand import errand
from server.store.conversations import ConversationStore
from server.store.errors import StoreUnavailableError


async def retrieve(
    conversation_id: str, query: ConversationQuery, ctx: ServingContext, store: ConversationStore | None
) -> Reply[Conversation]:
    async with errand(ctx, "conversations.retrieve") as headers:
        not_found = APIError(
            404, f"no conversation {conversation_id!r}", type="not_found_error", code="conversation_not_found"
        )
        if store is None:
            raise not_found
        try:
            page = await store.messages(conversation_id, ctx.caller.key_id, after=query.after, limit=query.limit)
        except StoreUnavailableError as exc:
            raise APIError(503, str(exc), type="service_unavailable", code="database_unavailable") from None
        if not page.messages and query.after is None:
            raise not_found
        listed = [
            ConversationMessageOut(
                id=m.id,
                role=m.role,
                content=m.content or "",
                request_id=m.request_id,
                created=int(m.created_at.timestamp()),
            )
            for m in page.messages
        ]
        first, last = (listed[0].id, listed[-1].id) if listed else (None, None)
        body = Conversation(id=conversation_id, messages=listed, first_id=first, last_id=last, has_more=page.has_more)
        return Reply(headers, body=body)
