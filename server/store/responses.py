"""Stored Responses API responses: what `GET /v1/responses/{id}` returns and what `previous_response_id` continues.

A stored response is owned by whoever created it (an API key, the admin key, or everyone when auth is off): any
other owner finds nothing, exactly as for an id that never existed. It is kept for the retention the settings give,
in PostgreSQL when a database is configured (shared by every replica; the retention job deletes expired rows), else in
a bounded in-memory store.

A continuation reads the size of its conversation (recorded with each response) before any item, and the items only
within the bound on what a response may continue (items and bytes). What bounds what one owner stores is a daily
budget of bytes (`stored_today`). The PostgreSQL store is in responses_postgres.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from server.store import json_pieces


def json_size(value: object) -> int:
    """The bytes of `value` as compact JSON (UTF-8): how a conversation's size is counted."""
    return json_pieces.compact_size(value)


@dataclass(frozen=True, slots=True)
class ConversationBound:
    """The largest conversation a response may continue: its items (every kind, reasoning items too) and their bytes
    as JSON (`json_size`). The defaults are the settings' (GGUFSTACK_MAX_MESSAGES and
    GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES)."""

    items: int = 1024
    bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as JSON: the reply object, the request's own input items, and the items before them (what
    `previous_response_id` chained in: earlier inputs and outputs); the size of that conversation (context, input and
    output) as `json_size` counts it; and the stored response it continued, if any (a store that links to it need
    not keep the context again)."""

    id: str
    owner: str
    created_at: float  # unix time
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]]
    size: int
    previous_id: str | None = None

    @property
    def items(self) -> int:
        return len(self.context) + len(self.input_items) + len(self.response.get("output", []))

    def conversation(self) -> list[dict[str, Any]]:
        """Every item a response continuing this one starts from: the context, the input, the output."""
        return [*self.context, *self.input_items, *self.response.get("output", [])]


@dataclass(frozen=True, slots=True)
class StoredConversation:
    """What a response continuing a stored one starts from (its context, input and output items, in order): their
    number and size always, the items themselves only when the size is within the store's bound. From PostgreSQL
    they come as JSON text, for the reader to parse off the event loop."""

    items: int
    size: int
    content: str | list[dict[str, Any]] | None

    def load(self) -> list[dict[str, Any]]:
        if self.content is None:
            raise ValueError("the conversation is larger than the store reads")
        if isinstance(self.content, str):
            loaded: list[dict[str, Any]] = json_pieces.loads(self.content)
            return loaded
        return self.content


NO_CONVERSATION = StoredConversation(0, 0, [])


class ResponseStore(Protocol):
    # False: the server keeps no response (GGUFSTACK_RESPONSES_STORE off), whatever a request's `store` says.
    keeps: bool
    bound: ConversationBound
    # The bytes an API key's responses may take in a day (UTC); 0: no budget. The serving layer keeps to it.
    max_bytes_per_key_per_day: int

    async def save(self, stored: StoredResponse) -> None: ...

    # Each read fetches only what its use needs: a stored response may be the tail of a long conversation.
    async def conversation(self, response_id: str, owner: str) -> StoredConversation | None:
        """The conversation a continuation of the response starts from; its items only within `bound.bytes`."""
        ...

    async def response(self, response_id: str, owner: str) -> dict[str, Any] | None:
        """The response object, as `GET /v1/responses/{id}` returns it."""
        ...

    async def input_items(self, response_id: str, owner: str) -> list[dict[str, Any]] | None:
        """The request's own input items (not those it continued)."""
        ...

    async def delete(self, response_id: str, owner: str) -> bool: ...

    async def stored_today(self, owner: str) -> int:
        """The bytes (`StoredResponse.size`) of the owner's responses saved today (UTC), deleted ones included."""
        ...

    async def keeping_longer(self, response_id: str, owner: str) -> int:
        """What a continuation of the owner's response, saved now, would be charged besides its own bytes for keeping
        what it continues longer: 0 in a store that charges no such thing, or when there is no such response."""
        ...


class NoResponseStore:
    """The store when the operator keeps no response: nothing is saved, nothing is found."""

    keeps = False
    max_bytes_per_key_per_day = 0

    def __init__(self, bound: ConversationBound | None = None) -> None:
        self.bound = bound or ConversationBound()

    async def save(self, stored: StoredResponse) -> None:
        return None

    async def conversation(self, response_id: str, owner: str) -> StoredConversation | None:
        return None

    async def response(self, response_id: str, owner: str) -> dict[str, Any] | None:
        return None

    async def input_items(self, response_id: str, owner: str) -> list[dict[str, Any]] | None:
        return None

    async def delete(self, response_id: str, owner: str) -> bool:
        return False

    async def stored_today(self, owner: str) -> int:
        return 0

    async def keeping_longer(self, response_id: str, owner: str) -> int:
        return 0


# Conversations of the largest size a response may continue that the in-memory store holds at most. Without a
# database nothing else bounds what it holds (there are no keys, so no budget): a client sending large inputs could
# otherwise have GGUFSTACK_RESPONSES_MEMORY_MAX of them kept, gigabytes of JSON and several times that as objects.
MEMORY_CONVERSATIONS = 32


class MemoryResponseStore:
    """The store without a database: the most recently used `max_items` responses, each for `retention_s`, holding
    at most MEMORY_CONVERSATIONS times the bound's bytes, each response counted with its whole conversation (what it
    alone may keep in memory; a continuation shares its earlier items with the response it continued). Per replica: a
    continuation must reach the replica that answered (or configure PostgreSQL)."""

    keeps = True
    max_bytes_per_key_per_day = 0

    def __init__(self, *, max_items: int, retention_s: float, bound: ConversationBound | None = None) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._max_items = max_items
        self._retention_s = retention_s
        self.bound = bound or ConversationBound()
        self._max_bytes = MEMORY_CONVERSATIONS * self.bound.bytes
        self._bytes = 0

    async def save(self, stored: StoredResponse) -> None:
        self._remove(stored.id)
        self._items[stored.id] = stored
        self._bytes += stored.size
        while len(self._items) > self._max_items or (self._bytes > self._max_bytes and len(self._items) > 1):
            self._remove(next(iter(self._items)))

    def _remove(self, response_id: str) -> None:
        gone = self._items.pop(response_id, None)
        if gone is not None:
            self._bytes -= gone.size

    def _found(self, response_id: str, owner: str) -> StoredResponse | None:
        found = self._items.get(response_id)
        if found is None or found.owner != owner:
            return None
        if found.created_at + self._retention_s <= time.time():
            self._remove(response_id)
            return None
        self._items.move_to_end(response_id)
        return found

    async def conversation(self, response_id: str, owner: str) -> StoredConversation | None:
        found = self._found(response_id, owner)
        if found is None:
            return None
        content = found.conversation() if found.size <= self.bound.bytes else None
        return StoredConversation(found.items, found.size, content)

    async def response(self, response_id: str, owner: str) -> dict[str, Any] | None:
        found = self._found(response_id, owner)
        return found.response if found is not None else None

    async def input_items(self, response_id: str, owner: str) -> list[dict[str, Any]] | None:
        found = self._found(response_id, owner)
        return found.input_items if found is not None else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if self._found(response_id, owner) is None:
            return False
        self._remove(response_id)
        return True

    async def stored_today(self, owner: str) -> int:
        # Without a database there are no API keys (only the admin key, or open access), so no budget to keep.
        return 0

    async def keeping_longer(self, response_id: str, owner: str) -> int:
        return 0
