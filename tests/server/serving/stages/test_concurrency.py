"""The cap on a key's requests in flight, on a scripted engine: counted from the stage until the request's events
close, however it ends; other keys and keyless callers are not counted against it."""

from __future__ import annotations

import pytest

from server.access.caller import Caller
from server.errors import APIError
from server.protocol.openai import CompletionRequest
from server.serving.endpoints import completions
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.stages import Pipeline, prepare
from server.serving.stages.concurrency import ConcurrencyStage
from tests.support.fake_engine import FakeEngine, registry_serving

STREAM = CompletionRequest.model_validate({"model": "fake", "prompt": "hi", "max_tokens": 4, "stream": True})
WHOLE = CompletionRequest.model_validate({"model": "fake", "prompt": "hi", "max_tokens": 4})


def _context(cap: ConcurrencyStage, caller: Caller) -> ServingContext:
    return ServingContext(registry_serving(FakeEngine(reply="ok")), Pipeline([cap, prepare]), caller, request_id="r")


async def test_a_key_past_its_cap_is_refused_until_a_request_of_its_own_ends() -> None:
    cap = ConcurrencyStage(1)
    key = Caller(key_id="k")
    held = await completions.create(STREAM, _context(cap, key))
    assert cap.running("k") == 1
    with pytest.raises(APIError) as refused:
        await completions.create(WHOLE, _context(cap, key))
    assert (refused.value.status, refused.value.code) == (429, "too_many_concurrent_requests")
    other = await completions.create(WHOLE, _context(cap, Caller(key_id="other")))
    assert other.body is not None and cap.running("other") == 0
    assert (await completions.create(WHOLE, _context(cap, Caller()))).body is not None  # no key: not capped
    assert held.close is not None
    await held.close()  # the client went away before reading a chunk
    assert cap.running("k") == 0
    assert (await completions.create(WHOLE, _context(cap, key))).body is not None
    assert cap.running("k") == 0
