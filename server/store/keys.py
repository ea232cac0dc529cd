"""The api_keys table: issue, list, revoke and sum a key's use, storing only a key's SHA-256 and a short prefix.

A key is 256 random bits, so a plain SHA-256 of it is as good as a slow password hash. The key itself is shown once,
when it is issued.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg import AsyncCursor
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store.errors import StoreBusyError, StoreUnavailableError, is_connection_failure, is_transient

KEY_PREFIX = "gsk-"
# What create() issues; anything else names no key and is not sent to PostgreSQL (which refuses NUL, for one).
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")
# What new_key() issues: anything else cannot be a key, and is refused without asking PostgreSQL.
KEY_SHAPE = re.compile(r"gsk-[A-Za-z0-9_-]{43}")
DISPLAY_PREFIX_LENGTH = 12

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    owner: str | None
    prefix: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyUsage:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    first_request: datetime | None
    last_request: datetime | None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets of any length (for the admin key)."""
    return hmac.compare_digest(hash_key(presented), hash_key(expected))


# Interpolated into queries below: a constant, never input.
_COLUMNS = "id, name, owner, prefix, models, rpm, tpm, created_at, revoked_at"


class KeyStore:
    """The api_keys table; every method needs PostgreSQL."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def _cursor(self, row: type[T]) -> AsyncIterator[AsyncCursor[T]]:
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=class_row(row)) as cur:
                yield cur
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            if is_connection_failure(exc):
                raise StoreUnavailableError(f"PostgreSQL is unreachable ({type(exc).__name__})") from exc
            if is_transient(exc):
                raise StoreBusyError(f"PostgreSQL is busy ({type(exc).__name__})") from exc
            raise

    async def create(
        self,
        name: str,
        *,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        owner: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Issue a key; returns its record and the key itself, which is never stored."""
        key = new_key()
        key_id = f"key_{secrets.token_hex(8)}"
        async with self._cursor(KeyRecord) as cur:
            await cur.execute(
                "INSERT INTO api_keys (id, name, owner, prefix, key_hash, models, rpm, tpm) "  # noqa: S608 - constant
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (key_id, name, owner, key[:DISPLAY_PREFIX_LENGTH], hash_key(key), models, rpm, tpm),
            )
            record = await cur.fetchone()
        assert record is not None
        return record, key

    async def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        async with self._cursor(KeyRecord) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at, id")  # noqa: S608
            return await cur.fetchall()

    async def get(self, key_id: str) -> KeyRecord | None:
        if not _KEY_ID.fullmatch(key_id):
            return None
        async with self._cursor(KeyRecord) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,))  # noqa: S608
            return await cur.fetchone()

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key (idempotent: the first revocation time stays); None if there is no such key."""
        if not _KEY_ID.fullmatch(key_id):
            return None
        async with self._cursor(KeyRecord) as cur:
            await cur.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "  # noqa: S608 - constant columns
                f"WHERE id = %s RETURNING {_COLUMNS}",
                (key_id,),
            )
            return await cur.fetchone()

    async def find(self, key: str) -> tuple[KeyRecord, bytes] | None:
        """The active key whose hash matches `key`, with its stored hash."""
        async with self._cursor(KeyRecord) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",  # noqa: S608
                (hash_key(key),),
            )
            record = await cur.fetchone()
        return (record, hash_key(key)) if record is not None else None

    async def usage(self, key_id: str) -> KeyUsage:
        async with self._cursor(KeyUsage) as cur:
            await cur.execute(
                "SELECT count(*) AS requests, coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens, "
                "coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens, "
                "count(*) FILTER (WHERE cache_hit) AS cache_hits, "
                "min(created_at) AS first_request, max(created_at) AS last_request "
                "FROM audit_log WHERE key_id = %s",
                (key_id,),
            )
            usage = await cur.fetchone()
        assert usage is not None
        return usage
