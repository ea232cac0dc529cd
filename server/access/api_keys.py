"""API keys: issue, verify, revoke, and sum a key's use.

A key is 256 random bits, so a plain SHA-256 of it is as good as a slow password hash: only that hash and a short
prefix (to tell keys apart in a listing) are stored, and the key is shown once, when it is issued. Verification
looks the hash up and compares it with `hmac.compare_digest`.

Validations are remembered in memory for `cache_ttl_s`, so most requests do not touch PostgreSQL: a revoked key keeps
working for at most that long on replicas other than the one that revoked it (at once on that one). While PostgreSQL
is unreachable, a key validated within the last `outage_grace_s` keeps working; an unknown key then gets 503, since
it cannot be checked.

A flood of made-up bearer tokens must neither reach PostgreSQL unbounded nor pass for an outage, since an outage is
what stretches a revoked key's life from `cache_ttl_s` to `outage_grace_s`. So: a token that is not shaped like a key
is refused without a query; a miss is remembered briefly (a bounded map); at most a few lookups run at once, so the
flood cannot take the connection pool from the audit writer; and only a failure to reach PostgreSQL counts as an
outage. A database that is merely slow makes an unchecked key wait and then get 503: never a free pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg import AsyncCursor
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store.errors import is_connection_failure, is_transient
from server.store.outage import Outage

KEY_PREFIX = "gsk-"
# What create() issues; anything else names no key and is not sent to PostgreSQL (which refuses NUL, for one).
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")
# What new_key() issues: anything else cannot be a key, and is refused without asking PostgreSQL.
_KEY_SHAPE = re.compile(r"gsk-[A-Za-z0-9_-]{43}")
DISPLAY_PREFIX_LENGTH = 12


T = TypeVar("T")


class StoreUnavailableError(Exception):
    """PostgreSQL cannot be reached; the message names no host, user or secret."""


class StoreBusyError(StoreUnavailableError):
    """PostgreSQL is up but did not answer in time (a statement timeout, a lock, no room): not an outage."""


class InvalidKeyError(Exception):
    """No such key, or it was revoked."""


class KeyCheckUnavailableError(Exception):
    """PostgreSQL is unreachable and the key was not validated recently enough to be trusted without it."""


class KeyCheckBusyError(KeyCheckUnavailableError):
    """The key needs a lookup and PostgreSQL (or this replica's share of lookups) is too busy to make it in time."""


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


@dataclass(slots=True)
class _Validation:
    record: KeyRecord
    key_hash: bytes
    at: float


class _RecentMisses:
    """Hashes that named no key, each for `ttl_s`; the oldest are forgotten beyond `max_entries`."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._at: OrderedDict[bytes, float] = OrderedDict()

    def add(self, digest: bytes, now: float) -> None:
        self._at[digest] = now
        self._at.move_to_end(digest)
        while len(self._at) > self._max_entries:
            self._at.popitem(last=False)

    def __call__(self, digest: bytes, now: float) -> bool:
        at = self._at.get(digest)
        if at is None:
            return False
        if now - at < self._ttl_s:
            return True
        del self._at[digest]
        return False


class KeyVerifier:
    """Turns a presented key into its record, through a short-lived in-memory cache of validations (and of misses)."""

    def __init__(
        self,
        store: KeyStore,
        *,
        cache_ttl_s: float,
        outage_grace_s: float,
        outage: Outage | None = None,
        max_lookups: int = 4,
        lookup_wait_s: float = 2.0,
        miss_cache_size: int = 10_000,
    ) -> None:
        self._store = store
        self._cache_ttl_s = cache_ttl_s
        self._outage_grace_s = max(outage_grace_s, cache_ttl_s)
        self._outage = outage or Outage("postgresql", use="key checks")
        self._validated: dict[bytes, _Validation] = {}
        self._misses = _RecentMisses(cache_ttl_s, miss_cache_size)
        # Fewer than the pool's connections, so lookups alone never leave the audit writer without one.
        self._lookups = asyncio.Semaphore(max_lookups)
        self._lookup_wait_s = lookup_wait_s
        # key id -> when this replica revoked it; a lookup that started before then may have read the key as active.
        self._revoked: dict[str, float] = {}

    async def verify(self, key: str) -> KeyRecord:
        """Raises InvalidKeyError, or KeyCheckUnavailableError (KeyCheckBusyError) when PostgreSQL cannot be asked."""
        if not _KEY_SHAPE.fullmatch(key):
            raise InvalidKeyError("invalid API key")
        digest = hash_key(key)
        cached = self._validated.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached.at < self._cache_ttl_s:
            return cached.record
        if self._misses(digest, now):
            raise InvalidKeyError("invalid API key")
        if not self._outage.should_try():
            return self._during_outage(cached, now)
        try:
            found = await self._lookup(key)
        except StoreBusyError:
            raise KeyCheckBusyError("the key store is busy") from None
        except StoreUnavailableError as exc:
            self._outage.failed(exc, "only keys validated recently are accepted")
            return self._during_outage(cached, now)
        self._outage.succeeded()
        if found is None:
            self._validated.pop(digest, None)
            self._misses.add(digest, now)
            raise InvalidKeyError("invalid API key")
        record, stored_hash = found
        if not hmac.compare_digest(stored_hash, digest):
            raise InvalidKeyError("invalid API key")
        if self._revoked.get(record.id, -math.inf) >= now:
            raise InvalidKeyError("invalid API key")  # revoked here while the lookup was under way
        self._validated[digest] = _Validation(record, digest, now)
        if len(self._validated) > 10_000:
            self._forget_expired(now)
        return record

    async def _lookup(self, key: str) -> tuple[KeyRecord, bytes] | None:
        try:
            async with asyncio.timeout(self._lookup_wait_s):
                await self._lookups.acquire()
        except TimeoutError:
            raise StoreBusyError("too many key lookups are waiting") from None
        try:
            return await self._store.find(key)
        finally:
            self._lookups.release()

    def _during_outage(self, cached: _Validation | None, now: float) -> KeyRecord:
        if cached is not None and now - cached.at < self._outage_grace_s:
            return cached.record
        raise KeyCheckUnavailableError("the key store is unreachable")

    def forget(self, key_id: str) -> None:
        """Drop a revoked key's validation at once (on the replica that revoked it), and any lookup's under way."""
        now = time.monotonic()
        # Long past any lookup that could still be under way (a few seconds at most); revocations are rare.
        self._revoked = {k: at for k, at in self._revoked.items() if now - at < 600}
        self._revoked[key_id] = now
        for digest in [d for d, v in self._validated.items() if v.record.id == key_id]:
            del self._validated[digest]

    def _forget_expired(self, now: float) -> None:
        for digest in [d for d, v in self._validated.items() if now - v.at >= self._outage_grace_s]:
            del self._validated[digest]
