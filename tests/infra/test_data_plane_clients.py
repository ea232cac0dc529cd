"""The stack's Key Vault URLs, fed to the server's own client factories: the clients connect where the NetworkPolicy
lets them, with the TLS the services require, and log in the way the stack configured (Entra tokens, no password)."""

from __future__ import annotations

from typing import Any

import psycopg
from redis.asyncio.connection import SSLConnection

from server.store.redis import EntraRedisCredentials, create_redis
from tests.infra.harness import StackRun
from tests.infra.test_data_services import _secret_value
from tests.infra.test_workload import _egress, _pod


def _env(stack: StackRun) -> dict[str, Any]:
    (container,) = [c for c in _pod(stack)["spec"]["containers"] if c["name"] == "server"]
    return {e["name"]: e.get("value") for e in container["env"]}


class _NoCredential:
    async def get_token(self, *scopes: str, **kwargs: Any) -> None:
        raise AssertionError("no token is needed to build a client")


def test_postgres_client_uses_tls_on_an_allowed_port_with_an_entra_login(stack: StackRun) -> None:
    params = psycopg.conninfo.conninfo_to_dict(_secret_value(stack, "database-url"))
    assert params["sslmode"] == "require", "Azure's flexible server refuses plaintext"
    assert ("TCP", int(params["port"])) in _egress(stack)
    assert _env(stack)["GGUFSTACK_DATABASE_AUTH"] == "entra"
    assert "password" not in params, "the token is the password; the URL carries none"


def test_redis_client_uses_tls_on_an_allowed_port_with_the_identity_as_user(stack: StackRun) -> None:
    url = _secret_value(stack, "redis-url")
    assert _env(stack)["GGUFSTACK_REDIS_AUTH"] == "entra"
    client, provider = create_redis(url, _NoCredential())  # type: ignore[arg-type]
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is SSLConnection, "Azure Managed Redis speaks TLS only"
    assert ("TCP", kwargs["port"]) in _egress(stack)
    assert isinstance(provider, EntraRedisCredentials) and kwargs["credential_provider"] is provider
    assert kwargs.get("password") is None and kwargs.get("username") is None
