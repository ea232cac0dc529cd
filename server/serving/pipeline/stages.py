"""The serving pipeline: named stages wrapped around the engine, each one concern in its own module.

A stage is an async generator `(job, call_next) -> events`. Before its first event it may refuse the request by
raising `APIError` (the route waits for the first event before it sends headers, so a refusal is a real HTTP status),
answer by itself (a cache hit yields events without calling `call_next`), or pass on `call_next(job)`'s events. After
the last event it does its bookkeeping (charge tokens, record the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, aclosing
from functools import partial
from typing import Protocol

from server.access.caller import Caller
from server.access.load_limit import LoadLimit
from server.engine.base import Engine, Finished, GenerationEvent
from server.serving.pipeline.job import Errand, PreparedGeneration, ServingJob

Events = AsyncGenerator[GenerationEvent, None]
Next = Callable[[ServingJob], Events]


class Stage(Protocol):
    def __call__(self, job: ServingJob, call_next: Next) -> Events: ...


async def prepare(job: ServingJob, call_next: Next) -> Events:
    """Run the job's preparation (render, tokenize, compile its grammar) in a worker thread: after the stages that
    may refuse the request cheaply (key, model permission, request rate), and off the event loop, so one large
    prompt does not stall every other request's streaming. Its lookup (a read of what it continues) runs first, here,
    so a request refused earlier reads nothing and a lookup's refusal is recorded like any other.

    The compiled grammar is this stage's until the engine takes it: a generation that never reaches the engine (a
    later stage refused it, the cache answered, the client left first) has it closed here."""
    try:
        if job.lookup is not None:
            await job.lookup()
        if job.preparation is not None:
            prepared = await _prepared(job.preparation, job.model.engine)
            if isinstance(prepared, PreparedGeneration):
                job.generation, job.tool_format = prepared.request, prepared.tool_format
                job.reasoning = prepared.reasoning
                if prepared.body is not None:
                    job.body = prepared.body
            elif job.endpoint == "embeddings" and isinstance(prepared, list):
                job.embedding_inputs = prepared
            else:
                job.prepared = prepared
        async with aclosing(call_next(job)) as events:
            async for event in events:
                yield event
    finally:
        if job.generation is not None and job.generation.grammar is not None:
            job.generation.grammar.close()  # nothing if the engine took it


async def _prepared(preparation: Callable[[Engine], object], engine: Engine) -> object:
    """The preparation's result. Abandoned meanwhile (the client left), it still waits for the worker thread: the
    thread uses the model, whose lease is returned only once this stage has unwound (a hot swap must not free the
    weights under it), and the grammar it compiles is closed, since nobody else will ever see it."""
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, contextvars.copy_context().run, preparation, engine)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await _outlast(work)
        _close_abandoned(work)
        raise


async def _outlast(work: asyncio.Future[object]) -> None:
    """Wait for `work` to end, through further cancellations (re-raised by the caller, which is being cancelled)."""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([work])


def _close_abandoned(work: asyncio.Future[object]) -> None:
    if work.cancelled() or work.exception() is not None:
        return
    prepared = work.result()
    if isinstance(prepared, PreparedGeneration) and prepared.request.grammar is not None:
        prepared.request.grammar.close()


async def answer_prepared(job: ServingJob) -> Events:
    """The last stage of a tokenizer request: its answer was prepared; the usage is the tokens it holds."""
    yield Finished("stop", 0, 0)


async def generate(job: ServingJob) -> Events:
    """The last stage of a generation: run it on the job's engine. However it ends (finished, failed, or closed by a
    client that went away), the tokens it generated are on the job before the stages around it do their bookkeeping."""
    if job.generation is None:
        raise TypeError("generate() needs a generation job")
    stream = job.model.engine.generate(job.generation)
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()
        job.generated_tokens = stream.completion_tokens


async def embed(job: ServingJob) -> Events:
    """The last stage of an embeddings request: the vectors go on the job, the usage into its one Finished event."""
    job.embeddings = await job.model.engine.embed(job.embedding_inputs)
    yield Finished("stop", job.prompt_tokens, 0)


# Told of each request that ran no model (an Errand) once it ended: the record stage writes its audit row.
Recorder = Callable[[Errand], None]


# A check that runs before a request loads its model (its model is not loaded): what it allows is said in the
# response headers it returns. Loading evicts what other keys use, so a request a stage would refuse must not get
# that far: `RequestLimitStage.before_load` admits it against its key's RPM here instead of in the pipeline.
LoadGate = Callable[[Caller, str], Awaitable[Mapping[str, str]]]
# Held while a request waits for its model to load: `ConcurrencyStage.waiting_for_load` counts it as in flight.
LoadWait = Callable[[Caller], AbstractContextManager[None]]
# A check that runs before a request's body is read, on its caller alone: refuses (raises) what would be refused
# whatever the body holds, so that it is not parsed for nothing (`RequestLimitStage.before_body`).
BodyGate = Callable[[Caller], None]


class Pipeline:
    def __init__(
        self,
        stages: Sequence[Stage],
        terminal: Next = generate,
        load_gates: Sequence[LoadGate] = (),
        recorders: Sequence[Recorder] = (),
        load_limit: LoadLimit | None = None,
        load_waits: Sequence[LoadWait] = (),
        body_gates: Sequence[BodyGate] = (),
    ) -> None:
        self.stages = tuple(stages)
        self._terminal = terminal
        self._body_gates = tuple(body_gates)
        self._load_gates = tuple(load_gates)
        self._load_waits = tuple(load_waits)
        self._recorders = tuple(recorders)
        self._load_limit = load_limit

    def before_body(self, caller: Caller) -> None:
        """Run the body gates for a request whose caller is known and whose body is not read yet; their refusal."""
        for gate in self._body_gates:
            gate(caller)

    async def before_load(self, caller: Caller, request_id: str) -> dict[str, str]:
        """Run the load gates for a request whose model must be loaded first; their headers, or their refusal."""
        headers: dict[str, str] = {}
        for gate in self._load_gates:
            headers.update(await gate(caller, request_id))
        return headers

    def waiting_for_load(self, caller: Caller) -> contextlib.ExitStack:
        """Held while a request of `caller`'s waits for its model to load; entering it may refuse the request."""
        with contextlib.ExitStack() as entering:  # a refusal leaves the waits entered before it
            for wait in self._load_waits:
                entering.enter_context(wait(caller))
            return entering.pop_all()

    def starting_load(self, caller: Caller, model_id: str, evicted_by: str | None) -> str:
        """Count the load of `model_id` a request of `caller`'s is about to start, or refuse it (its key's limit);
        the load's owner for the registry (see ModelRegistry.lease)."""
        if self._load_limit is not None:
            return self._load_limit.starting(caller, model_id, evicted_by)
        return caller.key_id or ""

    def record(self, errand: Errand) -> None:
        """Record a request that ran no model; its request limit was the load gates' (`before_load`)."""
        for recorder in self._recorders:
            recorder(errand)

    def run(self, job: ServingJob, terminal: Next | None = None) -> Events:
        """The job's events through every stage; `terminal` replaces the pipeline's last stage (e.g. `embed`)."""
        call: Next = terminal or self._terminal
        for stage in reversed(self.stages):
            call = partial(stage, call_next=call)
        return call(job)
