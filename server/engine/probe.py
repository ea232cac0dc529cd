"""What tests and benchmarks may ask of a running batching engine beyond the `Engine` protocol; the server never does.

Reads of the engine thread's state run on that thread between steps (`Admission.call_soon`): after the round they run
in has admitted waiting requests and released cancelled ones, before it decodes. `paused()` holds the engine thread
there, which makes a test's timing independent of how fast the machine decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import llama_cpp

from server.engine.admission import Admission
from server.engine.grammars import Grammars
from server.engine.scheduler import Scheduler

T = TypeVar("T")


class EngineProbe:
    def __init__(self, admission: Admission, scheduler: Scheduler, grammars: Grammars) -> None:
        self._admission = admission
        self._scheduler = scheduler
        self._grammars = grammars

    async def kv_positions(self) -> list[int]:
        """llama_memory_seq_pos_max of every slot's sequence (-1: empty)."""
        scheduler = self._scheduler
        return await self._on_engine_thread(
            lambda: [llama_cpp.llama_memory_seq_pos_max(scheduler.mem, slot.seq_id) for slot in scheduler.slots]
        )

    async def graphs_reused(self) -> int:
        """How many decode steps reused the previous step's compute graph instead of building one."""
        return await self._on_engine_thread(lambda: llama_cpp.llama_perf_context(self._scheduler.ctx).n_reused)

    async def drop_prefix_cache(self) -> None:
        """Forget every idle slot's cached prompt (e.g. before measuring without prefix reuse)."""

        def drop() -> None:
            for slot in self._scheduler.slots:
                if not slot.active:
                    self._scheduler.evict(slot)

        await self._on_engine_thread(drop)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold the engine thread between two steps for the block's duration. Entering waits for a round that began
        after it was asked for: requests submitted before are admitted (if their slots are free), cancelled ones
        released; requests submitted inside the block wait in the queue. Close the engine only after the block."""
        resume = threading.Event()
        loop = asyncio.get_running_loop()
        holding: asyncio.Future[None] = loop.create_future()

        def held() -> None:
            if not holding.done():
                holding.set_result(None)

        def hold() -> None:
            loop.call_soon_threadsafe(held)
            resume.wait()

        self._admission.call_soon(hold)
        try:
            await holding
            yield
        finally:
            resume.set()

    def live_grammars(self) -> int:
        """Compiled grammars not freed yet, the engine's and its callers' alike. Exact once cancelled generations
        were released: inside `paused()`, or after the engine closed."""
        return self._grammars.live

    async def _on_engine_thread(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def call() -> None:
            try:
                result = fn()
            except Exception as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(done.set_exception, exc)
            else:
                loop.call_soon_threadsafe(done.set_result, result)

        self._admission.call_soon(call)
        return await done
