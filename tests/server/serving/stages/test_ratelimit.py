"""The request limit on a real Redis, around a model that is not loaded: a key over its RPM never loads a model
(which would evict what other keys use), and one within it is counted once, before the load, not again after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from server.access.caller import Caller
from server.access.ratelimit import Limits, RateLimiter
from server.errors import APIError
from server.protocol.openai import CompletionRequest
from server.serving.endpoints import completions
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Pipeline, prepare
from server.serving.stages.ratelimit import RequestLimitStage
from tests.support.fake_engine import FakeEngine, NoLoading, registry_serving


def _body(model: str) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": model, "prompt": "hi", "max_tokens": 2})


@pytest.fixture
async def limiter(redis_server) -> AsyncIterator[RateLimiter]:  # type: ignore[no-untyped-def]  # the server fixture
    client = Redis.from_url(redis_server.url())
    yield RateLimiter(client)
    await client.aclose()


def _context(limiter: RateLimiter, caller: Caller) -> tuple[ServingContext, NoLoading]:
    stage = RequestLimitStage(limiter)
    pipeline = Pipeline([stage, prepare], load_gates=[stage.before_load])  # type: ignore[list-item]  # a function stage
    models = registry_serving(FakeEngine(reply="ok"), unloaded=("other",))
    loading = models.loading
    assert isinstance(loading, NoLoading)  # the stand-in that records load attempts
    return ServingContext(models, pipeline, caller, request_id="r1"), loading


async def test_a_key_over_its_rpm_never_loads_a_model(limiter: RateLimiter) -> None:
    ctx, loading = _context(limiter, Caller(key_id="k-over", rpm=1))
    served = await completions.create(_body("fake"), ctx)
    assert served.body is not None
    with pytest.raises(APIError) as refused:
        await completions.create(_body("other"), ctx)
    assert (refused.value.status, refused.value.code) == (429, "rate_limit_exceeded")
    assert loading.loads == [], "refused before the load, not after it"
    assert ctx.models.in_flight == 0


async def test_a_request_admitted_before_its_load_is_not_counted_again(limiter: RateLimiter) -> None:
    caller, limits = Caller(key_id="k-once", rpm=2), Limits(rpm=2, tpm=None)
    stage = RequestLimitStage(limiter)
    assert (await stage.before_load(caller, "early"))["x-ratelimit-remaining-requests"] == "1"
    served = registry_serving(FakeEngine()).default.holder.current
    assert served is not None
    job = ServingJob("early", "completions", _body("fake"), served, caller=caller, request_counted=True)

    async def answered(job: ServingJob) -> Events:
        return
        yield

    async for _ in stage(job, answered):
        pass
    assert (await limiter.admit("k-once", limits, "second", 0)).allowed, "the early admission counted it, once"
    assert not (await limiter.admit("k-once", limits, "third", 0)).allowed
