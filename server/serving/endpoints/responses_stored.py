"""Stored Responses API responses: `GET /v1/responses/{id}`, `GET .../input_items` and `DELETE`. Each counts
against its key's RPM and is audited (`responses.retrieve`, `responses.input_items`, `responses.delete`), and reads
only what it answers with: never the conversation a response continued, which may be most of its row."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from server.protocol.responses import InputItemsQuery
from server.protocol.responses_replies import DeletedResponse, InputItemList, ResponseObject
from server.serving.endpoints.reply import Reply
from server.serving.endpoints.responses_items import not_found, owner_of, unavailable
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.errand import errand
from server.store.errors import StoreUnavailableError
from server.store.responses import ResponseStore

T = TypeVar("T")


async def _found(read: Awaitable[T | None], response_id: str) -> T:
    """What the store read for the response's owner: anyone else, like an unknown or expired id, gets 404."""
    try:
        found = await read
    except StoreUnavailableError as exc:
        raise unavailable(exc) from None
    if found is None:
        raise not_found(response_id)
    return found


async def retrieve(response_id: str, ctx: ServingContext, store: ResponseStore) -> Reply[ResponseObject]:
    async with errand(ctx, "responses.retrieve") as headers:
        found = await _found(store.response(response_id, owner_of(ctx.caller)), response_id)
        return Reply(headers, body=ResponseObject.model_validate(found))


async def delete(response_id: str, ctx: ServingContext, store: ResponseStore) -> Reply[DeletedResponse]:
    async with errand(ctx, "responses.delete") as headers:
        try:
            deleted = await store.delete(response_id, owner_of(ctx.caller))
        except StoreUnavailableError as exc:
            raise unavailable(exc) from None
        if not deleted:
            raise not_found(response_id)
        return Reply(headers, body=DeletedResponse(id=response_id))


async def input_items(
    response_id: str, query: InputItemsQuery, ctx: ServingContext, store: ResponseStore
) -> Reply[InputItemList]:
    """A page of the request's own input items (not those `previous_response_id` chained in), as OpenAI lists them."""
    async with errand(ctx, "responses.input_items") as headers:
        found = await _found(store.input_items(response_id, owner_of(ctx.caller)), response_id)
        listed = found if query.order == "asc" else list(reversed(found))
        if query.after is not None:
            ids = [item.get("id") for item in listed]
            listed = listed[ids.index(query.after) + 1 :] if query.after in ids else []
        page = listed[: query.limit]
        body = InputItemList.model_validate(
            {
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(listed) > len(page),
            }
        )
        return Reply(headers, body=body)
