"""The Redis client: one `redis.asyncio` connection pool for the rate limiter and the response cache.

Timeouts are short and a command is retried once, at once, on a new connection (the pooled one may have died with a
restart or failover): a Redis that does not answer degrades the request (unlimited, uncached) within seconds instead
of holding it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from azure.core.credentials_async import AsyncTokenCredential
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.store.entra import EntraRedisCredentials


def create_redis(
    url: str, credential: AsyncTokenCredential | None = None
) -> tuple[Redis, EntraRedisCredentials | None]:
    """A client for `url`. With `credential`, the URL's user is the identity's object id, the password an Entra
    token that the returned provider keeps fresh (run its `run()` as a task)."""
    options = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "retry": Retry(NoBackoff(), 1)}
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
