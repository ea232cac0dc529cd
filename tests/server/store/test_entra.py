"""Passwordless logins against the real servers: a PostgreSQL role and a Redis ACL user whose password is the token
the managed-identity stand-in issues, through the real DefaultAzureCredential, with the token rotated mid-test."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest

from server.store.entra import POSTGRES_SCOPE, REDIS_SCOPE, default_credential
from server.store.postgres import create_pool
from server.store.redis import create_redis
from tests.support.msi import TokenEndpoint

OID = "00000000-0000-0000-0000-000000000001"
LIFETIME_S = 3


def _audience(scope: str) -> str:
    return scope.removesuffix("/.default")


@pytest.fixture
def msi(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint(lifetime_s=LIFETIME_S)
    for name, value in endpoint.env.items():
        monkeypatch.setenv(name, value)
    yield endpoint
    endpoint.stop()


async def _wait_until_expired(issued_at: float) -> None:
    await asyncio.sleep(max(issued_at + LIFETIME_S + 0.5 - time.time(), 0))


async def test_postgres_logs_in_with_the_token_and_picks_up_a_rotated_one(postgres, msi: TokenEndpoint) -> None:
    audience = _audience(POSTGRES_SCOPE)
    msi.fixed[audience] = "token-one-" + "x" * 600  # Entra tokens are long; PostgreSQL takes them as passwords
    postgres.execute("DROP ROLE IF EXISTS app_identity")
    postgres.execute(f"CREATE ROLE app_identity LOGIN PASSWORD '{msi.fixed[audience]}'")
    credential = default_credential()
    pool = create_pool(f"postgresql://app_identity@127.0.0.1:{postgres.port}/postgres", credential)
    try:
        issued = time.time()
        await pool.open(wait=True, timeout=10)
        async with pool.connection() as conn:
            assert (await (await conn.execute("SELECT current_user")).fetchone())[0] == "app_identity"

        msi.fixed[audience] = "token-two-" + "y" * 600
        postgres.execute(f"ALTER ROLE app_identity PASSWORD '{msi.fixed[audience]}'")
        postgres.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app_identity'")
        await _wait_until_expired(issued)
        async with pool.connection() as conn:  # the dead connection is replaced, logging in with the new token
            assert (await (await conn.execute("SELECT current_user")).fetchone())[0] == "app_identity"
        assert msi.requests.count(audience) >= 2
    finally:
        await pool.close()
        await credential.close()


async def test_redis_auths_with_the_token_and_re_auths_before_it_expires(redis_server, msi: TokenEndpoint) -> None:
    audience = _audience(REDIS_SCOPE)
    admin = redis_server.client()
    msi.fixed[audience] = "redis-token-one"
    admin.execute_command("ACL", "SETUSER", OID, "reset", "on", ">redis-token-one", "~*", "&*", "+@all")
    credential = default_credential()
    client, provider = create_redis(f"redis://{OID}@127.0.0.1:{redis_server.port}/0", credential)
    assert provider is not None
    refresher = asyncio.create_task(provider.run())
    try:
        issued = time.time()
        assert await client.ping()
        assert (await client.acl_whoami()) == OID

        msi.fixed[audience] = "redis-token-two"
        admin.execute_command("ACL", "SETUSER", OID, "resetpass", ">redis-token-two")
        await _wait_until_expired(issued)
        await asyncio.sleep(1.5)  # the refresher's next round fetches the new token and re-AUTHs idle connections
        assert msi.requests.count(audience) >= 2
        assert await client.ping(), "a pooled connection, re-AUTHed with the new token"
        admin.execute_command("CLIENT", "KILL", "USER", OID)
        assert await client.ping(), "a new connection AUTHs with the new token"
        assert (await client.acl_whoami()) == OID
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await client.aclose()
        await credential.close()
        admin.execute_command("ACL", "DELUSER", OID)
