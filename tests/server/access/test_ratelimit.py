"""Rate limits on a real Redis: exact counts across limiter instances, OpenAI's headers, and a Redis outage."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from server.access.ratelimit import LimiterUnavailableError, Limits, RateLimiter
from server.store.outage import Outage
from server.store.redis import create_redis
from tests.support.redis import start_redis


def _key() -> str:
    return "key_" + uuid.uuid4().hex[:8]


def _rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def two_replicas(redis_server):
    """Two limiters with their own connection pools, as two server processes would have."""
    clients = [Redis.from_url(redis_server.url()) for _ in range(2)]
    yield [RateLimiter(c) for c in clients]
    for c in clients:
        await c.aclose()


async def test_rpm_admits_exactly_the_limit_across_replicas(two_replicas) -> None:
    key, limits = _key(), Limits(rpm=5, tpm=None)
    decisions = [await two_replicas[i % 2].admit(key, limits, _rid(), 1) for i in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.headers["x-ratelimit-remaining-requests"] for d in decisions[:5]] == ["4", "3", "2", "1", "0"]
    refused = decisions[5]
    assert refused.limited_by == "requests" and 1 <= refused.retry_after_s <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_tpm_charges_the_prompt_first_and_the_completion_after(two_replicas) -> None:
    a, b = two_replicas
    key, limits = _key(), Limits(rpm=None, tpm=100)
    first = await a.admit(key, limits, "r1", 30)
    assert first.allowed and first.headers["x-ratelimit-remaining-tokens"] == "70"
    await a.charge(key, limits, "r1", 40)
    second = await b.admit(key, limits, "r2", 30)
    assert second.allowed and second.headers["x-ratelimit-remaining-tokens"] == "0"
    refused = await a.admit(key, limits, "r3", 1)
    assert not refused.allowed and refused.limited_by == "tokens" and refused.retry_after_s >= 1
    await b.refund_prompt(key, limits, "r2", 30)
    assert (await a.admit(key, limits, "r4", 30)).allowed, "a cache hit's prompt is given back"


async def test_a_prompt_over_the_whole_budget_is_refused(two_replicas) -> None:
    refused = await two_replicas[0].admit(_key(), Limits(rpm=None, tpm=10), _rid(), 11)
    assert not refused.allowed and refused.limited_by == "tokens"


async def test_keys_without_limits_never_touch_redis() -> None:
    limiter = RateLimiter(Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), fail_closed=True)
    assert (await limiter.admit(_key(), Limits(None, None), _rid(), 10)).allowed


async def test_redis_outage_fails_open_or_closed_and_recovers(tmp_path_factory, caplog) -> None:
    own = start_redis(tmp_path_factory.mktemp("redis-outage"))
    client, _ = create_redis(own.url())
    outage = Outage("redis", retry_after_s=0)
    open_limiter = RateLimiter(client, outage=outage)
    closed_limiter = RateLimiter(client, fail_closed=True, outage=outage)
    key, limits = _key(), Limits(rpm=2, tpm=None)
    try:
        assert (await open_limiter.admit(key, limits, _rid(), 0)).allowed
        own.stop()
        with caplog.at_level("WARNING", logger="server.store.outage"):
            for _ in range(3):
                decision = await open_limiter.admit(key, limits, _rid(), 0)
                assert decision.allowed and decision.headers == {}
            with pytest.raises(LimiterUnavailableError):
                await closed_limiter.admit(key, limits, _rid(), 0)
        warnings = [r for r in caplog.records if "redis is unreachable" in r.getMessage()]
        assert len(warnings) == 1, "one warning per outage"
        own.start()
        assert (await open_limiter.admit(key, limits, _rid(), 0)).allowed
        assert not outage.down
    finally:
        await client.aclose()
        own.stop()
