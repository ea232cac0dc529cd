"""The queue in front of the slots: the one state the event loop and the engine thread share, under one lock.

The event loop submits jobs (refused at once when the queue is full or the engine is closing), cancels them, and hands
the engine thread calls to run between steps. The engine thread waits here for work and takes jobs first come, first
served: a request for n choices waits for n free slots, and nothing overtakes it.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.engine.base import EngineClosedError, EngineOverloadedError
from server.engine.handoff import Job
from server.engine.slots import Prompt
from server.engine.stats import EngineMetrics

# How an idle engine gathers a burst of requests into its first step (measured: 8 requests sent at once reach the
# engine within 1-4 ms on 2 cores; a lone request pays the quiet interval once).
BURST_QUIET_S = 0.0015
BURST_MAX_S = 0.008

Call = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Taken:
    """A job leaving the queue for slots, and what is known of the requests still waiting behind it."""

    job: Job
    waiting: int  # how many requests still wait
    upcoming: list[Prompt]  # the prompts of the next few of them, oldest first


class Admission:
    def __init__(
        self,
        n_slots: int,
        max_queue: int,
        metrics: EngineMetrics,
        burst: tuple[float, float] = (BURST_QUIET_S, BURST_MAX_S),
    ) -> None:
        self._n_slots = n_slots
        self._max_queue = max_queue
        self._metrics = metrics
        self._burst_quiet_s, self._burst_max_s = burst
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._in_flight = 0  # choices admitted or waiting, not yet released
        self._busy = 0  # slots holding a job
        self._closing = False
        self._calls: list[Call] = []  # work the event loop hands to the engine thread (see probe.py)

    # ---- the event loop's side ----

    def submit(self, job: Job) -> None:
        n = job.request.n
        with self._cond:
            if self._closing:
                raise EngineClosedError("the engine is shutting down")
            if self._in_flight + n > self._n_slots + self._max_queue:
                self._metrics.record_rejected()
                raise EngineOverloadedError(
                    f"all {self._n_slots} slots are busy and {len(self._waiting)} requests are waiting",
                    retry_after_s=self._retry_after_s(),
                )
            self._in_flight += n
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        # The client is gone, so its request stops counting against the queue bound now; its slots follow at the next
        # step. The overshoot is at most one cancelled generation per slot, so memory stays bounded.
        with self._cond:
            self._uncount(job)
            self._cond.notify()

    def call_soon(self, call: Call) -> None:
        """Run `call` on the engine thread, in its next round that starts from now: after that round has admitted
        waiting requests and released cancelled ones, before it decodes."""
        with self._cond:
            self._calls.append(call)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def load(self) -> tuple[int, int]:
        """Busy slots and waiting requests."""
        with self._cond:
            return self._busy, len(self._waiting)

    # ---- the engine thread's side ----

    def wait_for_work(self) -> list[Call] | None:
        """Block until there is something to do, and return the calls handed over meanwhile; None once closing."""
        with self._cond:
            while True:
                if self._closing:
                    return None
                calls, self._calls = self._calls, []
                if calls or self._busy:
                    return calls
                if self._head_fits():
                    self._gather_burst()
                    return []
                self._cond.wait()

    def drop_cancelled(self) -> list[Job]:
        """The waiting jobs whose clients left, no longer waiting."""
        with self._cond:
            dropped = [job for job in self._waiting if job.cancelled]
            if dropped:
                self._waiting = collections.deque(job for job in self._waiting if not job.cancelled)
        return dropped

    def take(self, lookahead: int) -> Taken | None:
        """The oldest waiting job if the slots it needs are free, now holding them; `lookahead`: how many of the
        prompts waiting behind it to report."""
        with self._cond:
            if not self._head_fits():
                return None
            job = self._waiting.popleft()
            self._busy += job.request.n
            behind = itertools.islice(self._waiting, lookahead)
            upcoming = [Prompt(j.request.prompt_tokens, j.request.cache_scope) for j in behind]
            return Taken(job, len(self._waiting), upcoming)

    def release(self, job: Job, *, last: bool) -> None:
        """One slot of `job` is free again; `last`: the job holds no other."""
        with self._cond:
            self._busy -= 1
            if last:
                self._uncount(job)

    def drain(self) -> list[Job]:
        """Every waiting job, gone from the queue (the engine is shutting down)."""
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
            for job in waiting:
                self._uncount(job)
        return waiting

    # ---- under the lock ----

    def _head_fits(self) -> bool:
        return bool(self._waiting) and self._n_slots - self._busy >= self._waiting[0].request.n

    def _gather_burst(self) -> None:
        """An idle engine woken by a request waits, holding the lock, while more keep coming (each within the quiet
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

    def _uncount(self, job: Job) -> None:
        if job.counted:
            job.counted = False
            self._in_flight -= job.request.n

    def _retry_after_s(self) -> int:
        queued_rounds = 1 + len(self._waiting) / self._n_slots
        return max(1, math.ceil(queued_rounds * self._metrics.mean_request_s()))
