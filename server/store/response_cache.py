"""Answers to deterministic requests (temperature 0, or a fixed seed), kept in Redis for `ttl_s`.

The key is a SHA-256 of the endpoint, the request as it affects the answer (fields that only shape the transport,
such as `stream`, are left out), the serving model's version (the sha256 of its GGUF), so a new model never serves
an old model's answer, what else on the server decides the answer (the context window chat's default max_tokens
comes from, the batch size, GPU offload, the sampler's and llama.cpp's versions), and the scope: the API key that
asked, unless the cache is shared, so a hit never tells one tenant what another asked.

The value is the generation's events, so a hit replays through the same response shaping as a fresh generation: a
streamed hit streams the same chunks, a plain one returns the same body.

Each API key may add at most `max_bytes_per_key` of answers in a window of `ttl_s` (a counter in Redis, started by
the key's first write in the window): past it, its answers are not cached until the window ends. So one key cannot
fill Redis with answers and push every other key's, and their rate-limit windows, out of it (the stack's Redis evicts
the least recently used keys: infra/cache.py); a key's live entries stay under twice the budget (an entry outlives
its window by at most `ttl_s`).

An answer larger than `max_entry_bytes` is not cached: replaying one costs the event loop its decoding and the
replica its memory, for a key charged no tokens for it (a hit counts against RPM only), so a few would stall every
other request (docs/access.md has the measurement). Entries past 64 KiB are decoded in a worker thread.

Redis being unreachable only makes every lookup a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.engine.base import ChoiceFinished, Finished, GenerationEvent, TextDelta, TokenLogprob
from server.store.outage import Outage
from server.telemetry import prometheus

# Fields that change how an answer is delivered, not what it is.
TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "user"})
_FORMAT = "v3"  # bump when the stored value changes shape: old entries are then never read
_DECODE_INLINE_BYTES = 64 * 1024  # decoded on the event loop up to this size, in a worker thread past it


def is_deterministic(temperature: float | None, seed: int | None) -> bool:
    return (temperature is not None and temperature <= 0.0) or seed is not None


def cache_key(
    endpoint: str,
    body: Mapping[str, Any],
    model_version: str,
    *,
    scope: str = "shared",
    server: Mapping[str, Any] | None = None,
) -> str:
    """`scope`: whose answers these are ("shared", or one key's); `server`: the server's inputs to the answer."""
    normalised = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS and v is not None}
    # Keys in the order they came, not sorted: a schema's property order is the order the grammar writes them in,
    # and a tool's the order the prompt describes them in, so two bodies differing only there get different answers.
    # `allow_nan=False`: a body never holds NaN (the protocol refuses it), and one that did must not share a key.
    material = json.dumps(
        [endpoint, model_version, normalised, scope, dict(server or {})], separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _logprob(lp: TokenLogprob) -> list[Any]:
    return [lp.token, lp.piece.hex(), lp.logprob, [[t, piece.hex(), p] for t, piece, p in lp.top]]


def _unlogprob(value: list[Any]) -> TokenLogprob:
    token, piece, logprob, top = value
    return TokenLogprob(token, bytes.fromhex(piece), logprob, tuple((t, bytes.fromhex(p), q) for t, p, q in top))


def _event(e: GenerationEvent) -> list[Any]:
    if isinstance(e, TextDelta):
        return ["t", e.text, [_logprob(lp) for lp in e.logprobs], e.index]
    if isinstance(e, ChoiceFinished):
        return ["c", e.index, e.finish_reason, e.completion_tokens, e.stop_sequence]
    return ["f", e.finish_reason, e.prompt_tokens, e.completion_tokens, e.stop_sequence]


def _unevent(value: list[Any]) -> GenerationEvent:
    kind, *fields = value
    if kind == "t":
        text, logprobs, index = fields
        return TextDelta(text, tuple(_unlogprob(lp) for lp in logprobs), index)
    if kind == "c":
        return ChoiceFinished(*fields)
    return Finished(*fields)


def encode(events: Sequence[GenerationEvent]) -> bytes:
    return json.dumps([_event(e) for e in events], separators=(",", ":")).encode()


def decode(data: bytes | str) -> list[GenerationEvent]:
    # redis-py types replies as bytes | str (str where a client decodes responses); json.loads reads either.
    return [_unevent(value) for value in json.loads(data)]


class ResponseCache:
    def __init__(
        self,
        redis: Redis,
        *,
        ttl_s: int,
        max_bytes_per_key: int = 0,
        max_entry_bytes: int = 0,
        outage: Outage | None = None,
        prefix: str = "ggufstack:cache",
    ) -> None:
        """`max_bytes_per_key`, `max_entry_bytes`: 0 for no limit."""
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_bytes_per_key = max_bytes_per_key
        self._max_entry_bytes = max_entry_bytes
        self._outage = outage or Outage("redis")
        self._prefix = f"{prefix}:{_FORMAT}"

    async def get(self, key: str) -> list[GenerationEvent] | None:
        if not self._outage.should_try():
            prometheus.cache_lookups.labels("error").inc()
            return None
        try:
            data = await self._redis.get(f"{self._prefix}:{key}")
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, "responses are not cached")
            prometheus.cache_lookups.labels("error").inc()
            return None
        self._outage.succeeded()
        prometheus.cache_lookups.labels("hit" if data is not None else "miss").inc()
        if data is None:
            return None
        return decode(data) if len(data) <= _DECODE_INLINE_BYTES else await asyncio.to_thread(decode, data)

    async def put(self, key: str, events: Sequence[GenerationEvent], *, owner: str) -> None:
        """Store a finished generation's events, charged to `owner` (the API key that asked, whatever the scope)."""
        if not any(isinstance(e, Finished) for e in events) or not self._outage.should_try():
            return
        data = encode(events)
        if self._max_entry_bytes and len(data) > self._max_entry_bytes:
            prometheus.cache_writes.labels("too_large").inc()
            return
        try:
            if not await self._within_budget(owner, len(data)):
                prometheus.cache_writes.labels("over_budget").inc()
                return
            await self._redis.set(f"{self._prefix}:{key}", data, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc, "responses are not cached")
            prometheus.cache_writes.labels("error").inc()
            return
        prometheus.cache_writes.labels("stored").inc()

    async def _within_budget(self, owner: str, size: int) -> bool:
        """Charge `size` bytes to the owner's window; False (and nothing charged) when they would pass its budget."""
        if not self._max_bytes_per_key:
            return True
        counter = f"{self._prefix}:bytes:{owner}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(counter, 0, ex=self._ttl_s, nx=True)  # the window starts with its first write
            pipe.incrby(counter, size)
            _, used = await pipe.execute()
        if int(used) <= self._max_bytes_per_key:
            return True
        await self._redis.decrby(counter, size)
        return False
