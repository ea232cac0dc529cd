"""The cap on the requests one key may have in flight on this replica (`GGUFSTACK_MAX_CONCURRENT_PER_KEY`).

The engine's slots and the queue in front of them are shared by every key: without a cap one key's long generations,
sent together, take all of them, and every other key gets 429 `engine_overloaded` while they run. Neither RPM (a
handful of requests is enough) nor TPM (an answer's tokens are charged when it ends, so requests sent together all
pass) prevents it. A request past the cap gets 429 `too_many_concurrent_requests` before its body is parsed
(`before_body`), counts against RPM or anything is rendered. Counted per replica, in memory, like model loads; the
admin key and servers without keys are not capped (their caller has no key id). A request counts from this stage until
its events close: its answer sent, its client gone, or its stream given up (see the stream send timeout); and, for a
model that is not loaded, while it waits for the load (`waiting_for_load`, the pipeline's load wait).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from contextlib import aclosing

from server.access.caller import Caller
from server.errors import APIError
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next
from server.telemetry import prometheus


class ConcurrencyStage:
    def __init__(self, per_key: int) -> None:
        self._per_key = per_key
        self._running: Counter[str] = Counter()  # in the pipeline, from this stage on
        self._waiting: Counter[str] = Counter()  # waiting for their model to load, before the pipeline

    def running(self, key_id: str) -> int:
        return self._running[key_id] + self._waiting[key_id]

    def before_body(self, caller: Caller) -> None:
        """A request of a key at its cap is refused whatever its body holds: before the body is parsed (a body gate:
        see Pipeline), so a key at its cap cannot keep the event loop parsing bodies only to refuse them."""
        if caller.key_id is not None:
            self._refuse_past_cap(caller.key_id)

    @contextlib.contextmanager
    def waiting_for_load(self, caller: Caller) -> Iterator[None]:
        """A request of `caller`'s waiting for its model to load is in flight too: it holds a place in the model's
        wait queue (`GGUFSTACK_MAX_QUEUE`) that another key's request would need, so one key's waiters could fill it
        and keep every other key from the model while its load waits for memory."""
        key_id = caller.key_id
        if key_id is None:
            yield
            return
        self._refuse_past_cap(key_id)
        self._waiting[key_id] += 1
        try:
            yield
        finally:
            _take_one(self._waiting, key_id)

    async def __call__(self, job: ServingJob, call_next: Next) -> Events:
        key_id = job.caller.key_id
        if key_id is not None:
            self._refuse_past_cap(key_id)
            self._running[key_id] += 1
        try:
            async with aclosing(call_next(job)) as events:
                async for event in events:
                    yield event
        finally:
            if key_id is not None:
                _take_one(self._running, key_id)

    def _refuse_past_cap(self, key_id: str) -> None:
        if self.running(key_id) >= self._per_key:
            prometheus.rate_limited.labels("concurrency").inc()
            raise APIError(
                429,
                f"this API key already has {self._per_key} requests in flight on this server "
                "(GGUFSTACK_MAX_CONCURRENT_PER_KEY); retry when one has finished",
                type="rate_limit_error",
                code="too_many_concurrent_requests",
                headers={"Retry-After": "1"},
            )


def _take_one(counts: Counter[str], key_id: str) -> None:
    counts[key_id] -= 1
    if counts[key_id] <= 0:
        del counts[key_id]
