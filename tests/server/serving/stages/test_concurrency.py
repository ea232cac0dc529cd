"""The cap on a key's requests in flight, on a scripted engine: counted from the stage until the request's events
close, however it ends; other keys and keyless callers are not counted against it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from server.access.caller import Caller
from server.errors import APIError
from server.lifecycle.catalogue import ModelSpec
from server.model_source.base import FetchResult
from server.protocol.openai import CompletionRequest
from server.serving.endpoints import completions
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.stages import Pipeline, prepare
from server.serving.stages.concurrency import ConcurrencyStage
from tests.support.fake_engine import FakeEngine, NoLoading, registry_serving

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


async def test_the_body_gate_refuses_a_key_at_its_cap_as_the_stage_would() -> None:
    cap = ConcurrencyStage(1)
    key = Caller(key_id="k")
    pipeline = Pipeline([cap, prepare], body_gates=[cap.before_body])
    pipeline.before_body(key)  # under its cap: passes
    held = await completions.create(STREAM, _context(cap, key))
    with pytest.raises(APIError) as refused:
        pipeline.before_body(key)
    assert (refused.value.status, refused.value.code) == (429, "too_many_concurrent_requests")
    pipeline.before_body(Caller(key_id="other"))
    pipeline.before_body(Caller())
    assert held.close is not None
    await held.close()
    pipeline.before_body(key)


async def _until(condition: Callable[[], bool], failure: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(failure)


class EndlessLoading(NoLoading):
    """A download that never ends: requests for the model wait for it."""

    async def fetch(self, spec: ModelSpec, *, beside_serving: bool) -> FetchResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_request_waiting_for_its_model_to_load_counts_against_its_cap() -> None:
    """A key's requests waiting for a load took places in the model's wait queue past the key's cap: one key could
    fill it and keep every other key from the model for as long as the load waited for memory."""
    cap = ConcurrencyStage(1)
    models = registry_serving(FakeEngine(reply="ok"), unloaded=("other-model",))
    models.loading = EndlessLoading()
    pipeline = Pipeline([cap, prepare], load_waits=[cap.waiting_for_load])

    def ask(caller: Caller, model: str) -> Awaitable[object]:
        body = CompletionRequest.model_validate({"model": model, "prompt": "hi", "max_tokens": 4})
        return completions.create(body, ServingContext(models, pipeline, caller, request_id="r"))

    waiting = asyncio.create_task(ask(Caller(key_id="k"), "other-model"))
    await _until(lambda: cap.running("k") == 1, "the waiting request is not counted")
    for model in ("other-model", "fake"):
        with pytest.raises(APIError) as refused:
            await ask(Caller(key_id="k"), model)
        assert (refused.value.status, refused.value.code) == (429, "too_many_concurrent_requests")
    other = asyncio.create_task(ask(Caller(key_id="other"), "other-model"))
    await _until(lambda: cap.running("other") == 1, "another key's request does not wait")
    for task in (waiting, other):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert cap.running("k") == 0 and cap.running("other") == 0
    for m in models.models:  # the load itself outlives its waiters (shielded): ended here, not with the session
        if m.loading is not None:
            m.loading.cancel()
