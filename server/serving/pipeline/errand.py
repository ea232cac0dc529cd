"""A request that runs no model (a stored Responses API response read, its input items listed, or deleted) passes
what applies to it of a generation's way: its key's request limit before any work (the pipeline's load gates, as for
a request whose model is not loaded yet: RPM, no tokens), and its audit row once it ends, refused or not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from server.serving.pipeline.admission import ServingContext
from server.serving.pipeline.job import Errand, ErrandEndpoint
from server.serving.stages.record import failed_status


@asynccontextmanager
async def errand(ctx: ServingContext, endpoint: ErrandEndpoint) -> AsyncIterator[dict[str, str]]:
    """Admit the request against its key's RPM (a 429 otherwise), yield the limit's headers for the answer, and
    record it when the block ends, with the status its failure maps to (499: the client went away)."""
    arrived = time.monotonic()
    status = 200
    try:
        yield await ctx.pipeline.before_load(ctx.caller, ctx.request_id)
    except BaseException as exc:
        status = failed_status(exc)
        raise
    finally:
        latency_ms = (time.monotonic() - arrived) * 1000
        ctx.pipeline.record(Errand(ctx.request_id, endpoint, ctx.caller, ctx.client_request_id, latency_ms, status))
