"""The response cache on a real Redis: events round-trip, the model version is part of the key, outages miss, a key
adds at most its budget of answers in a window, and an answer past the entry size is not cached."""

from __future__ import annotations

import threading
import uuid

import pytest

from server.engine.base import ChoiceFinished, Finished, TextDelta, TokenLogprob
from server.store import response_cache
from server.store.outage import Outage
from server.store.redis import create_redis
from server.store.response_cache import ResponseCache, cache_key, decode, encode, is_deterministic
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


def test_the_key_follows_the_order_of_an_objects_keys() -> None:
    """A schema's properties are written in its order, so two schemas that differ only in order get different
    answers: sorted keys made the second a hit answering in the first one's order."""
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "string"}}}
    reordered = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    first = cache_key("chat", {**BODY, "response_format": {"type": "json_schema", "json_schema": schema}}, "sha-a")
    assert (
        cache_key("chat", {**BODY, "response_format": {"type": "json_schema", "json_schema": reordered}}, "sha-a")
        != first
    )


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


async def test_an_answer_past_the_entry_size_is_served_but_not_cached(redis_server) -> None:
    """Threat: a hit costs its key no tokens, and replaying a large answer (log-probabilities of every token) holds
    the event loop while it is decoded: six hits of a 6.3 MB answer kept /health/live waiting 1.5 s."""
    client, _ = create_redis(redis_server.url())
    size = len(encode(EVENTS))
    cache = ResponseCache(client, ttl_s=60, max_entry_bytes=size - 1, prefix=f"test-entry-{uuid.uuid4().hex[:8]}")
    too_large = prometheus.cache_writes.labels("too_large")._value.get()
    try:
        await cache.put("big", EVENTS, owner="key:a")
        assert await cache.get("big") is None
        assert prometheus.cache_writes.labels("too_large")._value.get() - too_large == 1
        fits = ResponseCache(client, ttl_s=60, max_entry_bytes=size, prefix=f"test-entry-{uuid.uuid4().hex[:8]}")
        await fits.put("fits", EVENTS, owner="key:a")
        assert await fits.get("fits") == EVENTS
    finally:
        await client.aclose()


async def test_a_large_entry_is_decoded_off_the_event_loop(redis_server, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = create_redis(redis_server.url())
    cache = ResponseCache(client, ttl_s=60, prefix=f"test-decode-{uuid.uuid4().hex[:8]}")
    large = [TextDelta("x" * 100_000), EVENTS[-1]]
    decoded_in: list[str] = []

    def recording(data: bytes) -> list:
        decoded_in.append(threading.current_thread().name)
        return decode(data)

    try:
        await cache.put("small", EVENTS, owner="key:a")
        await cache.put("large", large, owner="key:a")
        monkeypatch.setattr(response_cache, "decode", recording)
        assert await cache.get("small") == EVENTS and await cache.get("large") == large
        assert decoded_in[0] == threading.current_thread().name and decoded_in[1] != decoded_in[0]
    finally:
        await client.aclose()
