"""Per-key requests-per-minute and tokens-per-minute limits, shared by every replica through Redis.

Each key has two sorted sets over a sliding 60-second window: one member per admitted request, and one per token
charge (`<tokens>:<request id>:p` for the prompt, charged at admission, `...:c` for the completion, charged when the
generation ends). One Lua script prunes, counts, decides and records atomically, with Redis' own clock, so replicas
never race and their clocks need not agree. Both sets of a key share a hash tag, so the script also runs on a
clustered Redis.

A request is admitted while the window holds fewer than `rpm` requests and the tokens in it plus its prompt stay
within `tpm`; the completion is charged afterwards, so one long answer can take a key past its TPM until the window
moves on (as with OpenAI). A response served from the cache is refunded its prompt tokens: it counts against RPM only.

When Redis is unreachable the limiter fails open (requests pass unlimited) unless configured to fail closed (503).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.store.outage import Outage
from server.telemetry import prometheus

WINDOW_MS = 60_000

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, tpm, cost, id = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local counted = ARGV[6] ~= '0'
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local requests = redis.call('ZCARD', KEYS[1])
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local tokens = 0
for i = 1, #entries, 2 do tokens = tokens + tonumber(string.match(entries[i], '^(%d+):')) end
if counted and rpm > 0 and requests >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 1, requests, tokens, tonumber(oldest[2]) + window - now}
end
if tpm > 0 and tokens + cost > tpm then
  local need, freed, wait = tokens + cost - tpm, 0, window
  for i = 1, #entries, 2 do
    freed = freed + tonumber(string.match(entries[i], '^(%d+):'))
    if freed >= need then wait = tonumber(entries[i + 1]) + window - now; break end
  end
  return {0, 2, requests, tokens, wait}
end
if counted then
  redis.call('ZADD', KEYS[1], now, id)
  requests = requests + 1
end
if cost > 0 then redis.call('ZADD', KEYS[2], now, cost .. ':' .. id .. ':p') end
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], window)
return {1, 0, requests, tokens + cost, 0}
"""

_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class LimiterUnavailableError(Exception):
    """Redis is unreachable and the limiter is configured to fail closed."""


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None
    tpm: int | None

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limited_by: Literal["requests", "tokens"] | None = None
    retry_after_s: int = 0  # Retry-After's whole seconds, at least 1 for a refusal
    # OpenAI's x-ratelimit-* headers, for the response (or the 429).
    headers: dict[str, str] = field(default_factory=dict)
    wait_s: float | None = None  # until the window frees, exactly (None: retry_after_s)


def reset_duration(ms: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 250ms."""
    if ms < 1000:
        return f"{max(int(ms), 0)}ms"
    seconds = math.ceil(ms / 1000)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


def _headers(limits: Limits, requests: int, tokens: int, wait_ms: float, limited_by: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if limits.rpm:
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(limits.rpm - requests, 0))
        headers["x-ratelimit-reset-requests"] = reset_duration(wait_ms if limited_by == "requests" else 0)
    if limits.tpm:
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(limits.tpm - tokens, 0))
        headers["x-ratelimit-reset-tokens"] = reset_duration(wait_ms if limited_by == "tokens" else 0)
    return headers


class RateLimiter:
    def __init__(
        self, redis: Redis, *, fail_closed: bool = False, outage: Outage | None = None, prefix: str = "ggufstack:rl"
    ) -> None:
        self._redis = redis
        self._fail_closed = fail_closed
        self._outage = outage or Outage("redis")
        self._prefix = prefix
        self._admit = redis.register_script(_ADMIT)
        self._charge = redis.register_script(_CHARGE)

    def _keys(self, key_id: str) -> list[str]:
        # The hash tag {key_id} puts both sets in one cluster slot.
        return [f"{self._prefix}:{{{key_id}}}:requests", f"{self._prefix}:{{{key_id}}}:tokens"]

    async def admit(
        self, key_id: str, limits: Limits, request_id: str, prompt_tokens: int, *, count_request: bool = True
    ) -> Decision:
        """Admit one request and charge its prompt, or refuse it. Raises LimiterUnavailableError (fail closed).

        `count_request` False: the request was admitted (and counted against RPM) already, before its prompt was
        tokenized; now only its prompt is checked against TPM and charged."""
        if not limits.any:
            return Decision(True)
        if not self._outage.should_try():
            return self._unavailable()
        args: list[int | str] = [
            WINDOW_MS,
            limits.rpm or 0,
            limits.tpm or 0,
            prompt_tokens,
            request_id,
            int(count_request),
        ]
        try:
            allowed, which, requests, tokens, wait_ms = await self._admit(keys=self._keys(key_id), args=args)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, self._consequence())
            return self._unavailable()
        self._outage.succeeded()
        limited_by: Literal["requests", "tokens"] | None = None if allowed else ("requests", "tokens")[which - 1]
        headers = _headers(limits, requests, tokens, wait_ms, limited_by)
        if limited_by is not None:
            prometheus.rate_limited.labels(limited_by).inc()
            return Decision(False, limited_by, max(math.ceil(wait_ms / 1000), 1), headers, wait_ms / 1000)
        return Decision(True, headers=headers)

    async def charge(self, key_id: str, limits: Limits, request_id: str, completion_tokens: int) -> None:
        """Charge a finished generation's completion tokens against the key's TPM."""
        if not limits.tpm or completion_tokens <= 0 or not self._outage.should_try():
            return
        try:
            await self._charge(keys=self._keys(key_id)[1:], args=[f"{completion_tokens}:{request_id}:c", WINDOW_MS])
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, self._consequence())

    async def refund_prompt(self, key_id: str, limits: Limits, request_id: str, prompt_tokens: int) -> None:
        """Take back a request's prompt charge (it was answered from the cache)."""
        if not limits.tpm or prompt_tokens <= 0 or not self._outage.should_try():
            return
        try:
            await self._redis.zrem(self._keys(key_id)[1], f"{prompt_tokens}:{request_id}:p")
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, self._consequence())

    def _consequence(self) -> str:
        return "rate limits fail closed (503)" if self._fail_closed else "rate limits are not enforced (fail open)"

    def _unavailable(self) -> Decision:
        if self._fail_closed:
            raise LimiterUnavailableError("rate limits cannot be checked: Redis is unreachable")
        return Decision(True)
