"""Stored Responses API responses: what `GET /v1/responses/{id}` returns and what `previous_response_id` continues.

A stored response is owned by whoever created it (an API key, the admin key, or everyone when auth is off): any
other owner finds nothing, exactly as for an id that never existed. It is kept for the retention the settings give,
in PostgreSQL when a database is configured (shared by every replica; the retention job deletes expired rows), else in
a bounded in-memory store.

Each response is kept with the whole conversation before it, so a continuation needs one read; what keeps that from
growing without end is the bound on the conversation a response may continue (items and bytes), which the store
records with each response so a continuation learns its size before it reads a byte of it. What bounds the rows one
owner adds is a daily budget of bytes (`stored_today`): a continuation of a long conversation writes all of it again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store import json_pieces
from server.store.errors import StoreUnavailableError, is_transient


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
    `previous_response_id` chained in: earlier inputs and outputs), so a continuation needs one read; and the size of
    that conversation (context, input and output) as `json_size` counts it."""

    id: str
    owner: str
    created_at: float  # unix time
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]]
    size: int

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


class MemoryResponseStore:
    """The store without a database: the most recently used `max_items` responses, each for `retention_s`. Per
    replica: a continuation must reach the replica that answered (or configure PostgreSQL)."""

    keeps = True
    max_bytes_per_key_per_day = 0

    def __init__(self, *, max_items: int, retention_s: float, bound: ConversationBound | None = None) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._max_items = max_items
        self._retention_s = retention_s
        self.bound = bound or ConversationBound()

    async def save(self, stored: StoredResponse) -> None:
        self._items[stored.id] = stored
        self._items.move_to_end(stored.id)
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)

    def _found(self, response_id: str, owner: str) -> StoredResponse | None:
        found = self._items.get(response_id)
        if found is None or found.owner != owner:
            return None
        if found.created_at + self._retention_s <= time.time():
            del self._items[response_id]
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
        del self._items[response_id]
        return True

    async def stored_today(self, owner: str) -> int:
        # Without a database there are no API keys (only the admin key, or open access), so no budget to keep.
        return 0


def _without_nul(value: object) -> object:
    """`value` with every NUL character in its strings (keys too) replaced: jsonb holds none, and one in a prompt must
    not cost the whole response. Replaced in the strings, not in the JSON text, where `\\u0000` may be what a user
    wrote (a backslash, then u0000) and must come back as written."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _json_texts(stored: StoredResponse) -> tuple[str, str, str]:
    """The response's three JSON columns as text, NULs replaced: run in a worker thread (see json_pieces)."""
    response, input_items, context = (
        json_pieces.dumps(_without_nul(column)) for column in (stored.response, stored.input_items, stored.context)
    )
    return response, input_items, context


class PostgresResponseStore:
    keeps = True

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        retention_s: float,
        bound: ConversationBound | None = None,
        max_bytes_per_key_per_day: int = 0,
    ) -> None:
        self._pool = pool
        self._retention = timedelta(seconds=retention_s)
        self.bound = bound or ConversationBound()
        self.max_bytes_per_key_per_day = max_bytes_per_key_per_day

    async def save(self, stored: StoredResponse) -> None:
        created = datetime.fromtimestamp(stored.created_at, UTC)
        response, input_items, context = await asyncio.to_thread(_json_texts, stored)
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO responses (id, owner, created_at, expires_at, response, input_items, context, "
                "conversation_items, conversation_bytes) "
                "VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s)",
                (
                    stored.id,
                    stored.owner,
                    created,
                    created + self._retention,
                    response,
                    input_items,
                    context,
                    stored.items,
                    stored.size,
                ),
            )
            # Charged in the same transaction: a response is kept only with its bytes counted. The day is the
            # database's (replicas whose clocks differ agree on it), in UTC; the owner's earlier days go, so the
            # table holds a row per owner.
            await conn.execute(
                "INSERT INTO response_bytes (owner, day, bytes) VALUES (%s, (now() AT TIME ZONE 'UTC')::date, %s) "
                "ON CONFLICT (owner, day) DO UPDATE SET bytes = response_bytes.bytes + excluded.bytes",
                (stored.owner, stored.size),
            )
            await conn.execute(
                "DELETE FROM response_bytes WHERE owner = %s AND day < (now() AT TIME ZONE 'UTC')::date",
                (stored.owner,),
            )

    async def stored_today(self, owner: str) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT bytes FROM response_bytes WHERE owner = %s AND day = (now() AT TIME ZONE 'UTC')::date",
                (owner,),
            )
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def response(self, response_id: str, owner: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._column("response", response_id, owner)
        return found

    async def input_items(self, response_id: str, owner: str) -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] | None = await self._column("input_items", response_id, owner)
        return found

    async def _column(self, column: Literal["response", "input_items"], response_id: str, owner: str) -> Any:
        """One column of the owner's unexpired response; None when there is none."""
        if "\x00" in response_id:
            return None
        async with self._connection() as conn:
            # As text, parsed in a worker thread a piece at a time (see json_pieces): input items may be megabytes.
            cursor = await conn.execute(
                sql.SQL("SELECT {}::text FROM responses WHERE id = %s AND owner = %s AND expires_at > now()").format(
                    sql.Identifier(column)
                ),
                (response_id, owner),
            )
            row = await cursor.fetchone()
        return await asyncio.to_thread(json_pieces.loads, row[0]) if row is not None else None

    async def conversation(self, response_id: str, owner: str) -> StoredConversation | None:
        """One read: the size from the row's own columns; the items (as JSON text, parsed by the caller) only when
        within the bound, so a conversation too large to continue is never shipped out of PostgreSQL."""
        if "\x00" in response_id:
            return None
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT conversation_items, conversation_bytes, CASE WHEN conversation_bytes <= %s THEN "
                "(context || input_items || coalesce(response -> 'output', '[]'::jsonb))::text END FROM responses "
                "WHERE id = %s AND owner = %s AND expires_at > now()",
                (self.bound.bytes, response_id, owner),
            )
            row = await cursor.fetchone()
        return StoredConversation(row[0], row[1], row[2]) if row is not None else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if "\x00" in response_id:
            return False
        async with self._connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM responses WHERE id = %s AND owner = %s AND expires_at > now()", (response_id, owner)
            )
            return cursor.rowcount > 0

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; PostgreSQL down or busy is a StoreUnavailableError (a 503) naming no host or secret."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            if is_transient(exc):
                raise StoreUnavailableError(f"PostgreSQL is unavailable ({type(exc).__name__})") from exc
            raise
