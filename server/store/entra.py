"""Passwordless logins to Azure Database for PostgreSQL and Azure Managed Redis with Microsoft Entra tokens.

Both services take an Entra access token where a password would go. `DefaultAzureCredential` gets it (workload
identity in AKS, a managed identity on a VM, `az login` on a laptop) and caches it, asking for a new one before the old
expires. PostgreSQL checks the password only when a connection opens, so every new pool connection asks for the
current token. Redis checks it on AUTH and closes connections whose token expired, so `EntraRedisCredentials` also
re-AUTHs every pooled connection with the fresh token before the old one runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from redis.auth.token import SimpleToken
from redis.credentials import StreamingCredentialProvider

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
    return ThreadedCredential()  # type: ignore[return-value]  # structurally an AsyncTokenCredential


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


class EntraRedisCredentials(StreamingCredentialProvider):
    """redis-py's credential provider: AUTH with `username` (the identity's object id) and the current token.

    `run()` (a task in the app's lifespan) replaces the token before it expires and hands it to redis-py, which
    re-AUTHs idle connections at once and busy ones when they are released.
    """

    def __init__(self, credential: AsyncTokenCredential, username: str) -> None:
        self._credential = credential
        self._username = username
        self._token: AccessToken | None = None
        self._on_next: Callable[[Any], Any] | None = None
        self._on_error: Callable[[Exception], Any] | None = None

    def on_next(self, callback: Callable[[Any], Any]) -> None:
        self._on_next = callback

    def on_error(self, callback: Callable[[Exception], Any]) -> None:
        self._on_error = callback

    def is_streaming(self) -> bool:
        return True

    def get_credentials(self) -> tuple[str, str]:
        raise NotImplementedError("EntraRedisCredentials works with redis.asyncio only")

    async def get_credentials_async(self) -> tuple[str, str]:
        token = await self._current()
        return self._username, token.token

    async def _current(self) -> AccessToken:
        if self._token is None or self._token.expires_on - time.time() < REFRESH_MARGIN_S:
            self._token = await self._credential.get_token(REDIS_SCOPE)
        return self._token

    async def run(self) -> None:
        """Keep the token fresh until cancelled; failures are logged and retried, never fatal."""
        while True:
            try:
                token = await self._credential.get_token(REDIS_SCOPE)
            except Exception as exc:  # the credential's errors vary by source; the old token may still be valid
                log.warning(
                    "could not refresh the Entra token for Redis (%s); retrying in %.0f s", type(exc).__name__, RETRY_S
                )
                await asyncio.sleep(RETRY_S)
                continue
            if self._token is None or token.token != self._token.token:
                self._token = token
                await self._reauth(token)
            await asyncio.sleep(refresh_delay(token, time.time()))

    async def _reauth(self, token: AccessToken) -> None:
        if self._on_next is None:
            return
        now_ms = time.time() * 1000
        wrapped = SimpleToken(token.token, token.expires_on * 1000, now_ms, {"oid": self._username})
        try:
            await self._on_next(wrapped)
        except Exception as exc:  # a dropped connection reconnects with get_credentials_async anyway
            log.warning("re-AUTH of pooled Redis connections failed (%s)", type(exc).__name__)


async def close_quietly(credential: AsyncTokenCredential | None) -> None:
    if credential is not None:
        with contextlib.suppress(Exception):
            await credential.close()
