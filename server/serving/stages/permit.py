"""The check that refuses a key the model it asks for (403), after the model is known to exist (404 first).

Admission runs `require_permitted` before it leases the model, so that a refused request never touches a model (a
lease would hold off its eviction); the stage keeps the pipeline itself closed to such a key whatever leads into it."""

from __future__ import annotations

from contextlib import aclosing

from server.access.caller import Caller
from server.errors import APIError
from server.serving.pipeline.job import ServingJob
from server.serving.pipeline.stages import Events, Next


def require_permitted(caller: Caller, model_id: str) -> None:
    """Raise 403 when the caller's key is limited to other models."""
    if not caller.may_use(model_id):
        raise APIError(
            403,
            f"this API key may not use the model {model_id!r}",
            type="permission_error",
            param="model",
            code="model_not_allowed",
        )


async def permit(job: ServingJob, call_next: Next) -> Events:
    require_permitted(job.caller, job.model.model_id)
    async with aclosing(call_next(job)) as events:
        async for event in events:
            yield event
