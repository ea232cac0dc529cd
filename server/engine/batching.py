"""Continuous batching: every step feeds all active sequences to one `llama_decode` call.

One engine thread owns the llama context. Each step it (1) admits waiting requests into free slots, reusing the
longest cached prompt prefix, (2) drops cancelled generations, (3) builds one batch holding the next token of every
generating slot plus prefill chunks of slots still reading their prompt, within n_batch tokens and the free KV cells,
(4) decodes it and samples every slot whose logits came out. The KV cache is unified (one pool of n_ctx cells shared by
all sequences), so one long request can use the whole context while many short ones share it.

When the cache is full, idle slots' cached prefixes are evicted first; then the youngest active generation is
preempted: its KV is dropped and it re-reads its tokens later, so the oldest always progresses and nothing deadlocks.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar

import llama_cpp

from server.engine.base import (
    ContextOverflowError,
    EngineError,
    EngineOverloadedError,
    EngineStats,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from server.engine.handoff import Job, JobStream
from server.engine.llama_model import LlamaModel
from server.engine.metrics import EngineMetrics
from server.engine.slots import Slot, pick_slot

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many tokens of one prompt a step may prefill beside running decodes: small enough that a long prompt delays each
# running stream's next token by tens of milliseconds on a CPU, large enough that prefill stays efficient.
DEFAULT_PREFILL_CHUNK = 256


def default_slot_count(n_ctx: int) -> int:
    """One slot per 512 tokens of context, 1 to 16: each slot then has room for a typical chat turn on average."""
    return max(1, min(16, n_ctx // 512))


class EngineClosedError(EngineError):
    """The engine shut down before the generation finished."""


class DecodeError(RuntimeError):
    pass


class BatchingEngine:
    def __init__(
        self,
        model: LlamaModel,
        *,
        model_id: str,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        n_slots: int = 0,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        reuse_prefix: bool = True,
    ) -> None:
        self._model = model
        self._model_id = model_id
        n_slots = n_slots or default_slot_count(n_ctx)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(n_batch, n_ctx)
        params.n_seq_max = n_slots
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self._n_batch = params.n_batch
        self._prefill_chunk = max(1, min(prefill_chunk, self._n_batch))
        self._reuse_prefix = reuse_prefix
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._max_queue = max_queue
        self._admitted = itertools.count()
        self.metrics = EngineMetrics(n_slots)

        # Shared between the event loop and the engine thread, guarded by _cond.
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._in_flight = 0  # admitted or waiting, not yet released
        self._busy = 0  # slots holding a job (a copy the event loop may read)
        self._closing = False
        self._calls: list[Callable[[], None]] = []  # work the event loop hands to the engine thread (tests, tools)

        self._thread = threading.Thread(target=self._run, name="batching-engine", daemon=True)
        self._thread.start()

    # ---- the asyncio side ----

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    @property
    def gpu_offload(self) -> bool:
        return self._model.gpu_offload

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self._model.render_chat(messages)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        n_prompt = len(request.prompt_tokens)
        if n_prompt == 0:
            raise ContextOverflowError("the prompt is empty", param="prompt")
        if n_prompt + request.sampling.max_tokens > self._n_ctx:
            raise ContextOverflowError(
                f"this model's context is {self._n_ctx} tokens; the prompt has {n_prompt} and max_tokens asks for "
                f"{request.sampling.max_tokens} more",
                param="max_tokens" if n_prompt < self._n_ctx else "messages",
                code="context_length_exceeded",
            )
        self._model.check_token_ids(list(request.sampling.logit_bias), param="logit_bias")
        job = Job(request, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise EngineClosedError("the engine is shutting down")
            if self._in_flight >= len(self._slots) + self._max_queue:
                self.metrics.record_rejected()
                raise EngineOverloadedError(
                    f"all {len(self._slots)} slots are busy and {len(self._waiting)} requests are waiting",
                    retry_after_s=self._retry_after_s(),
                )
            self._in_flight += 1
            self._waiting.append(job)
            self._cond.notify()
        return JobStream(job, self._on_cancel)

    def stats(self) -> EngineStats:
        with self._cond:
            busy, waiting = self._busy, len(self._waiting)
        return self.metrics.snapshot(slots_busy=busy, queue_depth=waiting)

    async def kv_positions(self) -> list[int]:
        """llama_memory_seq_pos_max of every slot's sequence (-1: empty), read while the engine thread is idle."""
        return await self._when_idle(
            lambda: [llama_cpp.llama_memory_seq_pos_max(self._mem, slot.seq_id) for slot in self._slots]
        )

    async def drop_prefix_cache(self) -> None:
        """Forget every idle slot's cached prompt (e.g. before measuring without prefix reuse)."""

        def drop() -> None:
            for slot in self._slots:
                if not slot.active:
                    self._evict(slot)

        await self._when_idle(drop)

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    def _retry_after_s(self) -> int:
        queued_rounds = 1 + len(self._waiting) / len(self._slots)
        return max(1, math.ceil(queued_rounds * self.metrics.mean_request_s()))

    def _on_cancel(self, job: Job) -> None:
        with self._cond:
            self._cond.notify()

    async def _when_idle(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread between steps and return its result."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def call() -> None:
            try:
                result = fn()
            except Exception as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(done.set_exception, exc)
            else:
                loop.call_soon_threadsafe(done.set_result, result)

        with self._cond:
            self._calls.append(call)
            self._cond.notify()
        return await done

    # ---- the engine thread ----

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._admit()
                self._release_cancelled()
                if any(s.active for s in self._slots):
                    self._step()
        finally:
            self._shut_down()

    def _wait_for_work(self) -> bool:
        """Block until there is something to do; False once the engine is closing."""
        with self._cond:
            while True:
                if self._closing:
                    return False
                calls, self._calls = self._calls, []
                if calls:
                    break
                if self._busy or (self._waiting and self._has_free_slot()):
                    return True
                self._cond.wait()
        for call in calls:
            call()
        return True

    def _has_free_slot(self) -> bool:
        return self._busy < len(self._slots)

    def _admit(self) -> None:
        while True:
            with self._cond:
                if any(job.cancelled for job in self._waiting):
                    kept = collections.deque(job for job in self._waiting if not job.cancelled)
                    self._in_flight -= len(self._waiting) - len(kept)
                    self._waiting = kept
                if not self._waiting or not self._has_free_slot():
                    return
                job = self._waiting.popleft()
                self._busy += 1
            free = [s for s in self._slots if not s.active]
            slot, reused = pick_slot(free, job.request.prompt_tokens) if self._reuse_prefix else (free[0], 0)
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, reused, -1)
            slot.start(job, self._model.new_sampler(job.request.sampling), reused, next(self._admitted))

    def _release_cancelled(self) -> None:
        for slot in self._slots:
            if slot.active and slot.job.cancelled:
                self._release(slot)

    def _release(self, slot: Slot) -> None:
        if not self._reuse_prefix:
            self._evict(slot)
        slot.release()
        with self._cond:
            self._busy -= 1
            self._in_flight -= 1

    def _evict(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, 0, -1)
        slot.n_past = 0
        if not slot.active:
            slot.tokens.clear()

    def _preempt(self, slot: Slot) -> None:
        """Drop an active slot's KV; it re-reads its tokens when room frees up. Its output so far stays valid."""
        log.info("KV cache full: preempting sequence %d (%d tokens to recompute)", slot.seq_id, slot.n_past)
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, 0, -1)
        slot.n_past = 0

    def _free_cells(self) -> int:
        return self._n_ctx - sum(s.n_past for s in self._slots)

    def _evict_idle(self, needed: int) -> None:
        """Forget idle slots' cached prefixes, least recently used first, until `needed` cells are free."""
        for slot in sorted((s for s in self._slots if not s.active and s.n_past), key=lambda s: s.last_used):
            if self._free_cells() >= needed:
                return
            self._evict(slot)

    def _preempt_youngest(self, needed: int, active: list[Slot]) -> None:
        """Preempt generations, youngest first and never the oldest, until `needed` cells are free."""
        self._evict_idle(needed)
        for slot in sorted(active, key=lambda s: s.admitted, reverse=True)[:-1]:
            if self._free_cells() >= needed:
                return
            if slot.n_past:
                self._preempt(slot)

    def _plan(self) -> list[tuple[Slot, int]]:
        """Which slots feed how many tokens this step: every decode, then prefill chunks oldest first."""
        active = sorted((s for s in self._slots if s.active), key=lambda s: s.admitted)
        decoding = [s for s in active if s.pending == 1]
        if self._free_cells() < len(decoding):
            self._preempt_youngest(len(decoding), active)
            decoding = [s for s in active if s.pending == 1]
        plan = [(s, 1) for s in decoding]
        budget = self._n_batch - len(plan)
        # Keep the next step's decode room free too, so a prefill does not force a preemption on the very next step.
        reserve = 2 * len(decoding)
        for slot in active:
            if slot.pending > 1 and budget > 0:
                want = min(slot.pending, self._prefill_chunk, budget)
                self._evict_idle(want + reserve)
                n = min(want, self._free_cells() - reserve)
                if n > 0:
                    plan.append((slot, n))
                    budget -= n
                    reserve += n
        if not plan:
            # Every generation waits for cells the others hold: free them so the oldest can move.
            oldest = active[0]
            self._preempt_youngest(self._n_ctx, active)
            plan = [(oldest, min(oldest.pending, self._prefill_chunk, self._n_batch))]
        return plan

    def _step(self) -> None:
        plan = self._plan()
        batch = self._batch
        i = 0
        logits_at: list[tuple[Slot, int]] = []
        for slot, n in plan:
            start = slot.n_past
            for offset in range(n):
                batch.token[i] = slot.tokens[start + offset]
                batch.pos[i] = start + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.seq_id
                batch.logits[i] = False
                i += 1
            if start + n == len(slot.tokens):
                batch.logits[i - 1] = True
                logits_at.append((slot, i - 1))
        batch.n_tokens = i
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc == 1 and len(plan) > 1:
            # No KV room despite the accounting (e.g. fragmentation); llama.cpp left the cache unchanged. Free
            # everything but the oldest generation and let the next step retry.
            log.warning("llama_decode found no KV room for %d tokens; preempting and retrying", i)
            self._preempt_youngest(self._n_ctx, sorted((s for s, _ in plan), key=lambda s: s.admitted))
            return
        if rc != 0:
            self._fail([s for s, _ in plan], DecodeError(f"llama_decode failed with code {rc}"))
            return
        for slot, n in plan:
            slot.n_past += n
        now = time.monotonic()
        for slot, index in logits_at:
            self._sample(slot, index, now)
        self.metrics.record_step(len(logits_at))

    def _sample(self, slot: Slot, index: int, now: float) -> None:
        job, sampling = slot.job, slot.job.request.sampling
        token = slot.sampler.sample(self._ctx, index)
        if slot.first_token_at is None:
            slot.first_token_at = now
            self.metrics.record_first_token(now - job.submitted_at)
        if self._model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        delta = slot.text.push(self._model.piece(token))
        if delta:
            job.emit(TextDelta(delta))
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= sampling.max_tokens:
            self._finish(slot, "length")
        else:
            slot.tokens.append(token)

    def _finish(self, slot: Slot, reason: str) -> None:
        tail = slot.text.finish()
        if tail:
            slot.job.emit(TextDelta(tail))
        slot.job.emit(Finished(finish_reason=reason, prompt_tokens=slot.n_prompt, completion_tokens=slot.generated))
        decode_s = time.monotonic() - slot.first_token_at if slot.first_token_at is not None else None
        self.metrics.record_finished(slot.n_prompt, slot.generated, decode_s)
        self._release(slot)

    def _fail(self, slots: list[Slot], error: BaseException) -> None:
        if slots:
            log.error("failing %d generations: %s", len(slots), error)
        for slot in slots:
            slot.job.emit(error)
            self._evict(slot)
            self._release(slot)

    def _shut_down(self) -> None:
        error = EngineClosedError("the engine shut down before the generation finished")
        self._fail([s for s in self._slots if s.active], error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._in_flight -= len(waiting)
        for job in waiting:
            job.emit(error)
