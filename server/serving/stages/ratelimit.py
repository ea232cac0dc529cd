"""The rate-limit stages, on both sides of `prepare`: `RequestLimitStage` admits the request against its key's RPM
(and refuses it when the key's TPM window is already spent) before anything is rendered or tokenized, so a key over
its limit costs the server no tokenizing; `TokenLimitStage` then checks and charges the prompt's tokens (counted by
the model's tokenizer) against TPM, puts OpenAI's x-ratelimit-* headers on the answer, and charges the completion at
the end. A cache hit is refunded its prompt tokens: it counts against RPM only. Tokenizer requests count against RPM
only: they run no model.

A generation that ends without its Finished event (the client went away, the server drained, the engine failed) is
charged the tokens it generated all the same: stopping to read one token before the end must not make an answer free.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from server.access.caller import Caller
from server.access.ratelimit import Decision, LimiterUnavailableError, Limits, RateLimiter
from server.access.standing_refusals import StandingRefusals
from server.engine.base import Finished
from server.errors import APIError
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next
from server.telemetry import prometheus


async def _passed_on(job: ServingJob, call_next: Next) -> Events:
    async with aclosing(call_next(job)) as events:
        async for event in events:
            yield event


def _refusal(decision: Decision) -> APIError:
    what = "requests per minute" if decision.limited_by == "requests" else "tokens per minute"
    return APIError(
        429,
        f"rate limit reached for this API key: {what}; retry in {decision.retry_after_s} s",
        type="requests" if decision.limited_by == "requests" else "tokens",
        code="rate_limit_exceeded",
        headers={**decision.headers, "Retry-After": str(decision.retry_after_s)},
    )


async def _admit(
    limiter: RateLimiter,
    key_id: str,
    request_id: str,
    limits: Limits,
    prompt: int,
    *,
    first: bool,
    standing: StandingRefusals | None = None,
) -> dict[str, str]:
    """Admit the request, or refuse it; a refusal `standing` is told of holds for any request of the key."""
    try:
        decision = await limiter.admit(key_id, limits, request_id, prompt, count_request=first)
    except LimiterUnavailableError as exc:
        raise APIError(503, str(exc), type="service_unavailable", code="rate_limiter_unavailable") from None
    if not decision.allowed:
        if standing is not None:
            standing.note(key_id, decision)
        raise _refusal(decision)
    return decision.headers


class RequestLimitStage:
    """Its admissions count no prompt (that is TokenLimitStage's), so its refusals hold for whatever the key asks
    next, until the window frees: they are remembered (`StandingRefusals`), and `before_body` refuses the key's
    requests before their bodies are parsed."""

    def __init__(self, limiter: RateLimiter, standing: StandingRefusals | None = None) -> None:
        self._limiter = limiter
        self._standing = standing or StandingRefusals()

    def before_body(self, caller: Caller) -> None:
        """Refuse a request of a key the limiter refused any request of until now (a body gate: see Pipeline)."""
        decision = self._standing.standing(caller.key_id) if caller.key_id is not None else None
        if decision is not None:
            prometheus.rate_limited.labels(decision.limited_by or "requests").inc()
            raise _refusal(decision)

    async def before_load(self, caller: Caller, request_id: str) -> dict[str, str]:
        """The request's RPM admission, before its model is loaded (a load gate: see Pipeline): a key over its limit
        must not load a model, which evicts what other keys use."""
        limits = Limits(caller.rpm, caller.tpm)
        if caller.key_id is None or not limits.any:
            return {}
        return await self._admit(caller.key_id, request_id, limits)

    async def __call__(self, job: ServingJob, call_next: Next) -> Events:
        limits = Limits(job.caller.rpm, job.caller.tpm)
        if job.caller.key_id is not None and limits.any and not job.request_counted:
            headers = await self._admit(job.caller.key_id, job.request_id, limits)
            job.response_headers.update(headers)
        async with aclosing(_passed_on(job, call_next)) as events:
            async for event in events:
                yield event

    async def _admit(self, key_id: str, request_id: str, limits: Limits) -> dict[str, str]:
        return await _admit(self._limiter, key_id, request_id, limits, 0, first=True, standing=self._standing)


class TokenLimitStage:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        # Charges of abandoned generations run as tasks of their own; held here so they are not collected midway.
        self._charging: set[asyncio.Task[None]] = set()

    async def __call__(self, job: ServingJob, call_next: Next) -> Events:
        key_id = job.caller.key_id
        limits = Limits(job.caller.rpm, job.caller.tpm)
        if key_id is None or not limits.tpm or not job.runs_model:
            async with aclosing(_passed_on(job, call_next)) as events:
                async for event in events:
                    yield event
            return
        prompt = job.prompt_tokens
        job.response_headers.update(await _admit(self._limiter, key_id, job.request_id, limits, prompt, first=False))
        settled = False
        try:
            async with aclosing(call_next(job)) as events:
                async for event in events:
                    if isinstance(event, Finished):
                        await self._settle(job, key_id, limits, prompt, event)
                        settled = True
                    yield event
        finally:
            if not settled and not job.cache_hit and job.generated_tokens > 0:
                # Not awaited here: a client that went away cancels this task, and the charge must outlive it.
                charge = self._limiter.charge(key_id, limits, job.request_id, job.generated_tokens)
                task = asyncio.get_running_loop().create_task(charge, name="charge-abandoned-generation")
                self._charging.add(task)
                task.add_done_callback(self._charging.discard)

    async def _settle(self, job: ServingJob, key_id: str, limits: Limits, prompt: int, finished: Finished) -> None:
        if job.cache_hit:
            await self._limiter.refund_prompt(key_id, limits, job.request_id, prompt)
        else:
            await self._limiter.charge(key_id, limits, job.request_id, finished.completion_tokens)
