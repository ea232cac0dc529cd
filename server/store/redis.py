"""The Redis client: one `redis.asyncio` connection pool for the rate limiter and the response cache.

Only this module and the stages that use Redis import redis-py, and only when a Redis URL is configured: redis-py
loads the OpenTelemetry SDK whenever it is installed, which a server without Redis has no use for.

Timeouts are short and a command is retried once, at once, on a new connection (the pooled one may have died with a
restart or failover): a Redis that does not answer degrades the request (unlimited, uncached) within seconds instead
of holding it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import unquote, urlsplit, urlunsplit

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.auth.token import SimpleToken
from redis.backoff import NoBackoff
from redis.credentials import StreamingCredentialProvider

from server.config.settings import Settings
from server.store.entra import REDIS_SCOPE, REFRESH_MARGIN_S, RETRY_S, refresh_delay
from server.store.outage import Outage
from server.store.services import background

log = logging.getLogger(__name__)


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


class _Options(TypedDict):
    socket_connect_timeout: float
    socket_timeout: float
    retry: Retry


def create_redis(
    url: str, credential: AsyncTokenCredential | None = None
) -> tuple[Redis, EntraRedisCredentials | None]:
    """A client for `url`. With `credential`, the URL's user is the identity's object id, the password an Entra
    token that the returned provider keeps fresh (run its `run()` as a task)."""
    options: _Options = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "retry": Retry(NoBackoff(), 1)}
    if credential is None:
        return Redis.from_url(url, **options), None
    parts = urlsplit(url)
    if not parts.username:
        raise ValueError("with Entra auth the Redis URL must name the user (the identity's object id)")
    provider = EntraRedisCredentials(credential, unquote(parts.username))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return Redis.from_url(bare, credential_provider=provider, **options), provider


@dataclass(frozen=True, slots=True)
class RedisConnection:
    client: Redis
    outage: Outage


async def open_redis(
    settings: Settings, resources: AsyncExitStack, credential: AsyncTokenCredential | None
) -> RedisConnection:
    assert settings.redis_url is not None
    client, provider = create_redis(settings.redis_url.get_secret_value(), credential)
    resources.push_async_callback(client.aclose)
    if provider is not None:
        await background(resources, provider.run(), "redis-token-refresh")
    return RedisConnection(client, Outage("redis"))
