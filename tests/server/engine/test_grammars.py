"""Grammars on their way through the engine: compiled once (an error names the request field they came from), taken
by `generate`, cloned for every extra choice, and freed on every path: refusal, cancel, a client gone, shutdown."""

from __future__ import annotations

import asyncio
import gc
import re

import pytest

from server.engine.base import (
    ContextOverflowError,
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    GenerationEvent,
    GrammarDeadEndError,
    TextDelta,
)
from server.engine.llama_model import LlamaModel
from tests.support.engine import request, run, running_engine

PROMPT = "My favourite colour and animal are"
PAIR = 'root ::= ("red" | "green" | "blue" | "yellow") " " ("cat" | "dog" | "bird" | "horse")'
PAIR_TEXT = re.compile(r"(red|green|blue|yellow) (cat|dog|bird|horse)")
# Any number of words: never ends on its own, so a generation under it runs until it is stopped.
WORDS = 'root ::= ([a-z]+ " ")*'


@pytest.mark.asyncio
@pytest.mark.parametrize("param", ["tools", "response_format"])
async def test_a_grammar_that_does_not_compile_names_the_field_it_came_from(model: LlamaModel, param: str) -> None:
    async with running_engine(model) as engine:
        with pytest.raises(EngineError) as refused:
            engine.compile_grammar("root ::= (", param=param)
        assert refused.value.param == param
        assert engine.probe.live_grammars() == 0


@pytest.mark.asyncio
async def test_every_completion_matches_the_grammar_and_it_is_freed_when_it_ends(model: LlamaModel) -> None:
    async with running_engine(model) as engine:
        grammar = engine.compile_grammar(PAIR, param="response_format")
        assert engine.probe.live_grammars() == 1
        events = [e async for e in engine.generate(request(engine, PROMPT, 16, grammar=grammar))]
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert PAIR_TEXT.fullmatch(text), text
        assert events[-1].finish_reason == "stop"
        grammar.close()  # the engine took it: closing does nothing
        assert engine.probe.live_grammars() == 0


@pytest.mark.asyncio
async def test_each_extra_choice_samples_under_a_clone(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=4) as engine:
        grammar = engine.compile_grammar(PAIR, param="response_format")
        req = request(engine, PROMPT, 16, n=3, grammar=grammar, temperature=0.9, seed=11)
        stream = engine.generate(req)
        # Admitted (no choice can end within the one step that may run first): the grammar and two clones.
        async with engine.probe.paused():
            assert engine.probe.live_grammars() == 3
        events: list[GenerationEvent] = [e async for e in stream]
        async with engine.probe.paused():
            assert engine.probe.live_grammars() == 0
    texts = ["".join(e.text for e in events if isinstance(e, TextDelta) and e.index == i) for i in range(3)]
    assert all(PAIR_TEXT.fullmatch(t) for t in texts), texts


@pytest.mark.asyncio
async def test_a_refused_request_frees_its_grammar(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=1, max_queue=0) as engine:
        grammar = engine.compile_grammar(WORDS, param="response_format")
        with pytest.raises(ContextOverflowError):
            engine.generate(request(engine, PROMPT, engine.n_ctx, grammar=grammar))
        assert engine.probe.live_grammars() == 0
        async with engine.probe.paused():
            held = engine.generate(request(engine, PROMPT, 8))
            with pytest.raises(EngineOverloadedError):
                engine.generate(request(engine, PROMPT, 8, grammar=engine.compile_grammar(WORDS, param="tools")))
            assert engine.probe.live_grammars() == 0
            await held.aclose()


@pytest.mark.asyncio
async def test_a_grammar_closed_before_generation_is_refused(model: LlamaModel) -> None:
    async with running_engine(model) as engine:
        grammar = engine.compile_grammar(WORDS, param="tools")
        grammar.close()
        grammar.close()
        with pytest.raises(EngineError) as refused:
            engine.generate(request(engine, PROMPT, 8, grammar=grammar))
        assert refused.value.param == "tools"
        assert engine.probe.live_grammars() == 0


@pytest.mark.asyncio
async def test_cancelled_generations_free_their_grammars_running_or_waiting(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=1, max_queue=2) as engine:
        running = engine.generate(request(engine, PROMPT, 400, grammar=engine.compile_grammar(WORDS, param="tools")))
        await anext(aiter(running))
        async with engine.probe.paused():  # however fast the machine, nothing ends before the cancels
            waiting = engine.generate(request(engine, PROMPT, 8, grammar=engine.compile_grammar(WORDS, param="tools")))
            assert engine.probe.live_grammars() == 2
            await waiting.aclose()
            await running.aclose()
        async with engine.probe.paused():
            assert engine.probe.live_grammars() == 0
            assert engine.stats().slots_busy == 0


@pytest.mark.asyncio
async def test_a_stream_dropped_by_a_client_that_went_away_frees_its_grammar(model: LlamaModel) -> None:
    async with running_engine(model) as engine:
        first_token = asyncio.Event()

        async def client() -> None:
            grammar = engine.compile_grammar(WORDS, param="tools")
            async for event in engine.generate(request(engine, PROMPT, 400, grammar=grammar)):
                if isinstance(event, TextDelta):
                    first_token.set()

        task = asyncio.create_task(client())
        await first_token.wait()
        async with engine.probe.paused():
            task.cancel()  # the task reading the stream is cancelled and drops it, unclosed
            with pytest.raises(asyncio.CancelledError):
                await task
            gc.collect()
        async with engine.probe.paused():
            assert engine.probe.live_grammars() == 0


@pytest.mark.asyncio
async def test_shutdown_frees_the_grammars_of_running_and_waiting_generations(model: LlamaModel) -> None:
    async with running_engine(model, n_slots=1, max_queue=2) as engine:
        running = engine.generate(request(engine, PROMPT, 400, grammar=engine.compile_grammar(WORDS, param="tools")))
        await anext(aiter(running))
        waiting = engine.generate(request(engine, PROMPT, 8, grammar=engine.compile_grammar(WORDS, param="tools")))
        await engine.close()
        assert engine.probe.live_grammars() == 0
        for stream in (running, waiting):
            with pytest.raises(EngineClosedError):
                async for _ in stream:
                    pass
        with pytest.raises(EngineClosedError):
            engine.generate(request(engine, PROMPT, 8, grammar=engine.compile_grammar(WORDS, param="tools")))
        assert engine.probe.live_grammars() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9}, {"temperature": 0.9, "top_k": 40}])
@pytest.mark.parametrize("dead", ["root ::= [^\\x00-\\U0010FFFF]", 'root ::= "a" [^\\x00-\\U0010FFFF]'])
async def test_a_grammar_that_allows_no_token_ends_its_request_and_others_go_on(
    model: LlamaModel, dead: str, sampling: dict[str, object]
) -> None:
    # A character class that admits no character: accepting the token sampled anyway aborts the process in llama.cpp.
    async with running_engine(model) as engine:
        other = asyncio.create_task(run(engine, request(engine, PROMPT, 24)))
        grammar = engine.compile_grammar(dead, param="response_format")
        with pytest.raises(GrammarDeadEndError) as failed:
            await run(engine, request(engine, PROMPT, 8, grammar=grammar, n=2, **sampling))
        assert failed.value.param == "response_format"
        _, finished = await other
        assert finished.completion_tokens == 24
        async with engine.probe.paused():
            assert engine.probe.live_grammars() == 0
