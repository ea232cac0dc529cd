"""A request that runs no model (a stored Responses API response read, its input items listed, or deleted) passes
what applies to it of a generation's way: its key's request limit before any work (the pipeline's load gates, as for
a request whose model is not loaded yet: RPM, no tokens), and its audit row once it ends, refused or not. So does a
keyed request whose body failed validation (`server/api/gates.py`), with its 400."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.access.caller import Caller
from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.job import Endpoint, Errand, ErrandEndpoint
from server.serving.pipeline.stages import Pipeline
from server.serving.stages.record import failed_status


@asynccontextmanager
async def errand(ctx: ServingContext, endpoint: ErrandEndpoint) -> AsyncIterator[dict[str, str]]:
    """Admit the request against its key's RPM (a 429 otherwise), yield the limit's headers for the answer, and
    record it when the block ends, with the status its failure maps to (499: the client went away)."""
    async with counted(ctx.pipeline, ctx.caller, ctx.request_id, ctx.client_request_id, endpoint) as headers:
        yield headers


@asynccontextmanager
async def counted(
    pipeline: Pipeline,
    caller: Caller,
    request_id: str,
    client_request_id: str | None,
    endpoint: ErrandEndpoint | Endpoint,
    *,
    status: int = 200,
    arrived: float | None = None,
) -> AsyncIterator[dict[str, str]]:
    """`errand` for a request with no serving context: its audit row says `status` unless the block fails."""
    arrived = time.monotonic() if arrived is None else arrived
    try:
        yield await pipeline.before_load(caller, request_id)
    except BaseException as exc:
        status = failed_status(exc)
        raise
    finally:
        latency_ms = (time.monotonic() - arrived) * 1000
        pipeline.record(Errand(request_id, endpoint, caller, client_request_id, latency_ms, status))
