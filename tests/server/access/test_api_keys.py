"""API keys on a real PostgreSQL: only a hash is stored, revocation works, and validations outlive a short outage."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from server.access.api_keys import InvalidKeyError, KeyCheckUnavailableError, KeyVerifier
from server.store.keys import KeyStore, same_secret
from server.store.outage import Outage
from server.store.writer import AuditRow, AuditWriter, Record


async def test_a_key_is_stored_as_a_hash_and_a_prefix_only(pool) -> None:
    record, key = await KeyStore(pool).create("team-a", models=["m1"], rpm=10, tpm=1000, owner="alice")
    assert key.startswith("gsk-") and len(key) > 40
    assert record.prefix == key[:12] and record.models == ["m1"] and (record.rpm, record.tpm) == (10, 1000)
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT * FROM api_keys")
        rows = await cursor.fetchall()
    assert key not in repr(rows) and key[12:20] not in repr(rows)


async def test_verify_accepts_the_key_and_refuses_wrong_or_revoked_ones(pool) -> None:
    store = KeyStore(pool)
    record, key = await store.create("k")
    verifier = KeyVerifier(store, cache_ttl_s=0, outage_grace_s=0)
    assert (await verifier.verify(key)).id == record.id
    with pytest.raises(InvalidKeyError):
        await verifier.verify(key + "x")
    with pytest.raises(InvalidKeyError):
        await verifier.verify("gsk-" + "A" * 43)
    revoked = await store.revoke(record.id)
    assert revoked is not None and revoked.revoked_at is not None
    with pytest.raises(InvalidKeyError):
        await verifier.verify(key)
    assert await store.revoke("key_missing") is None
    assert [k.id for k in await store.list()] == [record.id]
    assert await store.list(include_revoked=False) == []


async def test_revocation_reaches_a_caching_replica_within_the_ttl(pool) -> None:
    store = KeyStore(pool)
    record, key = await store.create("k")
    other_replica = KeyVerifier(store, cache_ttl_s=60, outage_grace_s=60)
    await other_replica.verify(key)
    await store.revoke(record.id)
    assert (await other_replica.verify(key)).id == record.id, "within the TTL the cached validation stands"
    other_replica.forget(record.id)
    with pytest.raises(InvalidKeyError):
        await other_replica.verify(key)


async def test_recently_validated_keys_survive_a_postgres_outage(tmp_path_factory) -> None:
    from server.store.postgres import create_pool, migrate
    from tests.support.postgres import start_postgres

    own = start_postgres(tmp_path_factory.mktemp("pg-outage"))
    pool = create_pool(own.url())
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await migrate(conn)
        store = KeyStore(pool)
        _, seen = await store.create("seen")
        _, unseen = await store.create("unseen")
        verifier = KeyVerifier(store, cache_ttl_s=0, outage_grace_s=600, outage=Outage("postgresql", retry_after_s=0))
        await verifier.verify(seen)
        own.stop()
        assert (await verifier.verify(seen)).name == "seen"
        with pytest.raises(KeyCheckUnavailableError):
            await verifier.verify(unseen)
        own.start()
        deadline = time.monotonic() + 20
        while True:  # the pool reconnects with its own back-off
            try:
                assert (await verifier.verify(unseen)).name == "unseen"
                break
            except KeyCheckUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    finally:
        await pool.close()
        own.destroy()


async def test_usage_sums_the_audit_log(pool) -> None:
    store = KeyStore(pool)
    record, _ = await store.create("k")
    writer = AuditWriter(pool, max_queue=10)
    now = datetime.now(UTC)
    for i, hit in enumerate([False, False, True]):
        writer.submit(Record(AuditRow(f"r{i}", record.id, now, "chat", "m", "v", 10, 5, 12.0, 3.0, 200, hit)))
    await writer.drain(5)
    usage = await store.usage(record.id)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.cache_hits) == (3, 30, 15, 1)
    empty = await store.usage("key_none")
    assert empty.requests == 0 and empty.first_request is None


def test_admin_key_comparison() -> None:
    assert same_secret("a" * 20, "a" * 20)
    assert not same_secret("a" * 20, "a" * 19 + "b")
    assert not same_secret("short", "a" * 20)
