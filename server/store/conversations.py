"""Reading stored conversations back: only the key that wrote a conversation sees it, a page at a time.

A conversation grows with every request filed under its id (each files its whole prompt again), so it is read in pages
of at most `limit` messages and about PAGE_BYTES of text: a key that grew one to gigabytes cannot make a read of it
cost a replica its memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store.errors import StoreUnavailableError

PAGE_BYTES = 4 * 1024 * 1024
# A message's id: the server's request id that filed it and its place in that request's messages.
_MESSAGE_ID = re.compile(r"([0-9a-f]{32})\.([0-9]{1,9})")

# The messages after a cursor, each with the text of those before it in the page, so a page stops near PAGE_BYTES
# without PostgreSQL sending (or detoasting) the text past it; octet_length reads a stored text's size, not the text.
_PAGE = sql.SQL("""
SELECT request_id, position, role, CASE WHEN before < %(bytes)s THEN content END AS content, created_at FROM (
    SELECT id, request_id, position, role, content, created_at,
        coalesce(sum(octet_length(content)) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING EXCLUDE CURRENT ROW), 0)
            AS before
    FROM conversation_messages
    WHERE conversation_id = %(conversation)s AND key_id IS NOT DISTINCT FROM %(key)s AND id > {after}
    ORDER BY id LIMIT %(rows)s
) page ORDER BY id
""")
_FROM_START = sql.SQL("0")
_AFTER = sql.SQL(
    "(SELECT id FROM conversation_messages WHERE conversation_id = %(conversation)s "
    "AND key_id IS NOT DISTINCT FROM %(key)s AND request_id = %(request)s AND position = %(position)s)"
)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    request_id: str
    position: int
    role: str
    content: str | None  # None: past the page's bytes
    created_at: datetime

    @property
    def id(self) -> str:
        return f"{self.request_id}.{self.position}"


@dataclass(frozen=True, slots=True)
class MessagePage:
    messages: list[StoredMessage]
    has_more: bool


class ConversationStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def messages(
        self, conversation_id: str, key_id: str | None, *, after: str | None = None, limit: int = 100
    ) -> MessagePage:
        """A page of the conversation's messages in order, after the message `after` names: at most `limit` of them
        and PAGE_BYTES of text (at least one message); empty if the conversation does not exist, another key wrote
        it, or `after` names no message of it."""
        if "\x00" in conversation_id:  # cannot have been stored: PostgreSQL text holds no NUL
            return MessagePage([], False)
        params: dict[str, object] = {"conversation": conversation_id, "key": key_id, "bytes": PAGE_BYTES}
        params["rows"] = limit + 1  # one more tells whether more follow
        if after is None:
            query = _PAGE.format(after=_FROM_START)
        elif (cursor := _MESSAGE_ID.fullmatch(after)) is not None:
            query = _PAGE.format(after=_AFTER)
            params["request"], params["position"] = cursor.group(1), int(cursor.group(2))
        else:
            return MessagePage([], False)
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=class_row(StoredMessage)) as cur:
                await cur.execute(query, params)
                rows = await cur.fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError) as exc:
            raise StoreUnavailableError(f"PostgreSQL is unreachable ({type(exc).__name__})") from exc
        page: list[StoredMessage] = []
        for row in rows[:limit]:
            if row.content is None:
                break
            page.append(row)
        return MessagePage(page, has_more=len(rows) > len(page))
