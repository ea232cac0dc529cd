"""The engine thread's decode loop: every step feeds all active sequences to one `llama_decode` call.

Each round it (1) admits waiting requests into free slots, keeping the active sequences packed together and reusing
cached prompt prefixes (see `slots.place`), (2) drops cancelled generations, (3) runs the calls the event loop handed
over (see `probe.py`), (4) builds one batch holding the next token of every generating slot plus prefill chunks of
slots still reading their prompt, within n_batch tokens, and decodes it, sampling every slot whose logits came out.

A request for n choices takes n slots at once: one reads the prompt, and when its prefill is done the others get a
copy of its KV (`llama_memory_seq_cp`) and sample from the same logits, so the prompt is computed once. Its grammar,
compiled before it was queued, goes to the first choice's sampler; every other choice samples under a clone.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace

import llama_cpp

from server.engine.admission import Admission
from server.engine.base import (
    ChoiceFinished,
    EngineClosedError,
    Finished,
    FinishReason,
    GrammarDeadEndError,
    SamplingParams,
    TextDelta,
)
from server.engine.grammars import Grammars
from server.engine.handoff import Job, Outbox
from server.engine.llama_model import LlamaModel
from server.engine.sampler import NoAllowedTokenError, Sampler
from server.engine.sizing import kv_copy_cost
from server.engine.slots import Placement, Slot, pick_packed, place, reserve
from server.engine.stats import EngineMetrics

log = logging.getLogger(__name__)

# How many tokens of one prompt a step may prefill beside running decodes: small enough that a long prompt delays each
# running stream's next token by tens of milliseconds on a CPU, large enough that prefill stays efficient.
DEFAULT_PREFILL_CHUNK = 256


DEAD_END = "the grammar allows no continuation: no token of this model's vocabulary can come next"


class DecodeError(RuntimeError):
    pass


class Scheduler:
    """Owns the slots and the batch; runs on the engine thread only (`run`), apart from what `probe.py` reads."""

    def __init__(
        self,
        model: LlamaModel,
        ctx: llama_cpp.llama_context_p,
        *,
        n_slots: int,
        n_batch: int,
        prefill_chunk: int,
        reuse_prefix: bool,
        admission: Admission,
        grammars: Grammars,
        metrics: EngineMetrics,
    ) -> None:
        self._model = model
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = llama_cpp.llama_n_ctx_seq(ctx)
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self._n_batch = n_batch
        self._prefill_chunk = max(1, min(prefill_chunk, n_batch))
        self._reuse_prefix = reuse_prefix
        self._copy_cost = kv_copy_cost(model, self.n_ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._admission = admission
        self._grammars = grammars
        self._metrics = metrics
        self._outbox = Outbox()
        self._admitted = itertools.count()

    def run(self) -> None:
        try:
            while (calls := self._admission.wait_for_work()) is not None:
                self._admit()
                self._release_cancelled()
                for call in calls:
                    call()
                if any(s.active for s in self.slots):
                    self._step()
                self._outbox.flush()
        finally:
            self._shut_down()
            self._outbox.flush()
            llama_cpp.llama_batch_free(self._batch)

    def evict(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, 0, -1)
        slot.n_past = 0
        if not slot.active:
            slot.tokens.clear()

    # ---- admission into slots ----

    def _admit(self) -> None:
        for job in self._admission.drop_cancelled():
            self._discard_grammar(job)
        while True:
            free, active = self._free_and_active()
            taken = self._admission.take(lookahead=len(free) - 1)
            if taken is None:
                return
            job = taken.job
            sampling = job.request.sampling
            if self._reuse_prefix:
                prompt, kept = job.request.prompt_tokens, reserve(free, taken.upcoming)
                placement = place(free, prompt, active, sampling.max_tokens, self._copy_cost, taken.waiting, kept,
                                  scope=job.request.cache_scope)  # fmt: skip
            else:
                placement = Placement(pick_packed(free, active), 0)
            slot, reused = placement.slot, placement.reused
            if placement.source is not None:
                # Done at the next decode, before it writes: the source may take a new prompt in this same step.
                llama_cpp.llama_memory_seq_cp(self.mem, placement.source.seq_id, slot.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, reused, -1)
            self._metrics.record_reused(reused)
            admitted = next(self._admitted)
            grammar, job.grammar = job.grammar, None
            # Clones first: each is a copy of the grammar's start, before the first choice samples under it.
            clones = [self._grammars.clone(grammar) for _ in range(job.request.n - 1)] if grammar is not None else []
            slot.start(job, self._sampler(sampling, grammar), reused, admitted)
            # Followers' cached prefixes are overwritten by the leader's prompt: only packing counts.
            for choice in range(1, job.request.n):
                follower = pick_packed(*self._free_and_active())
                self.evict(follower)
                seed = sampling.seed + choice if sampling.seed is not None else None
                sampler = self._sampler(replace(sampling, seed=seed), clones.pop() if clones else None)
                follower.follow(job, sampler, admitted, choice)
                slot.followers.append(follower)
            job.choices_running = job.request.n

    def _sampler(self, sampling: SamplingParams, grammar: llama_cpp.llama_sampler_p | None) -> Sampler:
        return Sampler(self._model, sampling, grammar, self._grammars.free)

    def _discard_grammar(self, job: Job) -> None:
        """Free the grammar of a job that never reached a slot."""
        if job.grammar is not None:
            grammar, job.grammar = job.grammar, None
            self._grammars.free(grammar)

    def _free_and_active(self) -> tuple[list[Slot], list[int]]:
        """The idle slots, and the sequence ids of the busy ones."""
        return [s for s in self.slots if not s.active], [s.seq_id for s in self.slots if s.active]

    def _release_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot)

    def _release(self, slot: Slot) -> None:
        if not self._reuse_prefix:
            self.evict(slot)
        job, _, _ = slot.running()
        slot.release()  # frees the slot's sampler, and with it its grammar
        job.choices_running -= 1
        self._admission.release(job, last=job.choices_running == 0)

    # ---- one step ----

    def _plan(self) -> list[tuple[Slot, int]]:
        """Which slots feed how many tokens this step: every decode, then prefill chunks, oldest request first."""
        active = sorted((s for s in self.slots if s.active), key=lambda s: s.admitted)
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
        rc = llama_cpp.llama_decode(self.ctx, batch)
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
                if choice.active:  # not when another choice of its job failed earlier in this step
                    self._sample(choice, index, now)
                    sampled += 1
        self._metrics.record_step(sampled)

    def _fork(self, leader: Slot) -> list[Slot]:
        """Hand a leader's freshly prefilled prompt to its followers; llama.cpp copies the KV at the next decode."""
        followers = leader.fork()
        for follower in followers:
            llama_cpp.llama_memory_seq_cp(self.mem, leader.seq_id, follower.seq_id, -1, -1)
            self._metrics.record_reused(follower.n_past)
        return followers

    def _sample(self, slot: Slot, index: int, now: float) -> None:
        job, sampler, text = slot.running()
        sampling = job.request.sampling
        forced = slot.thinking.forced() if slot.thinking is not None else None
        if forced is not None and sampler.allows(forced):
            sampler.accept(forced)
            token = forced
        else:
            if forced is not None and slot.thinking is not None:
                slot.thinking.stop_forcing()
            try:
                token = sampler.sample(self.ctx, index)
            except NoAllowedTokenError:
                param = job.request.grammar.param if job.request.grammar is not None else None
                self._fail([slot], GrammarDeadEndError(DEAD_END, param=param))
                return
        if slot.first_token_at is None:
            slot.first_token_at = now
            if slot.choice == 0:
                self._metrics.record_first_token(now - job.submitted_at)
        if self._model.is_end_of_generation(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        job.completion_tokens += 1
        if sampling.logprobs is not None:
            slot.logprobs.append(self._model.logprob(sampler.biased(self.ctx, index), token, sampling))
        piece = self._model.piece(token)
        if slot.thinking is not None:
            slot.thinking.push(piece.decode(errors="replace"))
        delta = text.push(piece)
        if delta:
            self._outbox.put(job, TextDelta(delta, slot.take_logprobs(), slot.choice))
        if text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= sampling.max_tokens:
            self._finish(slot, "length")
        else:
            slot.tokens.append(token)

    def _finish(self, slot: Slot, reason: FinishReason) -> None:
        job, _, text = slot.running()
        tail = text.finish()
        # Tokens of a stop string are not part of the answer, and neither are their log-probabilities.
        logprobs = () if text.stopped else slot.take_logprobs()
        choice, n_prompt, generated = slot.choice, slot.n_prompt, slot.generated
        stop_sequence = text.stop_sequence if reason == "stop" else None
        if choice == 0:
            job.first_finish_reason, job.first_stop_sequence = reason, stop_sequence
        decode_s = time.monotonic() - slot.first_token_at if slot.first_token_at is not None else None
        self._metrics.record_finished(n_prompt, generated, decode_s)
        # Release first, so a consumer that sees Finished also sees the slot free.
        self._release(slot)
        if tail:
            self._outbox.put(job, TextDelta(tail, logprobs, choice))
        if job.request.n > 1:
            self._outbox.put(job, ChoiceFinished(choice, reason, generated, stop_sequence))
        if job.choices_running == 0:
            finished = Finished(job.first_finish_reason, n_prompt, job.completion_tokens, job.first_stop_sequence)
            self._outbox.put(job, finished)

    def _fail(self, slots: list[Slot], error: BaseException) -> None:
        jobs = list(dict.fromkeys(slot.job for slot in slots if slot.job is not None))
        if jobs:
            log.error("failing %d generations: %s", len(jobs), error)
        # Every slot of a failed job goes, followers still waiting for their leader included.
        for slot in self.slots:
            if slot.active and slot.job in jobs:
                self.evict(slot)
                self._release(slot)
        for job in jobs:
            self._outbox.put(job, error)

    def _shut_down(self) -> None:
        error = EngineClosedError("the engine shut down before the generation finished")
        self._fail([s for s in self.slots if s.active], error)
        for job in self._admission.drain():
            self._discard_grammar(job)
            self._outbox.put(job, error)
