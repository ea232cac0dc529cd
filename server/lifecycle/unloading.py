"""Unloading one catalogue model: its engine and weights freed, its memory given back to the budget, and nothing
left that could use them.

The model leaves its holder before anything is awaited, so no request leases it from then on: a request that asks
for it meanwhile loads it again, once this unload has freed it (the registry's load waits for `m.unloading`).
Waiting is only what follows: the watcher winding down (a swap it is loading cannot be stopped halfway, so it
finishes and is freed), then the generations that held leases already. An engine is never closed under a lease it
handed out, unless an admin's drain ran out of time.
"""

from __future__ import annotations

import asyncio
import contextlib

from server.lifecycle.budget import Budget
from server.lifecycle.capacity import return_freed_memory
from server.lifecycle.catalogue import CatalogueModel
from server.telemetry import prometheus


async def unload(m: CatalogueModel, budget: Budget[CatalogueModel], reason: str, drain_s: float | None) -> None:
    """Take `m` out of service and free it. `drain_s`: how long generations in flight on it may go on (an admin's
    unload); None waits for them however long (an eviction picks only models with none, so that is no wait)."""
    watcher, m.watcher = m.watcher, None
    if watcher is not None:
        watcher.cancel()
    served = m.holder.unload(reason)
    if watcher is None and served is None:
        return
    retiring = budget.retire(m) if served is not None else 0
    freed = asyncio.get_running_loop().create_future()
    m.unloading = freed
    try:
        if watcher is not None:
            # A swap it was loading finishes and is freed first (watcher.load_or_free): no load is left running
            # behind the unload, and none of it reaches the holder any more.
            await asyncio.wait([watcher])
        if served is None:
            return
        released = m.holder.wait_released(served)
        if drain_s is None:
            await released
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released, drain_s)
        await served.close()
        await asyncio.to_thread(return_freed_memory)
    finally:
        if served is not None:
            budget.retired(retiring)
            prometheus.forget_model(m.id)
        freed.set_result(None)
        if m.unloading is freed:
            m.unloading = None
