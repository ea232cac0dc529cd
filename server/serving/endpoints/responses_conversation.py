"""The conversation a Responses API request continues (`previous_response_id`), held to a bound.

Each stored response keeps the whole conversation before it, and items that never reach the prompt (reasoning items,
replayed logprobs, ids) cost no tokens, so without a bound a chain grows with every request, and so does every read
and every row. The conversation a response continues, with its own input, is held to what the store's bound allows:
GGUFSTACK_MAX_MESSAGES items (of any kind) and GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES bytes of JSON, or the
request is a 400 naming `previous_response_id` (or `input`, when the input alone is too large). The stored size is
read before the items, so a conversation over the bound is refused without being read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.access.caller import Caller
from server.errors import APIError
from server.serving.endpoints.responses_items import not_found, owner_of, unavailable
from server.store.errors import StoreUnavailableError
from server.store.responses import (
    NO_CONVERSATION,
    ConversationBound,
    ResponseStore,
    StoredConversation,
    json_size,
)


@dataclass(frozen=True, slots=True)
class Conversation:
    """A response's conversation before its output: the items it continues, its own input items, and their size."""

    context: list[dict[str, Any]]
    input_items: list[dict[str, Any]]
    size: int  # json_size of the context and the input

    def items(self) -> list[dict[str, Any]]:
        return [*self.context, *self.input_items]


async def previous(store: ResponseStore, response_id: str | None, caller: Caller) -> StoredConversation:
    """The stored conversation `previous_response_id` continues (none without one); 404 naming it when its owner has
    no such response."""
    if response_id is None:
        return NO_CONVERSATION
    try:
        found = await store.conversation(response_id, owner_of(caller))
    except StoreUnavailableError as exc:
        raise unavailable(exc) from None
    if found is None:
        raise not_found(response_id, "previous_response_id")
    return found


def bounded(bound: ConversationBound, prior: StoredConversation, input_items: list[dict[str, Any]]) -> Conversation:
    """The conversation of the stored one and the input, within the bound (a 400 otherwise). Parses the stored items:
    run it off the event loop."""
    size = json_size(input_items)
    if len(input_items) > bound.items or size > bound.bytes:
        raise _too_large(bound, "input", f"the input holds {len(input_items)} items, {size} bytes as JSON")
    items, total = prior.items + len(input_items), prior.size + size
    if prior.content is None or items > bound.items or total > bound.bytes:
        said = f"the conversation previous_response_id continues, with this input, holds {items} items, {total} bytes"
        raise _too_large(bound, "previous_response_id", said)
    return Conversation(prior.load(), input_items, total)


def _too_large(bound: ConversationBound, param: str, said: str) -> APIError:
    return APIError(
        400,
        f"{said}; a response may continue at most {bound.items} items (this server's GGUFSTACK_MAX_MESSAGES), "
        f"reasoning items included, and {bound.bytes} bytes (GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES): start a "
        "new conversation with the items that matter",
        param=param,
        code="conversation_too_large",
    )
