"""Continuous batching: every step feeds all active sequences to one `llama_decode` call.

One engine thread owns the llama context. Each step it (1) admits waiting requests into free slots, keeping the
active sequences packed together and reusing cached prompt prefixes (see `slots.place`), (2) drops cancelled
generations, (3) builds one batch holding the next token of every generating slot plus prefill chunks of slots still
reading their prompt, within n_batch tokens, (4) decodes it and samples every slot whose logits came out.

A request for n choices takes n slots at once: one reads the prompt, and when its prefill is done the others get a
copy of its KV (`llama_memory_seq_cp`) and sample from the same logits, so the prompt is computed once.

Every slot has its own KV stream of n_ctx cells (kv_unified off), for two reasons. Determinism: in a unified cache a
sequence's cells land at positions that depend on its neighbours, and attention then sums in a different order, so
greedy output changed with the batch (measured: 6 of 8 sequences diverged within 24 tokens); with one stream per
sequence the results are bit-identical alone and batched. Bounds: admission keeps prompt + max_tokens within n_ctx, so
a stream can never run out of room and no generation ever waits for another to free cells.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import llama_cpp

from server.engine.base import (
    ChoiceFinished,
    ContextOverflowError,
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    EngineStats,
    Finished,
    GenerationRequest,
    GenerationStream,
    TextDelta,
)
from server.engine.chat_template import TemplateMessage, TemplateTool, ToolSyntax
from server.engine.embeddings import Embedder, EmbeddingsUnsupportedError
from server.engine.handoff import Job, JobStream, Outbox
from server.engine.llama_model import LlamaModel
from server.engine.slots import Placement, Slot, pick_packed, place, reserve
from server.engine.stats import EngineMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# How many tokens of one prompt a step may prefill beside running decodes: small enough that a long prompt delays each
# running stream's next token by tens of milliseconds on a CPU, large enough that prefill stays efficient.
DEFAULT_PREFILL_CHUNK = 256


# How an idle engine gathers a burst of requests into its first step (measured: 8 requests sent at once reach the
# engine within 1-4 ms on 2 cores; a lone request pays the quiet interval once).
BURST_QUIET_S = 0.0015
BURST_MAX_S = 0.008

# KV memory the default slot count may use: every slot holds a full n_ctx of keys and values.
DEFAULT_KV_BUDGET_BYTES = 2 << 30
MAX_DEFAULT_SLOTS = 8


def default_slot_count(model: LlamaModel, n_ctx: int) -> int:
    """As many slots as fit DEFAULT_KV_BUDGET_BYTES of f16 KV cache, 1 to MAX_DEFAULT_SLOTS."""
    per_slot = n_ctx * model.kv_bytes_per_token
    return max(1, min(MAX_DEFAULT_SLOTS, DEFAULT_KV_BUDGET_BYTES // per_slot))


def kv_copy_cost(model: LlamaModel, n_ctx: int) -> float:
    """What copying one slot's KV stream (all n_ctx cells) costs, in prompt tokens computed again: memory copied
    against a token's share of the model's arithmetic. Measured on 2 CPU cores with SmolLM2-135M: a prompt token in a
    prefill 4 ms, a copy of 1024 cells (24 MB) 3 ms, of 4096 cells 10.7 ms; the ratio holds for larger models as both
    grow with their size."""
    return 4 * n_ctx * model.kv_bytes_per_token / model.info.n_params


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
        max_choices: int = 4,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        reuse_prefix: bool = True,
        embedding_pooling: str = "model",
        burst: tuple[float, float] = (BURST_QUIET_S, BURST_MAX_S),
    ) -> None:
        self._model = model
        self._embedding_pooling = embedding_pooling
        self._burst_quiet_s, self._burst_max_s = burst
        self._embedder: Embedder | None = None
        self._embeddings_refused: EmbeddingsUnsupportedError | None = None
        self._model_id = model_id
        n_slots = n_slots or default_slot_count(model, n_ctx)
        params = llama_cpp.llama_context_default_params()
        # Without kv_unified llama.cpp splits n_ctx evenly into n_seq_max streams: ask for n_ctx per slot.
        params.n_ctx = n_ctx * n_slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._n_threads = n_threads
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._n_ctx = llama_cpp.llama_n_ctx_seq(self._ctx)
        self._n_batch = params.n_batch
        self._prefill_chunk = max(1, min(prefill_chunk, self._n_batch))
        self._reuse_prefix = reuse_prefix
        self._copy_cost = kv_copy_cost(model, self._n_ctx)
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._outbox = Outbox()
        self._slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._max_queue = max_queue
        self._max_choices = max(1, min(max_choices, n_slots))
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

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._model.check_token_ids(tokens, param="tokens")
        return b"".join(self._model.piece(t) for t in tokens).decode(errors="replace")

    def token_piece(self, token: int) -> bytes:
        return self._model.piece(token)

    @property
    def tool_syntax(self) -> ToolSyntax | None:
        return self._model.tool_syntax

    def render_chat(self, messages: Sequence[TemplateMessage], tools: Sequence[TemplateTool] | None = None) -> str:
        return self._model.render_chat(messages, tools)

    def generate(self, request: GenerationRequest) -> GenerationStream:
        n_prompt = len(request.prompt_tokens)
        if n_prompt == 0:
            raise ContextOverflowError("the prompt is empty", param=request.prompt_param)
        if n_prompt >= self._n_ctx:
            raise ContextOverflowError(
                f"this model's context is {self._n_ctx} tokens, but the prompt has {n_prompt}",
                param=request.prompt_param,
                code="context_length_exceeded",
            )
        if request.n > self._max_choices:
            raise EngineError(
                f"n is {request.n}, but this server generates at most {self._max_choices} choices per request",
                param="n",
            )
        if n_prompt + request.sampling.max_tokens > self._n_ctx:
            raise ContextOverflowError(
                f"this model's context is {self._n_ctx} tokens; the prompt has {n_prompt} and max_tokens asks for "
                f"{request.sampling.max_tokens} more",
                param="max_tokens",
                code="context_length_exceeded",
            )
        # An id outside the vocabulary makes llama_decode fail for the whole batch, every other stream included.
        self._model.check_token_ids(request.prompt_tokens, param=request.prompt_param)
        self._model.check_token_ids(list(request.sampling.logit_bias), param="logit_bias")
        if request.sampling.grammar is not None:
            self._model.check_grammar(request.sampling.grammar, param="response_format")
        job = Job(request, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise EngineClosedError("the engine is shutting down")
            if self._in_flight + request.n > len(self._slots) + self._max_queue:
                self.metrics.record_rejected()
                raise EngineOverloadedError(
                    f"all {len(self._slots)} slots are busy and {len(self._waiting)} requests are waiting",
                    retry_after_s=self._retry_after_s(),
                )
            self._in_flight += request.n
            self._waiting.append(job)
            self._cond.notify()
        return JobStream(job, self._on_cancel)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        if self._embedder is None:
            if self._embeddings_refused is not None:
                raise self._embeddings_refused
            try:
                self._embedder = Embedder(
                    self._model, n_batch=self._n_batch, n_threads=self._n_threads, pooling=self._embedding_pooling
                )
            except EmbeddingsUnsupportedError as exc:
                self._embeddings_refused = exc  # the model won't change its mind: don't build a context per request
                raise
        return await self._embedder.embed(inputs)

    def stats(self) -> EngineStats:
        with self._cond:
            busy, waiting = self._busy, len(self._waiting)
        # n_past is written by the engine thread; a read one step stale is good enough for a gauge.
        cells = sum(slot.n_past for slot in self._slots)
        return self.metrics.snapshot(
            slots_busy=busy, queue_depth=waiting, kv_cells_used=cells, kv_cells_total=self._n_ctx * len(self._slots)
        )

    async def kv_positions(self) -> list[int]:
        """llama_memory_seq_pos_max of every slot's sequence (-1: empty), read while the engine thread is idle."""
        return await self._when_idle(
            lambda: [llama_cpp.llama_memory_seq_pos_max(self._mem, slot.seq_id) for slot in self._slots]
        )

    async def graphs_reused(self) -> int:
        """How many decode steps reused the previous step's compute graph instead of building one."""
        return await self._when_idle(lambda: llama_cpp.llama_perf_context(self._ctx).n_reused)

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
        if self._embedder is not None:
            await self._embedder.close()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._ctx = None

    def _retry_after_s(self) -> int:
        queued_rounds = 1 + len(self._waiting) / len(self._slots)
        return max(1, math.ceil(queued_rounds * self.metrics.mean_request_s()))

    def _on_cancel(self, job: Job) -> None:
        # The client is gone, so its request stops counting against the queue bound now; its slot follows at the next
        # step. The overshoot is at most one cancelled generation per slot, so memory stays bounded.
        with self._cond:
            self._uncount(job)
            self._cond.notify()

    def _uncount(self, job: Job) -> None:
        """Caller holds _cond."""
        if job.counted:
            job.counted = False
            self._in_flight -= job.request.n

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
                self._outbox.flush()
        finally:
            self._shut_down()
            self._outbox.flush()

    def _wait_for_work(self) -> bool:
        """Block until there is something to do; False once the engine is closing."""
        with self._cond:
            while True:
                if self._closing:
                    return False
                calls, self._calls = self._calls, []
                if calls:
                    break
                if self._busy:
                    return True
                if self._head_fits():
                    self._gather_burst()
                    return True
                self._cond.wait()
        for call in calls:
            call()
        return True

    def _gather_burst(self) -> None:
        """An idle engine woken by a request waits, holding `_cond`, while more keep coming (each within the quiet
        interval of the last, up to the maximum in all: `burst`): the event loop hands a burst over one request at a
        time, and one that arrives just after a step began waits for that whole step before its first token."""
        deadline = time.monotonic() + self._burst_max_s
        while not self._closing and not self._calls:
            seen = len(self._waiting)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(min(self._burst_quiet_s, left))
            if len(self._waiting) == seen:
                return

    def _head_fits(self) -> bool:
        """Whether the oldest waiting request has the slots it needs free (first come, first served: a request
        for n choices waits for n free slots, and nothing overtakes it)."""
        return bool(self._waiting) and len(self._slots) - self._busy >= self._waiting[0].request.n

    def _admit(self) -> None:
        while True:
            with self._cond:
                if any(job.cancelled for job in self._waiting):
                    self._waiting = collections.deque(job for job in self._waiting if not job.cancelled)
                if not self._head_fits():
                    return
                job = self._waiting.popleft()
                self._busy += job.request.n
                waiting = len(self._waiting)
                free, active = self._free_and_active()
                upcoming = [j.request.prompt_tokens for j in itertools.islice(self._waiting, len(free) - 1)]
            sampling = job.request.sampling
            if self._reuse_prefix:
                prompt, kept = job.request.prompt_tokens, reserve(free, upcoming)
                placement = place(free, prompt, active, sampling.max_tokens, self._copy_cost, waiting, kept)
            else:
                placement = Placement(pick_packed(free, active), 0)
            slot, reused = placement.slot, placement.reused
            if placement.source is not None:
                # Done at the next decode, before it writes: the source may take a new prompt in this same step.
                llama_cpp.llama_memory_seq_cp(self._mem, placement.source.seq_id, slot.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, reused, -1)
            self.metrics.record_reused(reused)
            admitted = next(self._admitted)
            slot.start(job, self._model.new_sampler(sampling), reused, admitted)
            # Followers' cached prefixes are overwritten by the leader's prompt: only packing counts.
            for choice in range(1, job.request.n):
                follower = pick_packed(*self._free_and_active())
                self._evict(follower)
                seed = sampling.seed + choice if sampling.seed is not None else None
                follower.follow(job, self._model.new_sampler(replace(sampling, seed=seed)), admitted, choice)
                slot.followers.append(follower)
            job.choices_running = job.request.n

    def _free_and_active(self) -> tuple[list[Slot], list[int]]:
        """The idle slots, and the sequence ids of the busy ones."""
        return [s for s in self._slots if not s.active], [s.seq_id for s in self._slots if s.active]

    def _release_cancelled(self) -> None:
        for slot in self._slots:
            if slot.active and slot.job.cancelled:
                self._release(slot)

    def _release(self, slot: Slot) -> None:
        if not self._reuse_prefix:
            self._evict(slot)
        job = slot.job
        slot.release()
        job.choices_running -= 1
        with self._cond:
            self._busy -= 1
            if job.choices_running == 0:
                self._uncount(job)

    def _evict(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, 0, -1)
        slot.n_past = 0
        if not slot.active:
            slot.tokens.clear()

    def _plan(self) -> list[tuple[Slot, int]]:
        """Which slots feed how many tokens this step: every decode, then prefill chunks, oldest request first."""
        active = sorted((s for s in self._slots if s.active), key=lambda s: s.admitted)
        plan = [(s, 1) for s in active if s.pending == 1]
        budget = self._n_batch - len(plan)
        for slot in active:
            if slot.pending > 1 and budget > 0:
                n = min(slot.pending, self._prefill_chunk, budget)
                plan.append((slot, n))
                budget -= n
        # The batch lists sequences in seq id order: llama.cpp reuses the previous step's compute graph only then
        # (measured: with any other order it rebuilt the graph every step, and 8 streams lost a fifth of their speed).
        return sorted(plan, key=lambda entry: entry[0].seq_id)

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
        if rc == 1:
            # No KV room: cannot happen while admission keeps prompt + max_tokens within each sequence's own n_ctx
            # cells, but if it does, only this step's generations fail and the engine goes on.
            self._fail([s for s, _ in plan], DecodeError("llama_decode found no room in the KV cache"))
            return
        if rc != 0:
            self._fail([s for s, _ in plan], DecodeError(f"llama_decode failed with code {rc}"))
            return
        for slot, n in plan:
            slot.n_past += n
        now = time.monotonic()
        sampled = 0
        for slot, index in logits_at:
            for choice in [slot, *self._fork(slot)]:
                self._sample(choice, index, now)
                sampled += 1
        self.metrics.record_step(sampled)

    def _fork(self, leader: Slot) -> list[Slot]:
        """Hand a leader's freshly prefilled prompt to its followers; llama.cpp copies the KV at the next decode."""
        followers = leader.fork()
        for follower in followers:
            llama_cpp.llama_memory_seq_cp(self._mem, leader.seq_id, follower.seq_id, -1, -1)
            self.metrics.record_reused(follower.n_past)
        return followers

    def _sample(self, slot: Slot, index: int, now: float) -> None:
        job, sampling = slot.job, slot.job.request.sampling
        token = slot.sampler.sample(self._ctx, index)
        if slot.first_token_at is None:
            slot.first_token_at = now
            if slot.choice == 0:
                self.metrics.record_first_token(now - job.submitted_at)
        if self._model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        job.completion_tokens += 1
        if sampling.logprobs is not None:
            slot.logprobs.append(self._model.logprob(self._ctx, index, token, sampling))
        delta = slot.text.push(self._model.piece(token))
        if delta:
            self._outbox.put(job, TextDelta(delta, slot.take_logprobs(), slot.choice))
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= sampling.max_tokens:
            self._finish(slot, "length")
        else:
            slot.tokens.append(token)

    def _finish(self, slot: Slot, reason: str) -> None:
        job, tail = slot.job, slot.text.finish()
        # Tokens of a stop string are not part of the answer, and neither are their log-probabilities.
        logprobs = () if slot.text.stopped else slot.take_logprobs()
        choice, n_prompt, generated = slot.choice, slot.n_prompt, slot.generated
        if choice == 0:
            job.first_finish_reason = reason
        decode_s = time.monotonic() - slot.first_token_at if slot.first_token_at is not None else None
        self.metrics.record_finished(n_prompt, generated, decode_s)
        # Release first, so a consumer that sees Finished also sees the slot free.
        self._release(slot)
        if tail:
            self._outbox.put(job, TextDelta(tail, logprobs, choice))
        if job.request.n > 1:
            self._outbox.put(job, ChoiceFinished(choice, reason, generated))
        if job.choices_running == 0:
            self._outbox.put(job, Finished(job.first_finish_reason, n_prompt, job.completion_tokens))

    def _fail(self, slots: list[Slot], error: BaseException) -> None:
        jobs = list(dict.fromkeys(slot.job for slot in slots))
        if jobs:
            log.error("failing %d generations: %s", len(jobs), error)
        # Every slot of a failed job goes, followers still waiting for their leader included.
        for slot in self._slots:
            if slot.active and slot.job in jobs:
                self._evict(slot)
                self._release(slot)
        for job in jobs:
            self._outbox.put(job, error)

    def _shut_down(self) -> None:
        error = EngineClosedError("the engine shut down before the generation finished")
        self._fail([s for s in self._slots if s.active], error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
            for job in waiting:
                self._uncount(job)
        for job in waiting:
            self._outbox.put(job, error)
