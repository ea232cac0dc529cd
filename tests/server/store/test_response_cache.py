"""The response cache on a real Redis: events round-trip, the model version is part of the key, outages miss."""

from __future__ import annotations

from server.engine.base import ChoiceFinished, Finished, TextDelta, TokenLogprob
from server.store.outage import Outage
from server.store.redis import create_redis
from server.store.response_cache import ResponseCache, cache_key, is_deterministic
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
    await cache.put(key, EVENTS)
    assert await cache.get(key) == EVENTS
    ttl = await client.ttl(f"ggufstack:cache:v3:{key}")
    assert 0 < ttl <= 60
    choices_key = cache_key("chat", {**BODY, "n": 2}, "v-roundtrip")
    await cache.put(choices_key, CHOICE_EVENTS)
    assert await cache.get(choices_key) == CHOICE_EVENTS
    await client.aclose()


async def test_an_outage_turns_lookups_into_misses(tmp_path_factory) -> None:
    own = start_redis(tmp_path_factory.mktemp("redis-cache-outage"))
    client, _ = create_redis(own.url())
    cache = ResponseCache(client, ttl_s=60, outage=Outage("redis", retry_after_s=0))
    try:
        own.stop()
        await cache.put("k", EVENTS)
        assert await cache.get("k") is None
        own.start()
        await cache.put("k", EVENTS)
        assert await cache.get("k") == EVENTS
    finally:
        await client.aclose()
        own.stop()
