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
import hmac
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from server.store.errors import StoreBusyError, StoreUnavailableError
from server.store.keys import KEY_SHAPE, KeyRecord, KeyStore, hash_key
from server.store.outage import Outage


class InvalidKeyError(Exception):
    """No such key, or it was revoked."""


class KeyCheckUnavailableError(Exception):
    """PostgreSQL is unreachable and the key was not validated recently enough to be trusted without it."""


class KeyCheckBusyError(KeyCheckUnavailableError):
    """The key needs a lookup and PostgreSQL (or this replica's share of lookups) is too busy to make it in time."""


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
        if not KEY_SHAPE.fullmatch(key):
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
