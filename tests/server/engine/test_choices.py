"""n > 1 choices on the demo model: one prefill shared through a KV copy, choice i sampled with seed + i, each choice
ending on its own, and every slot back when the request ends or is cancelled."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.engine.base import (
    ChoiceFinished,
    EngineError,
    EngineOverloadedError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from server.engine.batching import BatchingEngine
from server.engine.llama_model import LlamaModel
from tests.support.engine import request, run, running_engine

PROMPT = "Write a short poem about the sea and the wind"
SAMPLING = {"temperature": 0.9, "top_k": 40, "seed": 4242}


async def events_of(engine: BatchingEngine, req: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(req)]


def texts(events: list[GenerationEvent], n: int) -> list[str]:
    return ["".join(e.text for e in events if isinstance(e, TextDelta) and e.index == i) for i in range(n)]


@pytest.mark.asyncio
async def test_each_choice_is_what_one_request_with_seed_plus_index_gives(model: LlamaModel) -> None:
    async with running_engine(model, reuse_prefix=False) as engine:
        req = request(engine, PROMPT, 16, **SAMPLING)
        reused_before = engine.stats().prompt_tokens_reused_total
        events = await events_of(engine, replace(req, n=3))
        # Followers got the leader's KV instead of reading the prompt: twice the prompt counts as reused.
        assert engine.stats().prompt_tokens_reused_total - reused_before == 2 * len(req.prompt_tokens)
        singles = []
        for i in range(3):
            seeded = request(engine, PROMPT, 16, **(SAMPLING | {"seed": SAMPLING["seed"] + i}))
            deltas, _ = await run(engine, seeded)
            singles.append("".join(deltas))
        assert engine.stats().slots_busy == 0
    assert texts(events, 3) == singles
    assert len(set(singles)) > 1, "different seeds should give different choices"
    ended = [e for e in events if isinstance(e, ChoiceFinished)]
    assert sorted(e.index for e in ended) == [0, 1, 2]
    assert all(e.finish_reason == "length" and e.completion_tokens == 16 for e in ended)
    assert events[-1] == Finished("length", prompt_tokens=len(req.prompt_tokens), completion_tokens=48)


@pytest.mark.asyncio
async def test_choices_end_on_their_own_and_a_single_choice_sends_no_choice_events(model: LlamaModel) -> None:
    async with running_engine(model) as engine:
        req = request(engine, PROMPT, 24, temperature=0.9, seed=7, stop=["e"])
        events = await events_of(engine, replace(req, n=2))
        single = await events_of(engine, req)
    ended = {e.index: e for e in events if isinstance(e, ChoiceFinished)}
    assert set(ended) == {0, 1}
    for i, text in enumerate(texts(events, 2)):
        assert "e" not in text
        assert ended[i].finish_reason == ("stop" if ended[i].completion_tokens < 24 else "length")
    assert events[-1].completion_tokens == sum(e.completion_tokens for e in ended.values())
    assert not any(isinstance(e, ChoiceFinished) for e in single)
    assert all(e.index == 0 for e in single if isinstance(e, TextDelta))


@pytest.mark.asyncio
async def test_one_token_choices_fork_and_end_in_the_same_step(model: LlamaModel) -> None:
    async with running_engine(model, reuse_prefix=False) as engine:
        req = request(engine, PROMPT, 1, **SAMPLING)
        events = await events_of(engine, replace(req, n=4))
        # The slots the followers left must hold a clean copy: the next request on them is still exact.
        again = await events_of(engine, replace(req, n=4))
    assert texts(events, 4) == texts(again, 4)
    assert events[-1].completion_tokens == 4


@pytest.mark.asyncio
async def test_more_choices_than_allowed_is_refused_naming_n(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=4, max_choices=2) as engine:
        req = request(engine, PROMPT, 4)
        with pytest.raises(EngineError) as refused:
            engine.generate(replace(req, n=3))
        assert refused.value.param == "n"
    async with running_engine(model, n_slots=2, max_choices=8) as engine:
        with pytest.raises(EngineError, match="at most 2 choices"):
            engine.generate(replace(req, n=3))


@pytest.mark.asyncio
async def test_a_request_for_n_choices_waits_for_n_free_slots_and_counts_n_against_the_queue(
    model: LlamaModel,
) -> None:
    async with running_engine(model, n_slots=2, max_queue=2) as engine:
        busy = engine.generate(request(engine, "Once upon a time", 480))
        req = request(engine, PROMPT, 4)
        pair = engine.generate(replace(req, n=2))
        # A round after both arrived took the first into a slot; one slot is free, but the pair needs two: it waits,
        # and holds two of the queue's places. Paused, the first cannot end however fast the machine decodes.
        async with engine.probe.paused():
            assert engine.stats().queue_depth == 1 and engine.stats().slots_busy == 1
            with pytest.raises(EngineOverloadedError):
                engine.generate(replace(req, n=2))
            await busy.aclose()
        events = [event async for event in pair]
        assert events[-1].completion_tokens == 8
        assert engine.stats().slots_busy == 0


@pytest.mark.asyncio
async def test_cancelling_a_multi_choice_request_frees_every_slot(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=4) as engine:
        req = request(engine, PROMPT, 200)
        stream = engine.generate(replace(req, n=4))
        async for _ in stream:
            break
        await stream.aclose()
        async with engine.probe.paused():  # a round after the cancel: every slot released
            assert engine.stats().slots_busy == 0
        # All four slots are usable again at once.
        events = await events_of(engine, replace(request(engine, PROMPT, 2), n=4))
        assert events[-1].completion_tokens == 8
