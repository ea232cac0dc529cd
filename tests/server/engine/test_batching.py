"""The continuous batching engine on the demo model: concurrency, determinism, fairness, cancellation, bounds, leaks."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine.base import EngineOverloadedError, Finished, TextDelta
from server.engine.llama_model import LlamaModel
from tests.support.engine import PROMPTS, SAMPLINGS, differ_batched, request, run, running_engine


@pytest.mark.asyncio
async def test_eight_concurrent_streams_complete_with_exact_token_counts(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=8) as engine:
        results = await asyncio.gather(*(run(engine, request(engine, p, 8 + i)) for i, p in enumerate(PROMPTS)))
        for i, (deltas, finished) in enumerate(results):
            assert finished == Finished("length", prompt_tokens=finished.prompt_tokens, completion_tokens=8 + i)
            assert "".join(deltas)
        assert engine.stats().slots_busy == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("sampling", SAMPLINGS.values(), ids=SAMPLINGS.keys())
async def test_same_tokens_alone_and_beside_seven_others(model: LlamaModel, sampling: dict) -> None:
    assert await differ_batched(model, **sampling) == []


@pytest.mark.asyncio
async def test_long_prompt_prefills_in_chunks_while_other_streams_keep_going(model: LlamaModel) -> None:
    async with running_engine(model, n_ctx=1024, prefill_chunk=32) as engine:
        arrivals: dict[int, list[float]] = {0: [], 1: []}

        async def stream(i: int) -> None:
            async for event in engine.generate(request(engine, PROMPTS[i], 120)):
                if isinstance(event, TextDelta):
                    arrivals[i].append(time.monotonic())

        streams = [asyncio.create_task(stream(i)) for i in arrivals]
        while min(len(a) for a in arrivals.values()) < 2:
            await asyncio.sleep(0.01)
        long_prompt = " ".join(f"word{i}" for i in range(200))  # about 750 tokens: two dozen prefill chunks
        submitted = time.monotonic()
        events = aiter(engine.generate(request(engine, long_prompt, 4)))
        await anext(events)
        first_token = time.monotonic()
        async for _ in events:
            pass
        await asyncio.gather(*streams)
    for times in arrivals.values():
        during_prefill = [t for t in times if submitted < t < first_token]
        assert len(during_prefill) >= 10, "a running stream stalled while the long prompt was read"


@pytest.mark.asyncio
async def test_cancelled_generation_frees_its_slot(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=1, max_queue=0) as engine:
        events = engine.generate(request(engine, PROMPTS[0], 500))
        await anext(aiter(events))
        await events.aclose()
        # The only slot must come back: a new request is admitted (not refused) and runs to its end.
        _, finished = await asyncio.wait_for(run(engine, request(engine, PROMPTS[1], 4)), timeout=30)
        assert finished.completion_tokens == 4
        assert engine.stats().slots_busy == 0


@pytest.mark.asyncio
async def test_full_queue_refuses_with_retry_after(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=1, max_queue=2) as engine:
        # Paused, no generation can end and free its place however fast the machine decodes.
        async with engine.probe.paused():
            held = [engine.generate(request(engine, PROMPTS[i], 200)) for i in range(3)]  # one slot, two waiting
            with pytest.raises(EngineOverloadedError) as refused:
                engine.generate(request(engine, PROMPTS[3], 4))
            assert refused.value.retry_after_s >= 1
            assert engine.stats().requests_rejected == 1
            await held[2].aclose()  # a request that leaves makes room again at once
            accepted = engine.generate(request(engine, PROMPTS[3], 4))
        for stream in [*held[:2], accepted]:
            await stream.aclose()


@pytest.mark.asyncio
async def test_stop_string_spanning_a_token_boundary(model: LlamaModel) -> None:
    async with running_engine(model) as engine:
        deltas, _ = await run(engine, request(engine, PROMPTS[1], 32))
        text = "".join(deltas)
        # A stop string made of the end of one token's text and the start of the next one's.
        i = next(i for i in range(1, len(deltas) - 1) if len(deltas[i]) >= 2 and len(deltas[i + 1]) >= 2)
        stop = deltas[i][-2:] + deltas[i + 1][:2]
        stopped, finished = await run(engine, request(engine, PROMPTS[1], 32, stop=[stop]))
    assert "".join(stopped) == text[: text.index(stop)]
    assert finished.finish_reason == "stop"


@pytest.mark.asyncio
async def test_prefix_reuse_gives_the_same_tokens_without_recomputing_the_prefix(model: LlamaModel) -> None:
    system = "You are a helpful assistant. " * 20
    async with running_engine(model, reuse_prefix=False) as plain:
        expected = await run(plain, request(plain, system + "Question: what is two plus two?", 16))
    async with running_engine(model) as engine:
        await run(engine, request(engine, system + "Question: name a colour.", 16))
        reused_before = engine.stats().prompt_tokens_reused_total
        got = await run(engine, request(engine, system + "Question: what is two plus two?", 16))
        reused = engine.stats().prompt_tokens_reused_total - reused_before
        assert reused >= len(engine.tokenize(system, add_special=True)) - 1
    assert "".join(got[0]) == "".join(expected[0])


@pytest.mark.asyncio
async def test_every_slot_can_use_the_whole_context_at_once(model: LlamaModel) -> None:
    async with running_engine(model, n_ctx=128, n_slots=4) as engine:
        prompt = " ".join(f"item{i}" for i in range(10))
        reqs = [request(engine, f"{i}: {prompt}", 0) for i in range(4)]
        reqs = [request(engine, f"{i}: {prompt}", engine.n_ctx - len(r.prompt_tokens)) for i, r in enumerate(reqs)]
        results = await asyncio.wait_for(asyncio.gather(*(run(engine, r) for r in reqs)), timeout=120)
        assert [f.prompt_tokens + f.completion_tokens for _, f in results] == [engine.n_ctx] * 4


@pytest.mark.asyncio
async def test_no_slot_or_kv_leak_after_200_requests(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=4, max_queue=200) as engine:

        async def one(i: int) -> None:
            events = engine.generate(request(engine, f"{PROMPTS[i % 8]} {i}", 2))
            if i % 10 == 0:  # some clients hang up after the first token
                await anext(aiter(events))
                await events.aclose()
            else:
                async for _ in events:
                    pass

        await asyncio.gather(*(one(i) for i in range(200)))
        async with engine.probe.paused():  # a round after the last hang-up: its slot is released
            stats = engine.stats()
        assert (stats.slots_busy, stats.queue_depth) == (0, 0)
        assert stats.requests_finished >= 180
        assert all(pos < engine.n_ctx for pos in await engine.probe.kv_positions())  # only idle prefix caches remain
        await engine.probe.drop_prefix_cache()
        assert await engine.probe.kv_positions() == [-1] * engine.n_slots


@pytest.mark.asyncio
async def test_decode_steps_reuse_the_compute_graph_whatever_order_slots_were_taken_in(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=4) as engine:
        greeting = "Hello there, my friend"
        first, longer = request(engine, greeting, 1), [request(engine, p, 64) for p in PROMPTS[:2]]
        greeted = asyncio.create_task(run(engine, first))
        running = [asyncio.create_task(run(engine, r)) for r in longer]
        await greeted  # slot 0 (it came first), beside the longer ones in slots 1 and 2
        # Admitted after them, into slot 0 where its prefix is cached: the batch must not list slots in admission order.
        later = request(engine, greeting + ", how are you today?", 24)
        before = await engine.probe.graphs_reused()
        await run(engine, later)
        # The 23 steps after the later prompt's prefill have one shape; each must reuse the graph of the one before.
        assert await engine.probe.graphs_reused() - before >= 20
        await asyncio.gather(*running)
        positions = await engine.probe.kv_positions()
        expected = [len(later.prompt_tokens) + 22, *(len(r.prompt_tokens) + 62 for r in longer)]
        assert positions[:3] == expected, "the scenario held"


@pytest.mark.asyncio
async def test_a_prompt_cached_away_from_the_running_sequences_is_copied_next_to_them(model: LlamaModel) -> None:
    """The cached prefix of a prompt whose slot would leave a gap is copied into the packed slot (a KV stream copy),
    and the answer is the one computed from scratch."""
    async with running_engine(model, n_slots=8) as engine:
        requests = [request(engine, p, 4 + 8 * i) for i, p in enumerate(PROMPTS)]
        first = await asyncio.gather(*(run(engine, r) for r in requests))
        # Every slot's sequence ends where its own prompt's does: which prompt is where.
        ends = {len(r.prompt_tokens) + r.sampling.max_tokens - 2: i for i, r in enumerate(requests)}
        assert len(ends) == len(PROMPTS)
        before = await engine.probe.kv_positions()
        where = {ends[pos]: slot for slot, pos in enumerate(before)}
        long = engine.generate(request(engine, "Zebras and giraffes", 400))
        await anext(aiter(long))
        running = next(slot for slot, pos in enumerate(await engine.probe.kv_positions()) if pos != before[slot])
        k = next(i for i, slot in where.items() if abs(slot - running) > 1)
        reused_before = engine.stats().prompt_tokens_reused_total
        again = await run(engine, request(engine, PROMPTS[k], 4 + 8 * k))
        reused = engine.stats().prompt_tokens_reused_total - reused_before
        after = await engine.probe.kv_positions()
        await long.aclose()
    assert "".join(again[0]) == "".join(first[k][0])
    assert reused == len(requests[k].prompt_tokens) - 1
    moved = [slot for slot, pos in enumerate(after) if pos != before[slot] and slot != running]
    assert len(moved) == 1 and abs(moved[0] - running) == 1, (running, where[k], before, after)
    assert after[moved[0]] == before[where[k]], "the copy holds the prompt and answer the source held"


@pytest.mark.asyncio
async def test_an_idle_engine_admits_a_burst_of_requests_in_one_step(model: LlamaModel) -> None:
    """Requests reach the engine one at a time; an idle engine waits while they keep coming (here up to 200 ms
    between two), so none of them starts alone and the later ones wait a step for their first token."""
    async with running_engine(model, n_slots=4, burst=(0.2, 1.0)) as engine:
        first_tokens: list[float] = []

        async def stream(prompt: str) -> None:
            async for event in engine.generate(request(engine, prompt, 2)):
                if isinstance(event, TextDelta):
                    first_tokens.append(time.monotonic())
                    return

        tasks = []
        for prompt in PROMPTS[:4]:
            tasks.append(asyncio.create_task(stream(prompt)))
            await asyncio.sleep(0.025)  # a first step of one prompt alone takes about as long on 2 cores
        last_submitted = time.monotonic()
        await asyncio.gather(*tasks)
    assert min(first_tokens) > last_submitted - 0.025, "the first request started before the burst was in"


@pytest.mark.asyncio
async def test_a_request_admitted_first_leaves_the_cache_a_waiting_one_wants(model: LlamaModel) -> None:
    """In a burst, a new prompt admitted first would take the least recently used slot; when that slot alone caches
    the prompt of a request waiting behind it, the new prompt goes elsewhere and the waiting one reuses its cache."""
    async with running_engine(model, n_slots=4, burst=(0.2, 1.0)) as engine:
        tokens = [12, 12, 4, 12]  # PROMPTS[2] ends first: its slot is the least recently used, and caches least
        first = await asyncio.gather(*(run(engine, request(engine, PROMPTS[i], n)) for i, n in enumerate(tokens)))
        reused_before = engine.stats().prompt_tokens_reused_total
        wanted = request(engine, PROMPTS[2], 4)
        new = asyncio.create_task(run(engine, request(engine, "Zebras and giraffes", 4)))
        await asyncio.sleep(0.02)  # within the burst window: both are admitted in the same step, the new one first
        again, _ = await run(engine, wanted)
        await new
        reused = engine.stats().prompt_tokens_reused_total - reused_before
    assert "".join(again) == "".join(first[2][0])
    assert reused == len(wanted.prompt_tokens) - 1, "the new prompt shares nothing; the waiting one all but one token"


@pytest.mark.asyncio
async def test_new_requests_keep_the_active_sequences_packed(model: LlamaModel) -> None:
    """A step computes every KV stream between the lowest and the highest active sequence: a request goes to a slot
    that leaves no idle one between them, even when its short prompt is cached in a slot further away."""
    async with running_engine(model, n_slots=8) as engine:
        await asyncio.gather(*(run(engine, request(engine, p, 4)) for p in PROMPTS))
        again = [request(engine, PROMPTS[i], 40) for i in (0, 2, 5, 7)]
        await asyncio.gather(*(run(engine, r) for r in again))
        positions = await engine.probe.kv_positions()
        taken = [i for i, pos in enumerate(positions) if pos >= 20]
        assert len(taken) == 4 and taken == list(range(taken[0], taken[0] + 4)), positions
