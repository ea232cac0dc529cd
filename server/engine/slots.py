"""Slots: one KV sequence each, and the bookkeeping of which tokens sit in it.

A slot's `tokens` are everything its sequence must hold (the prompt, then each sampled token once it is to be decoded);
the first `n_past` of them are already in the KV cache. Prefill and decode are the same thing: feed
`tokens[n_past:]`. An idle slot keeps its tokens so the next request can reuse the common prefix.

A request for n choices holds n slots: a leader that reads the prompt, and followers that hold nothing until the
leader's prefill is done, when they get a copy of its KV and sample from the same logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from server.engine.base import TokenLogprob
from server.engine.handoff import Job
from server.engine.sampler import Sampler
from server.engine.text import TextAssembler
from server.engine.thinking import ThinkingTracker


@dataclass(eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)
    n_past: int = 0
    job: Job | None = None
    sampler: Sampler | None = None
    text: TextAssembler | None = None
    n_prompt: int = 0
    generated: int = 0
    # Admission order: prefill goes to the oldest request first.
    admitted: int = 0
    first_token_at: float | None = None
    last_used: float = 0.0
    # Log-probabilities of sampled tokens whose text is not emitted yet (held back by UTF-8 or a possible stop).
    logprobs: list[TokenLogprob] = field(default_factory=list)
    choice: int = 0  # which of the job's n choices this slot generates
    followers: list[Slot] = field(default_factory=list)  # slots waiting for this one's prefill (n > 1)
    thinking: ThinkingTracker | None = None  # where a generation with a thinking budget is in its thinking
    scope: str = ""  # the cache scope of the job whose tokens the slot holds: only that scope may reuse them

    @property
    def active(self) -> bool:
        return self.job is not None

    def running(self) -> tuple[Job, Sampler, TextAssembler]:
        """The job of an active slot and what generates it; a slot's bookkeeping is only read while it runs."""
        if self.job is None or self.sampler is None or self.text is None:
            raise RuntimeError(f"slot {self.seq_id} runs no job")
        return self.job, self.sampler, self.text

    @property
    def pending(self) -> int:
        """Tokens still to feed before this slot's next logits."""
        return len(self.tokens) - self.n_past

    def start(self, job: Job, sampler: Sampler, reused: int, admitted: int) -> None:
        """Take a job whose prompt shares its first `reused` tokens with what this slot's sequence holds."""
        self._take(job, sampler, admitted, choice=0)
        self.tokens = list(job.request.prompt_tokens)
        self.n_past = reused

    def follow(self, job: Job, sampler: Sampler, admitted: int, choice: int) -> None:
        """Take choice `choice` of a job: nothing to feed until `fork` hands over the leader's prefilled prompt."""
        self._take(job, sampler, admitted, choice)
        self.tokens = []
        self.n_past = 0

    def fork(self) -> list[Slot]:
        """The followers still generating for this slot's job, now holding the whole prompt in their KV."""
        forked = [f for f in self.followers if f.job is self.job]
        self.followers = []
        for follower in forked:
            follower.tokens = self.tokens[: self.n_past]
            follower.n_past = self.n_past
        return forked

    def _take(self, job: Job, sampler: Sampler, admitted: int, choice: int) -> None:
        self.job = job
        self.sampler = sampler
        self.text = TextAssembler(job.request.sampling.stop)
        self.n_prompt = len(job.request.prompt_tokens)
        self.generated = 0
        self.admitted = admitted
        self.first_token_at = None
        self.logprobs.clear()
        self.choice = choice
        self.followers = []
        self.scope = job.request.cache_scope
        budget = job.request.thinking
        self.thinking = ThinkingTracker(budget) if budget is not None else None

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken = tuple(self.logprobs)
        self.logprobs.clear()
        return taken

    def release(self) -> None:
        """Back to idle; the KV of tokens[:n_past] stays for prefix reuse."""
        if self.sampler is not None:
            self.sampler.close()
        del self.tokens[self.n_past :]
        self.followers = []
        self.job = self.sampler = self.text = None
        self.last_used = time.monotonic()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share. Admission compares every prompt with every cached sequence, and
    those often share a long system prompt: slices compare in C, halving the range where they first differ."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    same, differs = 0, n  # a[:same] == b[:same]; the first difference is before `differs`
    while differs - same > 1:
        middle = (same + differs) // 2
        if a[same:middle] == b[same:middle]:
            same = middle
        else:
            differs = middle
    return same


# How long a new generation is expected to keep the batch as wide as its slot makes it, in steps; a generation asking
# for fewer tokens counts its max_tokens.
EXPECTED_ANSWER_TOKENS = 256


def gaps_added(active: Sequence[int], seq_id: int) -> int:
    """How many idle sequences taking `seq_id` puts inside the range of active sequence ids (-1: it fills one).

    Each slot has its own KV stream, and llama.cpp splits such a batch into micro-batches of sequences with
    consecutive ids, each token count equal, each a forward pass of its own (`split_equal`): an idle sequence between
    active ones splits the step (measured on 2 cores: 4 streams with ids 0, 2, 5 and 7 took 35-39 ms a step, ids 0-3
    or 2-5 24-27 ms, all 8 33-39 ms).
    """

    def gaps(ids: Sequence[int]) -> int:
        return max(ids) - min(ids) + 1 - len(ids) if ids else 0

    return gaps([*active, seq_id]) - gaps(active)


class Prompt(NamedTuple):
    """A waiting request's prompt, and whose cached prefixes it may reuse (`GenerationRequest.cache_scope`)."""

    tokens: Sequence[int]
    scope: str = ""


@dataclass(frozen=True)
class Placement:
    """Where a new prompt goes: `slot`, whose sequence already holds the prompt's first `reused` tokens, after the
    sequence of `source` (another free slot) is copied into it when one is given."""

    slot: Slot
    reused: int
    source: Slot | None = None


def place(
    free: Sequence[Slot],
    prompt: Sequence[int],
    active: Sequence[int],
    max_tokens: int,
    copy_cost: float,
    waiting: int = 0,
    reserved: Collection[int] = (),
    scope: str = "",
) -> Placement:
    """The free slot for a new prompt, and what of it the slot's sequence already holds.

    A slot that keeps the active sequences packed (no idle one between them), and among those the longest cached
    prefix of `prompt`. When a longer prefix is cached in a slot that would leave a gap, the cheapest of: computing
    the difference again, the gaps (one gap costs about one prompt token per step of the answer), or copying that
    slot's sequence into the packed one (`copy_cost`, in prompt tokens: llama.cpp copies a whole KV stream). Up to
    `waiting` gaps cost nothing: requests already waiting fill gaps first. The `reserved` slots (see `reserve`) are
    taken only when nothing else is free. On a tie the slot whose cache is least its own goes first (a copy leaves two
    slots holding the same prompt: one of them is overwritten before a cache held nowhere else), then the least
    recently used, so recent caches survive longer. At least the prompt's last token is always recomputed: its logits
    are what the first sample needs. Only a slot whose cache is of the prompt's `scope` holds anything of it.
    """
    reuse = {slot.seq_id: _reusable(slot, prompt, scope) for slot in free}
    targets = [s for s in free if s.seq_id not in reserved] or list(free)
    gaps = {slot.seq_id: gaps_added(active, slot.seq_id) for slot in free}
    fewest = min(gaps[s.seq_id] for s in targets)
    own = {slot.seq_id: cached_alone(slot, free) for slot in targets if gaps[slot.seq_id] == fewest}
    packed = min((s for s in targets if s.seq_id in own), key=lambda s: (-reuse[s.seq_id], own[s.seq_id], s.last_used))
    cached = min(free, key=lambda s: (-reuse[s.seq_id], gaps[s.seq_id], s.last_used))
    saved = reuse[cached.seq_id] - reuse[packed.seq_id]
    widened = max(0, gaps[cached.seq_id] - gaps[packed.seq_id] - waiting)
    # A slot kept for another request can be copied from, not taken.
    gap_cost = widened * min(max_tokens, EXPECTED_ANSWER_TOKENS) if cached in targets else math.inf
    if saved <= 0 or saved <= min(gap_cost, copy_cost):
        return Placement(packed, reuse[packed.seq_id])
    if gap_cost <= copy_cost:
        return Placement(cached, reuse[cached.seq_id])
    return Placement(packed, reuse[cached.seq_id], source=cached)


def reserve(free: Sequence[Slot], upcoming: Sequence[Prompt]) -> set[int]:
    """The free slots that requests already waiting (their prompts, oldest first) will want: each one's longest
    cached prefix, when no other free slot holds as much of it (a prefix every slot shares reserves nothing)."""
    reserved: set[int] = set()
    for prompt, scope in upcoming:
        ranked = sorted(
            ((_reusable(s, prompt, scope), s.seq_id) for s in free if s.seq_id not in reserved), reverse=True
        )
        if ranked and ranked[0][0] > (ranked[1][0] if len(ranked) > 1 else 0):
            reserved.add(ranked[0][1])
    return reserved


def _reusable(slot: Slot, prompt: Sequence[int], scope: str) -> int:
    """How much of `prompt` the slot's sequence holds for `scope`, short of the last token (whose logits must be
    computed)."""
    if slot.scope != scope:
        return 0
    return min(common_prefix(slot.tokens[: slot.n_past], prompt), len(prompt) - 1)


def cached_alone(slot: Slot, others: Sequence[Slot]) -> int:
    """How many of the tokens `slot` caches no other of `others` caches too for the same scope (as a prefix in
    common): a cache held in another scope serves none of this one's requests."""
    held = slot.tokens[: slot.n_past]
    same = (o for o in others if o is not slot and o.scope == slot.scope)
    shared = max((common_prefix(held, o.tokens[: o.n_past]) for o in same), default=0)
    return len(held) - shared


def pick_packed(free: Sequence[Slot], active: Sequence[int]) -> Slot:
    """The free slot that keeps the active sequences most tightly packed; the least recently used on a tie."""
    return min(free, key=lambda s: (gaps_added(active, s.seq_id), s.last_used))
