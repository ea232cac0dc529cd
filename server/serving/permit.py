"""The stage that refuses a key the model it asks for (403), after the model is known to exist (404 first)."""

from __future__ import annotations

from contextlib import aclosing

from server.serving.errors import APIError
from server.serving.job import ServingJob
from server.serving.stages import Events, Next


async def permit(job: ServingJob, call_next: Next) -> Events:
    allowed = job.caller.models
    if allowed is not None and job.model.model_id not in allowed:
        raise APIError(
            403,
            f"this API key may not use the model {job.model.model_id!r}",
            type="permission_error",
            param="model",
            code="model_not_allowed",
        )
    async with aclosing(call_next(job)) as events:
        async for event in events:
            yield event
