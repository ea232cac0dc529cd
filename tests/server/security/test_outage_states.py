"""Threat: a flood of made-up bearer tokens. Every miss queried PostgreSQL; the pool's 8 connections ran out, the
2 s checkout timeouts were taken for an outage, and the outage state (shared with the audit writer) let every key
validated in the last 600 s through without a check: a key revoked on another replica kept working for up to 600 s,
not the 30 s the docs promise. Only failures to reach PostgreSQL count as an outage now, each use of it keeps its
own state, lookups are bounded and misses remembered, so a slow or flooded database never extends a revoked key."""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from server.access.api_keys import InvalidKeyError, KeyVerifier
from server.store.keys import KeyRecord, KeyStore
from tests.server.security.conftest import Plane


class CountingStore(KeyStore):
    """The real store, counting the lookups that reach PostgreSQL."""

    def __init__(self, pool) -> None:
        super().__init__(pool)
        self.lookups = 0

    async def find(self, key: str) -> tuple[KeyRecord, bytes] | None:
        self.lookups += 1
        return await super().find(key)


def _made_up_key() -> str:
    return "gsk-" + secrets.token_urlsafe(32)


async def test_a_repeated_unknown_key_is_looked_up_once_and_the_memory_of_misses_is_bounded(pool) -> None:
    store = CountingStore(pool)
    verifier = KeyVerifier(store, cache_ttl_s=30, outage_grace_s=600, miss_cache_size=2)
    unknown = _made_up_key()
    for _ in range(50):
        with pytest.raises(InvalidKeyError):
            await verifier.verify(unknown)
    assert store.lookups == 1
    others = [_made_up_key() for _ in range(2)]
    for key in others:
        with pytest.raises(InvalidKeyError):
            await verifier.verify(key)
    with pytest.raises(InvalidKeyError):
        await verifier.verify(unknown)  # pushed out by the two newer misses: asked again
    assert store.lookups == 4


async def test_a_token_not_shaped_like_a_key_never_reaches_postgres(pool) -> None:
    store = CountingStore(pool)
    verifier = KeyVerifier(store, cache_ttl_s=30, outage_grace_s=600)
    for token in ("x", "gsk-short", "sk-" + "a" * 44, _made_up_key() + "!", "\x00" * 47):
        with pytest.raises(InvalidKeyError):
            await verifier.verify(token)
    assert store.lookups == 0


def test_a_flood_on_a_slow_database_does_not_extend_a_revoked_keys_life(plane: Plane) -> None:
    created = plane.create_key()
    key = created["key"]
    assert plane.chat(key).status_code == 200
    validated_at = time.monotonic()
    plane.sql("UPDATE api_keys SET revoked_at = now() WHERE id = %s", created["id"])  # revoked by another replica

    def made_up(_: int) -> int:
        r = httpx.get(f"{plane.url}/v1/models", headers={"Authorization": f"Bearer {_made_up_key()}"}, timeout=30)
        return r.status_code

    # A database that answers slowly: every key lookup waits on a lock while the flood comes in.
    with psycopg.connect(plane.postgres.url(plane.database)) as locker, ThreadPoolExecutor(48) as pool:
        locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        flood = [pool.submit(made_up, i) for i in range(48)]
        time.sleep(max(0.0, validated_at + 2.5 - time.monotonic()))  # past the key cache TTL (2 s) and pool timeout
        during = plane.chat(key)
        locker.rollback()
        statuses = sorted({f.result() for f in flood})
    assert during.status_code == 503 and during.json()["error"]["code"] == "key_store_busy", during.text
    assert statuses in ([401, 503], [503], [401]), statuses
    assert plane.chat(key).status_code == 401
    log = plane.server.log()
    assert "postgresql (key checks) is unreachable" not in log, "a slow database is not an outage"


async def test_a_revocation_racing_a_lookup_on_the_revoking_replica_is_not_undone(pool) -> None:
    class PausingStore(KeyStore):
        """Holds the first lookup's answer until told, as a slow round trip would."""

        def __init__(self, pool) -> None:
            super().__init__(pool)
            self.answered, self.go_on = asyncio.Event(), asyncio.Event()

        async def find(self, key: str) -> tuple[KeyRecord, bytes] | None:
            found = await super().find(key)
            if not self.go_on.is_set():
                self.answered.set()
                await self.go_on.wait()
            return found

    store = PausingStore(pool)
    record, key = await store.create("k")
    verifier = KeyVerifier(store, cache_ttl_s=60, outage_grace_s=600)
    in_flight = asyncio.create_task(verifier.verify(key))
    await store.answered.wait()  # the lookup read the key as active...
    await store.revoke(record.id)  # ...and the admin API revokes it on this replica meanwhile
    verifier.forget(record.id)
    store.go_on.set()
    with pytest.raises(InvalidKeyError):
        await in_flight
    with pytest.raises(InvalidKeyError):
        await verifier.verify(key)
