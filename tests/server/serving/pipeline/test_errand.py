"""A request that runs no model (a stored Responses API response read, listed or deleted) meets its key's request
limit before any work and is recorded however it ends: they were never limited nor audited."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from server.access.caller import Caller
from server.errors import APIError
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.errand import errand
from server.serving.pipeline.job import Errand
from server.serving.pipeline.stages import Pipeline
from tests.support.fake_engine import FakeEngine, registry_serving

KEY = Caller(key_id="k1", rpm=1)


def _serving(allowed: int) -> tuple[ServingContext, list[Errand], list[str]]:
    """A pipeline whose request limit admits `allowed` requests, and what it records."""
    admitted: list[str] = []
    recorded: list[Errand] = []

    async def limit(caller: Caller, request_id: str) -> Mapping[str, str]:
        if len(admitted) >= allowed:
            raise APIError(429, "rate limit reached", type="requests", code="rate_limit_exceeded")
        admitted.append(request_id)
        return {"x-ratelimit-remaining-requests": str(allowed - len(admitted))}

    pipeline = Pipeline([], load_gates=[limit], recorders=[recorded.append])
    ctx = ServingContext(registry_serving(FakeEngine()), pipeline, KEY, request_id="r1", client_request_id="c1")
    return ctx, recorded, admitted


async def test_it_is_counted_first_and_recorded_with_its_outcome() -> None:
    ctx, recorded, admitted = _serving(allowed=2)
    async with errand(ctx, "responses.retrieve") as headers:
        assert admitted == ["r1"] and not recorded  # counted before the work, recorded after it
    assert headers == {"x-ratelimit-remaining-requests": "1"}
    with pytest.raises(APIError):
        async with errand(ctx, "responses.delete"):
            raise APIError(404, "no response", type="not_found_error")
    with pytest.raises(APIError) as refused:
        async with errand(ctx, "responses.input_items"):
            pytest.fail("a request over its limit does no work")
    assert refused.value.status == 429
    assert [(e.endpoint, e.status) for e in recorded] == [
        ("responses.retrieve", 200),
        ("responses.delete", 404),
        ("responses.input_items", 429),
    ]
    assert {(e.request_id, e.caller, e.client_request_id) for e in recorded} == {("r1", KEY, "c1")}


async def test_a_client_that_goes_away_is_recorded_as_such() -> None:
    ctx, recorded, _ = _serving(allowed=1)
    with pytest.raises(asyncio.CancelledError):
        async with errand(ctx, "responses.retrieve"):
            raise asyncio.CancelledError
    assert [e.status for e in recorded] == [499]
