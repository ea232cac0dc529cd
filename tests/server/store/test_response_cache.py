"""The response cache on a real Redis: events round-trip, the model version is part of the key, outages miss, and a
key adds at most its budget of answers in a window."""

from __future__ import annotations

import uuid

from server.engine.base import ChoiceFinished, Finished, TextDelta, TokenLogprob
from server.store.outage import Outage
from server.store.redis import create_redis
from server.store.response_cache import ResponseCache, cache_key, encode, is_deterministic
from server.telemetry import prometheus
from tests.support.redis import start_redis

EVENTS = [
    TextDelta("Hel", (TokenLogprob(5, b"Hel", -0.25, ((5, b"Hel", -0.25), (9, b"\xe2\x82", -1.5))),)),
    TextDelta("lo, é"),
    Finished("length", 7, 2),
]
# n = 2: the choices' deltas interleave and each choice ends on its own.
CHOICE_EVENTS = [
    TextDelta("A", index=0),
    TextDelta("B", index=1),
    ChoiceFinished(1, "stop", 1, "END"),
    TextDelta("a", index=0),
    ChoiceFinished(0, "length", 2),
    Finished("length", 7, 3),
]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stream": False}


def test_the_key_ignores_transport_fields_and_follows_the_model_version() -> None:
    key = cache_key("chat", BODY, "sha-a")
    assert cache_key("chat", {**BODY, "stream": True, "stream_options": {"include_usage": True}}, "sha-a") == key
    assert cache_key("chat", {**BODY, "user": "u1", "seed": None}, "sha-a") == key
    assert cache_key("chat", BODY, "sha-b") != key
    assert cache_key("completions", BODY, "sha-a") != key
    assert cache_key("chat", {**BODY, "max_tokens": 5}, "sha-a") != key


def test_only_deterministic_requests_are_cacheable() -> None:
    assert is_deterministic(0.0, None) and is_deterministic(0.8, 42)
    assert not is_deterministic(0.7, None) and not is_deterministic(None, None)


async def test_events_round_trip_and_expire(redis_server) -> None:
    client, _ = create_redis(redis_server.url())
    cache = ResponseCache(client, ttl_s=60)
    key = cache_key("chat", BODY, "v-roundtrip")
    assert await cache.get(key) is None
    await cache.put(key, EVENTS, owner="key:a")
    assert await cache.get(key) == EVENTS
    ttl = await client.ttl(f"ggufstack:cache:v3:{key}")
    assert 0 < ttl <= 60
    choices_key = cache_key("chat", {**BODY, "n": 2}, "v-roundtrip")
    await cache.put(choices_key, CHOICE_EVENTS, owner="key:a")
    assert await cache.get(choices_key) == CHOICE_EVENTS
    await client.aclose()


async def test_an_outage_turns_lookups_into_misses(tmp_path_factory) -> None:
    own = start_redis(tmp_path_factory.mktemp("redis-cache-outage"))
    client, _ = create_redis(own.url())
    cache = ResponseCache(client, ttl_s=60, outage=Outage("redis", retry_after_s=0))
    try:
        own.stop()
        await cache.put("k", EVENTS, owner="key:a")
        assert await cache.get("k") is None
        own.start()
        await cache.put("k", EVENTS, owner="key:a")
        assert await cache.get("k") == EVENTS
    finally:
        await client.aclose()
        own.stop()


async def test_a_key_adds_at_most_its_budget_of_answers_in_a_window(redis_server) -> None:
    """Threat: one key filling Redis with answers (long ones, with logprobs, each charged only its tokens) pushes every
    other key's cached answers, and their rate-limit windows, out of a Redis that evicts."""
    client, _ = create_redis(redis_server.url())
    prefix = f"test-budget-{uuid.uuid4().hex[:8]}"
    size = len(encode(EVENTS))
    cache = ResponseCache(client, ttl_s=60, max_bytes_per_key=2 * size + size // 2, prefix=prefix)
    over_before = prometheus.cache_writes.labels("over_budget")._value.get()
    try:
        for i in range(3):
            await cache.put(f"a{i}", EVENTS, owner="key:a")
        assert await cache.get("a0") == EVENTS and await cache.get("a1") == EVENTS
        assert await cache.get("a2") is None, "the third answer is past key a's budget"
        assert prometheus.cache_writes.labels("over_budget")._value.get() - over_before == 1
        counter = f"{prefix}:v3:bytes:key:a"
        assert int(await client.get(counter)) == 2 * size, "a refused answer is not charged"
        assert 0 < await client.ttl(counter) <= 60, "the window ends"

        await cache.put("b0", EVENTS, owner="key:b")
        assert await cache.get("b0") == EVENTS, "another key has its own budget"

        await client.delete(counter)  # the window ended
        await cache.put("a2", EVENTS, owner="key:a")
        assert await cache.get("a2") == EVENTS

        small = ResponseCache(client, ttl_s=60, max_bytes_per_key=size - 1, prefix=prefix)
        await small.put("c0", EVENTS, owner="key:c")
        assert await small.get("c0") is None, "an answer larger than the whole budget is never stored"
        assert await client.get(f"{prefix}:v3:bytes:key:c") in (None, b"0")
    finally:
        await client.aclose()
