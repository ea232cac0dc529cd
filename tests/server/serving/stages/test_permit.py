"""The permit stage on a scripted engine: a key limited to other models is refused before anything runs."""

from __future__ import annotations

import pytest

from server.access.caller import Caller
from server.errors import APIError
from server.protocol.openai import CompletionRequest
from server.serving.endpoints import completions
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.stages import Pipeline, prepare
from server.serving.stages.permit import permit
from tests.support.fake_engine import FakeEngine, registry_serving

BODY = CompletionRequest.model_validate({"model": "fake", "prompt": "hi", "max_tokens": 4})


def _context(caller: Caller) -> tuple[ServingContext, FakeEngine]:
    engine = FakeEngine(reply="ok")
    return ServingContext(registry_serving(engine), Pipeline([permit, prepare]), caller, request_id="r"), engine


async def test_a_key_limited_to_other_models_is_refused_before_any_work() -> None:
    ctx, engine = _context(Caller(key_id="k", models=("another",)))
    with pytest.raises(APIError) as refused:
        await completions.create(BODY, ctx)
    assert (refused.value.status, refused.value.code, refused.value.param) == (403, "model_not_allowed", "model")
    assert engine.requests == [] and ctx.models.in_flight == 0


@pytest.mark.parametrize("models", [None, ("fake",), ("another", "fake")])
async def test_a_key_allowed_the_model_is_served(models: tuple[str, ...] | None) -> None:
    ctx, engine = _context(Caller(key_id="k", models=models))
    reply = await completions.create(BODY, ctx)
    assert reply.body is not None and reply.body.choices[0].text == "ok"
    assert len(engine.requests) == 1
