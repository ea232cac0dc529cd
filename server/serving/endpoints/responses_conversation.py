"""The conversation a Responses API request continues (`previous_response_id`), held to a bound.

A continuation reads the whole conversation before it, and items that never reach the prompt (reasoning items,
replayed logprobs, ids) cost no tokens, so without a bound a chain grows with every request, and so does every read.
The conversation a response continues, with its own input, is held to what the store's bound allows:
GGUFSTACK_MAX_MESSAGES items (of any kind) and GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES bytes of JSON, or the
request is a 400 naming `previous_response_id` (or `input`, when the input alone is too large). The stored size is
read before the items, so a conversation over the bound is refused without being read.

All of it is the request's preparation, in the pipeline's prepare stage: the read after the key, its model permission
and its request limit (a key over its RPM reads nothing), the parsing and conversion in the stage's worker thread,
and a refusal (404, 400, 429, 503) recorded in the audit log like any other.

The bound holds one conversation, not the rows a key adds, nor how long it keeps them: the store charges each save
what it keeps (see server/store/responses.py). So an API key whose stored responses took the store's daily budget
today may not store another before the next day (a 429 before anything is generated; `store: false` still works).
Charged when saved, so requests in flight together may pass the budget by their size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from server.access.caller import Caller
from server.engine.base import Engine
from server.errors import APIError
from server.protocol.responses import ResponseRequest
from server.serving.endpoints.prepare import chat_request
from server.serving.endpoints.responses_items import chat_body, not_found, owner_of, stored_input, unavailable
from server.serving.pipeline.job import PreparedGeneration
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


async def within_budget(store: ResponseStore, body: ResponseRequest, caller: Caller) -> None:
    """Refuse (429) a response its API key may not store today; the admin key and open access have no budget."""
    budget = store.max_bytes_per_key_per_day
    if not (body.store and store.keeps) or budget <= 0 or caller.key_id is None:
        return
    owner, longer = owner_of(caller), 0
    try:
        spent = await store.stored_today(owner)
        if spent < budget and body.previous_response_id is not None:
            # Charged when saved, yet known now: a continuation keeping a large conversation longer may cost more
            # than a whole day's budget, which the check of what was spent alone let through once a day.
            longer = await store.keeping_longer(body.previous_response_id, owner)
    except StoreUnavailableError as exc:
        raise unavailable(exc) from None
    if spent + longer < budget:
        return
    tomorrow = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), time(), UTC)
    wait = max(1, math.ceil((tomorrow - datetime.now(UTC)).total_seconds()))
    said = f"this API key's responses stored today take {spent} bytes,"
    if longer:
        said = (
            f"storing this response keeps the conversation previous_response_id continues longer, charged {longer} "
            f"bytes besides its own (its bytes times the share of the retention it adds), and {said} together past"
        )
    raise APIError(
        429,
        f"{said} its daily budget (GGUFSTACK_RESPONSES_MAX_BYTES_PER_KEY_PER_DAY, {budget}); send store: false, "
        "continue the conversation sooner or start a new one, or retry tomorrow (UTC)",
        type="rate_limit_error",
        param="store",
        code="response_storage_exceeded",
        headers={"Retry-After": str(wait)},
    )


class Preparation:
    """A Responses request's preparation: `read` is the job's lookup (the stored conversation it continues), the call
    runs in the prepare stage's worker thread (bounded, parsed, turned into chat, prepared as chat is). The
    conversation is kept here for the response to be stored with."""

    def __init__(self, body: ResponseRequest, store: ResponseStore, caller: Caller) -> None:
        self._body, self._store, self._caller = body, store, caller
        self._prior = NO_CONVERSATION
        self._conversation: Conversation | None = None

    async def read(self) -> None:
        await within_budget(self._store, self._body, self._caller)
        self._prior = await previous(self._store, self._body.previous_response_id, self._caller)

    def __call__(self, engine: Engine) -> PreparedGeneration:
        self._conversation = bounded(self._store.bound, self._prior, stored_input(self._body))
        chat = chat_body(self._body, self._conversation.items())
        return replace(chat_request(engine, chat), body=chat)

    @property
    def conversation(self) -> Conversation:
        if self._conversation is None:
            raise RuntimeError("the pipeline admitted a response it did not prepare")
        return self._conversation


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
