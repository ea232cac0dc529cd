"""The bridge between the engine thread and one request's asyncio consumer.

The engine thread never blocks on a consumer: it schedules `put_nowait` on the consumer's event loop. The consumer
iterates a `JobStream`; closing it (or dropping it) only raises a flag, which the engine thread reads at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from server.engine.base import Finished, FinishReason, GenerationEvent, GenerationRequest


@dataclass(eq=False)
class Job:
    """One request on its way through the engine; written by the engine thread, read by the event loop."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[GenerationEvent | BaseException] = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.monotonic)
    # A plain bool: set by the event loop, read by the engine thread; a stale read only delays the release by a step.
    cancelled: bool = False
    # Whether the job still counts against the engine's admission limit; guarded by the admission's lock.
    counted: bool = True
    # The compiled grammar (a llama.cpp sampler), the engine's from submission until admission hands it to a sampler.
    grammar: llama_cpp.llama_sampler_p | None = None
    # Written by the engine thread only: slots still generating for the job, and the tokens its choices generated so
    # far (read by the event loop when a generation ends early: what it cost).
    choices_running: int = 0
    completion_tokens: int = 0
    first_finish_reason: FinishReason = "stop"
    first_stop_sequence: str | None = None

    def emit(self, event: GenerationEvent | BaseException) -> None:
        # The loop is gone when the server shuts down mid-generation; nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class JobStream:
    """The async iterator `Engine.generate` returns: the job's events in order, then exactly one Finished."""

    def __init__(self, job: Job, on_cancel: Callable[[Job], None]) -> None:
        self._job = job
        self._on_cancel = on_cancel
        self._done = False

    def __aiter__(self) -> JobStream:
        return self

    @property
    def completion_tokens(self) -> int:
        return self._job.completion_tokens

    async def __anext__(self) -> GenerationEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._job.events.get()
        if isinstance(event, BaseException):
            self._done = True
            raise event
        if isinstance(event, Finished):
            self._done = True
        return event

    async def aclose(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if not self._done:
            self._done = True
            self._job.cancelled = True
            self._on_cancel(self._job)

    def __del__(self) -> None:
        # A stream dropped without being closed (or never iterated) must still give its slot back.
        self._cancel()


class Outbox:
    """A step's events, handed to the event loop in one call when the step is done.

    One wake-up per step instead of one per token: every wake-up of the event loop is a thread that competes with
    llama.cpp's threads for the same cores, and they stall each other at their sync points.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Job, GenerationEvent | BaseException]] = []

    def put(self, job: Job, event: GenerationEvent | BaseException) -> None:
        self._items.append((job, event))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, GenerationEvent | BaseException]]] = {}
        for job, event in items:
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, delivered in by_loop.items():
            # The loop is gone when the server shuts down mid-generation; nobody is left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, delivered)


def _deliver(items: list[tuple[Job, GenerationEvent | BaseException]]) -> None:
    for job, event in items:
        job.events.put_nowait(event)
