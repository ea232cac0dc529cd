"""Passwordless logins to Azure Database for PostgreSQL and Azure Managed Redis with Microsoft Entra tokens.

Both services take an Entra access token where a password would go. `DefaultAzureCredential` gets it (workload
identity in AKS, a managed identity on a VM, `az login` on a laptop) and caches it, asking for a new one before the old
expires. PostgreSQL checks the password only when a connection opens, so every new pool connection asks for the
current token. Redis checks it on AUTH and closes connections whose token expired, so `EntraRedisCredentials` (in
`server/store/redis.py`, which alone imports redis) also re-AUTHs every pooled connection with the fresh token before
the old one runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

log = logging.getLogger(__name__)

POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
REDIS_SCOPE = "https://redis.azure.com/.default"
# Re-AUTH this long before a token expires (Entra tokens live 60-90 minutes), or at half its life if that is sooner.
REFRESH_MARGIN_S = 300.0
# After a failed refresh, try again this soon; the current token usually still has minutes to live.
RETRY_S = 5.0


class ThreadedCredential:
    """An async face on the synchronous DefaultAzureCredential. The SDK's async credentials need aiohttp, which this
    project does not ship; a token is fetched about once an hour, so a worker thread costs nothing that matters."""

    def __init__(self) -> None:
        from azure.identity import DefaultAzureCredential

        self._credential = DefaultAzureCredential()

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return await asyncio.to_thread(self._credential.get_token, *scopes, **kwargs)

    async def close(self) -> None:
        self._credential.close()

    async def __aenter__(self) -> ThreadedCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def default_credential() -> AsyncTokenCredential:
    return ThreadedCredential()


def postgres_password(credential: AsyncTokenCredential) -> Callable[[], Awaitable[dict[str, Any]]]:
    """psycopg_pool's `kwargs` callable: the connection's password is the current token, fetched per connection."""

    async def kwargs() -> dict[str, Any]:
        token = await credential.get_token(POSTGRES_SCOPE)
        return {"password": token.token}

    return kwargs


def refresh_delay(token: AccessToken, now: float) -> float:
    """Seconds until a token should be replaced: REFRESH_MARGIN_S before it expires, or at half its remaining life."""
    remaining = token.expires_on - now
    return max(min(remaining - REFRESH_MARGIN_S, remaining / 2), 1.0)
