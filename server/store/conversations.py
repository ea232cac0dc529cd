"""Reading stored conversations back: only the key that wrote a conversation sees it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store.errors import StoreUnavailableError


@dataclass(frozen=True, slots=True)
class StoredMessage:
    request_id: str
    role: str
    content: str
    created_at: datetime


class ConversationStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def messages(self, conversation_id: str, key_id: str | None) -> list[StoredMessage]:
        """The conversation's messages in order; empty if it does not exist or another key wrote it."""
        if "\x00" in conversation_id:  # cannot have been stored: PostgreSQL text holds no NUL
            return []
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=class_row(StoredMessage)) as cur:
                await cur.execute(
                    "SELECT request_id, role, content, created_at FROM conversation_messages "
                    "WHERE conversation_id = %s AND key_id IS NOT DISTINCT FROM %s ORDER BY id",
                    (conversation_id, key_id),
                )
                return await cur.fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError) as exc:
            raise StoreUnavailableError(f"PostgreSQL is unreachable ({type(exc).__name__})") from exc
