"""Stored Responses API responses in PostgreSQL, shared by every replica.

A response continuing another keeps only its own items and a link to the one it continued, so a chat of n turns is n
rows of one turn each, not a copy of every earlier turn in each (n²/2 turns). The rows a first response led to make a
thread, kept whole until the retention has passed since its latest response (a continuation must find every turn
before it), then deleted whole by the retention job. A save that keeps a thread longer is charged to its owner's daily
budget for that too: the thread's bytes times the share of the retention it adds, besides its own row's bytes, so
what one owner keeps alive stays within the budget times the retention's days however long a conversation goes on.
A save and a delete in a thread take the thread's row first, so neither links to, nor deletes, what the other needs.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store import json_pieces
from server.store.errors import StoreUnavailableError, is_transient
from server.store.responses import ConversationBound, StoredConversation, StoredResponse

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class _Texts:
    """A response's JSON columns as text, NULs replaced. The text is ASCII (non-ASCII characters escaped), so its
    length is its size in bytes. The context (the conversation before the response) is made only for a response
    that keeps it, the first of a thread: a continuation links to it instead."""

    response: str
    input_items: str
    context: str | None


def _json_texts(stored: StoredResponse, *, with_context: bool) -> _Texts:
    """Run in a worker thread (see json_pieces)."""
    response, input_items = (json_pieces.dumps(_without_nul(c)) for c in (stored.response, stored.input_items))
    return _Texts(response, input_items, _context_text(stored) if with_context else None)


def _context_text(stored: StoredResponse) -> str:
    return json_pieces.dumps(_without_nul(stored.context))


# The owner's response, unless deleted or its thread expired.
_VISIBLE = sql.SQL(
    "FROM responses r JOIN response_threads t ON t.id = r.thread_id "
    "WHERE r.id = %(id)s AND r.owner = %(owner)s AND NOT r.deleted AND t.expires_at > now()"
)

# A continuation's conversation, in one statement (one snapshot): the size the response's row records, then, only when
# within the bound, one row per response along the chain from the first to this one, each with its items (context,
# input and output, in order; context is empty except in a chain's first row) as text and their number, to check the
# chain is whole. The items are not taken apart and put together again in PostgreSQL: that took longer than the read.
# The depth guard only stops a chain that could not have been written.
_CONVERSATION = sql.SQL("""
WITH RECURSIVE leaf AS (
    SELECT r.id, r.conversation_items, r.conversation_bytes {visible}
), chain (id, previous_id, depth) AS (
    SELECT r.id, r.previous_id, 0 FROM responses r JOIN leaf ON r.id = leaf.id
    WHERE leaf.conversation_bytes <= %(bytes)s
    UNION ALL
    SELECT r.id, r.previous_id, c.depth + 1 FROM responses r JOIN chain c ON r.id = c.previous_id
    WHERE c.depth <= (SELECT conversation_items FROM leaf)
)
SELECT leaf.conversation_items, leaf.conversation_bytes, jsonb_array_length(turn.items), turn.items::text
FROM leaf LEFT JOIN (
    SELECT c.depth, r.context || r.input_items || coalesce(r.response -> 'output', '[]'::jsonb) AS items
    FROM chain c JOIN responses r ON r.id = c.id
) turn ON true
ORDER BY turn.depth DESC
""").format(visible=_VISIBLE)


def _joined(arrays: list[str]) -> str:
    """JSON arrays' texts as one array's: PostgreSQL writes each as `[...]`, brackets outermost, `[]` when empty."""
    return "[" + ", ".join(text[1:-1] for text in arrays if text != "[]") + "]"


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
        texts = await asyncio.to_thread(_json_texts, stored, with_context=stored.previous_id is None)
        async with self._connection() as conn, conn.transaction():
            charged = None
            if stored.previous_id is not None:
                charged = await self._continue_thread(conn, stored, texts)
            if charged is None:
                charged = await self._start_thread(conn, stored, texts)
            # Charged in the same transaction: a response is kept only with its bytes counted. The day is the
            # database's (replicas whose clocks differ agree on it), in UTC; the owner's earlier days go, so the
            # table holds a row per owner.
            await conn.execute(
                "INSERT INTO response_bytes (owner, day, bytes) VALUES (%s, (now() AT TIME ZONE 'UTC')::date, %s) "
                "ON CONFLICT (owner, day) DO UPDATE SET bytes = response_bytes.bytes + excluded.bytes",
                (stored.owner, charged),
            )
            await conn.execute(
                "DELETE FROM response_bytes WHERE owner = %s AND day < (now() AT TIME ZONE 'UTC')::date",
                (stored.owner,),
            )

    async def _continue_thread(
        self, conn: psycopg.AsyncConnection[Any], stored: StoredResponse, texts: _Texts
    ) -> int | None:
        """Add the response to the thread of the one it continues, keeping the thread until the response expires;
        returns the bytes to charge, or None when that thread is gone (expired, or the response deleted since it was
        read), and the response must keep its whole conversation itself."""
        # The thread's row is the lock every save and delete in the thread takes first: the check below then sees
        # whatever a delete before it did.
        cursor = await conn.execute(
            "SELECT t.id, t.expires_at, t.bytes FROM responses r JOIN response_threads t ON t.id = r.thread_id "
            "WHERE r.id = %s AND r.owner = %s AND t.expires_at > now() FOR UPDATE OF t",
            (stored.previous_id, stored.owner),
        )
        thread = await cursor.fetchone()
        if thread is None:
            return None
        thread_id, thread_bytes = str(thread[0]), int(thread[2])
        thread_expires: datetime = thread[1]
        cursor = await conn.execute("SELECT 1 FROM responses WHERE id = %s", (stored.previous_id,))
        if await cursor.fetchone() is None:
            return None
        own = len(texts.response) + len(texts.input_items)
        created = datetime.fromtimestamp(stored.created_at, UTC)
        expires = created + self._retention
        await conn.execute(
            "UPDATE response_threads SET expires_at = greatest(expires_at, %s), bytes = bytes + %s WHERE id = %s",
            (expires, own, thread_id),
        )
        await conn.execute(
            "INSERT INTO responses (id, owner, created_at, thread_id, previous_id, response, input_items, context, "
            "conversation_items, conversation_bytes) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, '[]'::jsonb, "
            "%s, %s)",
            (
                stored.id,
                stored.owner,
                created,
                thread_id,
                stored.previous_id,
                texts.response,
                texts.input_items,
                stored.items,
                stored.size,
            ),
        )
        return own + self._extending(thread_bytes, (expires - thread_expires).total_seconds())

    def _extending(self, thread_bytes: int, extension_s: float) -> int:
        """Keeping a thread longer costs what keeping it anew would, in proportion: continuing it soon after its last
        response costs little, continuing it just before it expires costs nearly its whole size again."""
        return math.ceil(thread_bytes * max(0.0, extension_s) / max(self._retention.total_seconds(), 1.0))

    async def keeping_longer(self, response_id: str, owner: str) -> int:
        """Checked before a continuation is generated, with the bytes spent today: alone, a day's first request could
        keep any thread alive for the retention again (charged past the budget, and the next day's budget whole)."""
        if "\x00" in response_id:
            return 0
        async with self._connection() as conn:
            cursor = await conn.execute(
                sql.SQL("SELECT t.bytes, extract(epoch FROM now() + %(retention)s - t.expires_at) {}").format(_VISIBLE),
                {"id": response_id, "owner": owner, "retention": self._retention},
            )
            row = await cursor.fetchone()
        return self._extending(int(row[0]), float(row[1])) if row is not None else 0

    async def _start_thread(self, conn: psycopg.AsyncConnection[Any], stored: StoredResponse, texts: _Texts) -> int:
        """Keep the response, with its whole conversation, as the first of a thread; returns the bytes to charge."""
        # A continuation whose thread is gone keeps its conversation after all: rare, so made only then.
        context = texts.context if texts.context is not None else await asyncio.to_thread(_context_text, stored)
        held = len(texts.response) + len(texts.input_items) + len(context)
        created = datetime.fromtimestamp(stored.created_at, UTC)
        await conn.execute(
            "INSERT INTO response_threads (id, owner, expires_at, bytes) VALUES (%s, %s, %s, %s)",
            (stored.id, stored.owner, created + self._retention, held),
        )
        await conn.execute(
            "INSERT INTO responses (id, owner, created_at, thread_id, response, input_items, context, "
            "conversation_items, conversation_bytes) VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s)",
            (
                stored.id,
                stored.owner,
                created,
                stored.id,
                texts.response,
                texts.input_items,
                context,
                stored.items,
                stored.size,
            ),
        )
        return held

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
        """One column of the owner's response; None when there is none."""
        if "\x00" in response_id:
            return None
        async with self._connection() as conn:
            # As text, parsed in a worker thread a piece at a time (see json_pieces): input items may be megabytes.
            cursor = await conn.execute(
                sql.SQL("SELECT r.{}::text {}").format(sql.Identifier(column), _VISIBLE),
                {"id": response_id, "owner": owner},
            )
            row = await cursor.fetchone()
        return await asyncio.to_thread(json_pieces.loads, row[0]) if row is not None else None

    async def conversation(self, response_id: str, owner: str) -> StoredConversation | None:
        """The size from the response's own row; the items (as JSON text, parsed by the caller) only when within the
        bound, so a conversation too large to continue is never read."""
        if "\x00" in response_id:
            return None
        async with self._connection() as conn:
            cursor = await conn.execute(_CONVERSATION, {"id": response_id, "owner": owner, "bytes": self.bound.bytes})
            rows = await cursor.fetchall()
        if not rows:
            return None
        items, size = rows[0][0], rows[0][1]
        if size > self.bound.bytes:
            return StoredConversation(items, size, None)
        read = sum(row[2] or 0 for row in rows)
        if read != items:
            # A row of the chain is missing, which no save or delete leaves: better a 404 than half a conversation.
            log.error("stored response %s: its chain holds %d items, not %d", response_id, read, items)
            return None
        return StoredConversation(items, size, _joined([row[3] for row in rows]))

    async def delete(self, response_id: str, owner: str) -> bool:
        """Delete the owner's response. While later responses continue it, it is only hidden, trimmed to what they
        continue from (its output; its input is their history too): they go with their thread. A row that nothing
        continues is deleted, and so is each hidden one before it that then leads nowhere."""
        if "\x00" in response_id:
            return False
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(
                sql.SQL("SELECT t.id {} FOR UPDATE OF t").format(_VISIBLE),
                {"id": response_id, "owner": owner},
            )
            if await cursor.fetchone() is None:
                return False
            cursor = await conn.execute(
                "UPDATE responses SET deleted = true, response = jsonb_build_object('output', response -> 'output') "
                "WHERE id = %s AND NOT deleted",
                (response_id,),
            )
            if cursor.rowcount == 0:  # deleted by another request while this one waited for the thread
                return False
            target: str | None = response_id
            while target is not None:
                cursor = await conn.execute(
                    "DELETE FROM responses r WHERE r.id = %s AND r.deleted AND NOT EXISTS "
                    "(SELECT 1 FROM responses c WHERE c.previous_id = r.id) RETURNING r.previous_id",
                    (target,),
                )
                row = await cursor.fetchone()
                target = row[0] if row is not None else None
            return True

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
