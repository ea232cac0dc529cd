"""Admission on a scripted engine: the lease every request holds comes back the moment its answer is complete, on
every path; a stage's refusal before the first event is an error, not a stream; embeddings and the tokenizer are
admitted the same way as generations."""

from __future__ import annotations

import contextlib
import json

import pytest

from server.access.caller import ANONYMOUS, Caller
from server.errors import APIError
from server.lifecycle.holder import Lease
from server.protocol.openai import CompletionRequest, EmbeddingRequest
from server.protocol.ops import TokenizeRequest
from server.serving.endpoints import completions, embeddings, tokenizer
from server.serving.pipeline.admission import MODEL_VERSION_HEADER, ServingContext
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next, Pipeline, prepare
from server.serving.stages.permit import permit
from tests.support.fake_engine import FakeEngine, registry_serving

SHA = "a" * 64


def _context(*stages: object, reply: str = "hello", caller: Caller = ANONYMOUS) -> tuple[ServingContext, FakeEngine]:
    engine = FakeEngine(reply=reply)
    models = registry_serving(engine, SHA, unloaded=("other-model",))
    pipeline = Pipeline([*stages, prepare])  # type: ignore[list-item]
    return ServingContext(models, pipeline, caller, request_id="r1"), engine


def _completion(**fields: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "fake", "prompt": "say hi", "max_tokens": 8, **fields})


async def test_a_whole_answer_returns_its_lease_before_the_reply_is_shaped() -> None:
    # Returning from inside `async for` left the lease to the generator's finaliser, which runs some loop turns
    # later: a hot swap waited on requests long answered. Nothing may await between the answer and this check.
    ctx, _ = _context()
    reply = await completions.create(_completion(), ctx)
    assert ctx.models.in_flight == 0
    assert reply.body is not None and reply.body.choices[0].text == "hello"


async def test_a_streamed_answer_returns_its_lease_when_the_client_stops_reading() -> None:
    ctx, engine = _context(reply="a long answer")
    reply = await completions.create(_completion(stream=True), ctx)
    assert reply.chunks is not None
    await anext(reply.chunks)
    assert ctx.models.in_flight == 1
    await reply.chunks.aclose()
    assert ctx.models.in_flight == 0
    assert engine.streams[0].closed


async def test_a_refusal_before_the_first_event_is_an_error_and_returns_the_lease() -> None:
    async def refuse(job: ServingJob, call_next: Next) -> Events:
        raise APIError(429, "slow down", type="rate_limit_error")
        yield  # pragma: no cover

    ctx, engine = _context(refuse)
    with pytest.raises(APIError, match="slow down"):
        await completions.create(_completion(), ctx)
    assert ctx.models.in_flight == 0
    assert engine.requests == []  # refused before preparation: nothing was tokenized or generated


async def test_an_unknown_model_is_a_404_and_takes_no_lease() -> None:
    ctx, _ = _context()
    with pytest.raises(APIError) as refused:
        await completions.create(_completion(model="other"), ctx)
    assert refused.value.status == 404 and refused.value.code == "model_not_found"
    assert ctx.models.in_flight == 0


async def test_every_answer_names_the_model_version_that_gave_it() -> None:
    ctx, _ = _context()
    reply = await completions.create(_completion(), ctx)
    assert reply.headers[MODEL_VERSION_HEADER] == SHA


async def test_embeddings_pass_the_same_stages_and_lease() -> None:
    seen: list[str] = []

    async def observe(job: ServingJob, call_next: Next) -> Events:
        seen.append(job.endpoint)
        async for event in call_next(job):
            yield event

    ctx, _ = _context(observe)
    reply = await embeddings.create(EmbeddingRequest.model_validate({"model": "fake", "input": ["ab", "c"]}), ctx)
    assert seen == ["embeddings"]
    assert ctx.models.in_flight == 0
    assert reply.headers[MODEL_VERSION_HEADER] == SHA
    assert reply.body is not None and len(reply.body.data) == 2 and reply.body.usage.prompt_tokens == 3


async def test_the_tokenizer_passes_the_same_stages_and_lease() -> None:
    seen: list[str] = []

    async def observe(job: ServingJob, call_next: Next) -> Events:
        seen.append(job.endpoint)
        async for event in call_next(job):
            yield event

    ctx, _ = _context(observe)
    reply = await tokenizer.tokenize(TokenizeRequest(content="hey"), ctx)
    assert seen == ["tokenize"]
    assert ctx.models.in_flight == 0
    assert reply.rendered is not None and json.loads(reply.rendered) == {"tokens": [ord("h"), ord("e"), ord("y")]}


async def test_a_key_limited_to_other_models_never_loads_one() -> None:
    # Loading a model may evict the one other teams are using: a key that may not use it must not cause it.
    ctx, _ = _context(caller=Caller(key_id="k", models=("fake",)))
    with pytest.raises(APIError) as refused:
        await completions.create(_completion(model="other-model"), ctx)
    assert (refused.value.status, refused.value.code) == (403, "model_not_allowed")
    assert ctx.models.loading.loads == []  # type: ignore[attr-defined]
    assert ctx.models.in_flight == 0


async def test_a_stream_closed_before_its_first_chunk_returns_its_lease_through_the_replys_close() -> None:
    # A client gone before the first chunk: the reply's generators never start, so no line of theirs (their `finally`
    # included) ever runs. The reply's close, which the API runs once the response is over, returns the lease.
    ctx, engine = _context(reply="never read")
    reply = await completions.create(_completion(stream=True), ctx)
    assert reply.chunks is not None and reply.close is not None
    await reply.chunks.aclose()
    assert ctx.models.in_flight == 1, "an unstarted generator's aclose runs nothing"
    await reply.close()
    assert ctx.models.in_flight == 0 and engine.streams[0].closed
    await reply.close()  # idempotent: the API's close after a stream that did finish changes nothing
    assert ctx.models.in_flight == 0


async def test_a_key_limited_to_other_models_never_leases_a_loaded_one() -> None:
    # Even a lease returned at once holds off the model's eviction, and one that counted as use would keep the model
    # loaded past its ttl_s for the keys that may use it: the 403 comes before the lease.
    ctx, engine = _context(permit, caller=Caller(key_id="k", models=("other-model",)))
    leased: list[object] = []
    ctx.models.default.holder.on_release = lambda *lease: leased.append(lease)
    with pytest.raises(APIError) as refused:
        await completions.create(_completion(), ctx)
    assert (refused.value.status, refused.value.code) == (403, "model_not_allowed")
    assert leased == [] and engine.requests == []


async def test_only_an_admitted_request_counts_as_use_of_its_model() -> None:
    async def refuse(job: ServingJob, call_next: Next) -> Events:
        raise APIError(429, "slow down", type="rate_limit_error")
        yield  # pragma: no cover

    for stages, admitted in (((), True), ((refuse,), False)):
        ctx, _ = _context(*stages)
        released: list[Lease] = []
        ctx.models.default.holder.on_release = released.append
        with contextlib.suppress(APIError):
            await completions.create(_completion(), ctx)
        assert [lease.admitted for lease in released] == [admitted]
