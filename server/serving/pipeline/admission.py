"""Admission of one generation: lease the serving model, build the job, run the pipeline up to its first event.

Waiting for the first event before answering means every refusal a stage makes (a bad key, a rate limit, a full
queue) is still an HTTP status, not an error inside a stream that already said 200.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from server.access.caller import Caller
from server.engine.base import (
    ChoiceFinished,
    Engine,
    Finished,
    FinishReason,
    GenerationEvent,
    TextDelta,
    TokenLogprob,
)
from server.errors import APIError
from server.lifecycle.catalogue import CatalogueModel
from server.lifecycle.failures import ModelQueueFullError, ModelUnavailableError
from server.lifecycle.holder import Lease, ModelNotReadyError, ServerDrainingError
from server.lifecycle.registry import ModelRegistry
from server.serving.pipeline.job import Body, Endpoint, Errand, ServingJob
from server.serving.pipeline.stages import Events, Next, Pipeline
from server.serving.stages.permit import require_permitted
from server.serving.stages.record import failed_status
from server.telemetry import prometheus

# Names the exact model that answered (the sha256 of its GGUF): across a hot swap, two replicas or two requests may
# answer from different models under the same model id (or alias).
MODEL_VERSION_HEADER = "x-ggufstack-model-version"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServingContext:
    """What a generation route hands to the serving layer: where models live, the stages, who asks, and the id."""

    models: ModelRegistry
    pipeline: Pipeline
    caller: Caller
    request_id: str  # the server's own id, unique per request
    conversation_id: str | None = None
    client_request_id: str | None = None  # the client's X-Request-Id: traced, never trusted to be unique


@dataclass(eq=False)
class Admitted:
    """A generation whose first event has come; `events()` yields it and the rest, then returns the lease."""

    job: ServingJob
    _first: GenerationEvent
    _rest: Events
    _lease: Lease

    async def events(self) -> Events:
        try:
            yield self._first
            async for event in self._rest:
                yield event
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the events and return the lease, however far the reply got: also when the reply's stream never
        started (a client gone before its first chunk), whose generators then never run a line. Idempotent."""
        try:
            await self._rest.aclose()
        finally:
            self._lease.release()

    def fail(self, exc: Exception) -> None:
        """Make `exc`, a failure while the reply was shaped or sent, the request's recorded outcome (the first one
        wins). It counts while the events are open: the record stage writes the audit row as they close."""
        if self.job.reply_error is None:
            self.job.reply_error = exc

    @asynccontextmanager
    async def streaming(self) -> AsyncIterator[Events]:
        """The events, for a reply that streams: a failure while they are open (shaping a chunk from them) is
        recorded as the request's outcome before they close, as `settle` does for a whole reply. A client that
        goes away closes them without a failure: the record stage says so (499)."""
        async with aclosing(self.events()) as events:
            try:
                yield events
            except Exception as exc:
                self.fail(exc)
                raise

    async def collect(self) -> Collected:
        """The whole generation, for a reply that is not streamed."""
        return await self.settle(_as_collected)

    async def settle(self, reply: Callable[[Collected], Awaitable[T]]) -> T:
        """The reply `reply` builds from the whole generation. It runs before the generation closes, so that its
        failure (a Responses answer that could not be stored) is the request's recorded outcome, not a success."""
        n = self.job.generation.n if self.job.generation is not None else 1
        parts: list[list[str]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        reasons: dict[int, FinishReason] = {}
        # aclosing: returning from inside the loop must close the events (and so return the lease) now, not when the
        # generator is garbage-collected, or a hot swap waits on a request that has long been answered.
        async with aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts[event.index].append(event.text)
                    logprobs[event.index].extend(event.logprobs)
                elif isinstance(event, ChoiceFinished):
                    reasons[event.index] = event.finish_reason
                else:
                    choices = [
                        CollectedChoice(i, "".join(parts[i]), logprobs[i], reasons.get(i, event.finish_reason))
                        for i in range(n)
                    ]
                    try:
                        return await reply(Collected(choices, event))
                    except Exception as exc:
                        self.fail(exc)
                        raise
        raise RuntimeError("the pipeline ended a generation without a Finished event")

    async def finish(self) -> Finished:
        """Run a job whose answer the last stage leaves on the job (embeddings) to its Finished event."""
        async with aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, Finished):
                    return event
        raise RuntimeError("the pipeline ended a request without a Finished event")


async def _as_collected(whole: Collected) -> Collected:
    return whole


@dataclass(frozen=True, slots=True)
class CollectedChoice:
    index: int
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class Collected:
    choices: list[CollectedChoice]
    finished: Finished


async def lease_model(
    models: ModelRegistry,
    model: str,
    caller: Caller,
    before_load: Callable[[], Awaitable[None]] | None = None,
    starting_load: Callable[[Caller, str, str | None], str] | None = None,
    waiting: Callable[[Caller], AbstractContextManager[object]] | None = None,
) -> Lease:
    """A lease on the model `model` names (its id or an alias), loading it if it is not loaded; 404 when no catalogue
    model has that name.

    A key limited to other models is refused here, before anything touches the model: a lease, even one returned at
    once, would hold off its eviction, and a load evicts what other keys use. When the model is not loaded,
    `before_load` (the pipeline's load gates: its key's request limit) runs too before the load begins,
    `starting_load` (its key's load limit) just before this request starts one, and `waiting` (the key's cap on
    requests in flight) is held while it waits, from before the gates, as the pipeline's stages run in that order."""
    found = models.resolve(model)
    if found is None:
        raise model_not_found(models, model, caller)
    require_permitted(caller, found.id)
    # A model closed while it makes room for another is loaded again once evicted: this request may start that load.
    loading = found.holder.current is None or models.closed(found)
    with waiting(caller) if loading and waiting is not None else contextlib.nullcontext():
        if loading and before_load is not None:
            await before_load()
        return await _lease(models, found, caller, starting_load)


async def _lease(
    models: ModelRegistry,
    found: CatalogueModel,
    caller: Caller,
    starting_load: Callable[[Caller, str, str | None], str] | None,
) -> Lease:
    try:
        return await models.lease(found, functools.partial(starting_load, caller, found.id) if starting_load else None)
    except ServerDrainingError:
        prometheus.requests_refused.labels("draining").inc()
        raise
    except (ModelNotReadyError, ModelUnavailableError):
        prometheus.requests_refused.labels("not_ready").inc()
        raise
    except ModelQueueFullError:
        prometheus.requests_refused.labels("overloaded").inc()
        raise


def model_not_found(models: ModelRegistry, model: str, caller: Caller | None = None) -> APIError:
    """404 naming the models the caller may use (a key is told nothing of the others)."""
    usable = [m.id for m in models.models if caller is None or caller.may_use(m.id)]
    served = ", ".join(repr(m) for m in usable[:10]) or "none this API key may use"
    return APIError(
        404,
        f"the model {model!r} does not exist; this server serves {served}",
        type="not_found_error",
        param="model",
        code="model_not_found",
    )


async def admit(
    ctx: ServingContext,
    endpoint: Endpoint,
    body: Body,
    prepare: Callable[[Engine], object],
    *,
    model: str,
    terminal: Next | None = None,
    lookup: Callable[[], Awaitable[None]] | None = None,
) -> Admitted:
    """Lease the model the body names, build the job and run the pipeline to its first event. `prepare` (render,
    tokenize, compile the grammar) runs in the pipeline's prepare stage, after the limits, `lookup` (what it must read
    first) just before it; `terminal` replaces the pipeline's last stage (embeddings). The model-version header is
    set here, once, for every answer."""
    arrived = time.monotonic()  # a load of the model on demand counts in the time to first token
    admitted_early: dict[str, str] | None = None

    async def before_load() -> None:
        nonlocal admitted_early
        admitted_early = await ctx.pipeline.before_load(ctx.caller, ctx.request_id)

    try:
        lease = await lease_model(
            ctx.models, model, ctx.caller, before_load, ctx.pipeline.starting_load, ctx.pipeline.waiting_for_load
        )
    except BaseException as exc:
        # Refused before the pipeline, whose record stage writes the audit row: an unknown or forbidden model, a
        # full wait or load limit, a load that timed out, a client gone while its model loaded. Recorded here, so
        # the loads and evictions a key causes are in its audit trail.
        latency_ms = (time.monotonic() - arrived) * 1000
        errand = Errand(ctx.request_id, endpoint, ctx.caller, ctx.client_request_id, latency_ms, failed_status(exc))
        ctx.pipeline.record(errand)
        raise
    try:
        job = ServingJob(
            ctx.request_id,
            endpoint,
            body,
            lease.model,
            prepare,
            ctx.caller,
            lookup=lookup,
            conversation_id=ctx.conversation_id,
            client_request_id=ctx.client_request_id,
            arrived_at=arrived,
        )
        job.response_headers[MODEL_VERSION_HEADER] = lease.model.sha256
        if admitted_early is not None:
            job.request_counted = True
            job.response_headers.update(admitted_early)
        prometheus.model_requests.labels(lease.model.model_id, endpoint).inc()
        events = ctx.pipeline.run(job, terminal)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
    except BaseException:
        lease.release()
        raise
    lease.admitted = True  # past every stage that may refuse it: this request uses the model (its idle clock)
    return Admitted(job, first, events, lease)
