"""Which loaded models a load may evict, and those it closes to new requests while it waits (see `Budget.reserve`).

A load that must wait for generations to end before it can evict a model closes that model to new requests, else a
key keeping its model busy (each stream begun before the last ended) would keep every other model out of memory. The
requests that meet a closed model wait until the load evicted it (they then load it again, as for any model not
loaded) or reopened it, bounded as requests waiting for a load are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence

from server.lifecycle.catalogue import CatalogueModel
from server.lifecycle.failures import ModelQueueFullError, ModelUnavailableError
from server.lifecycle.holder import ModelState

log = logging.getLogger(__name__)


def may_evict(m: CatalogueModel) -> bool:
    """Loaded, not pinned, no generation in flight, no request waiting for it, not swapping."""
    return (
        not m.spec.pin
        and m.holder.current is not None
        and m.holder.readiness().state is ModelState.READY
        and m.holder.in_flight == 0
        and m.waiting == 0
    )


class Victims:
    def __init__(self, models: Sequence[CatalogueModel], clock: Callable[[], float]) -> None:
        self._models = models
        self._clock = clock
        self._closed_for: dict[CatalogueModel, tuple[CatalogueModel, ...]] = {}  # by the load that closed them
        # Set (and replaced) whenever what is closed changes, for the requests waiting on a closed model.
        self._changed = asyncio.Event()

    def evictable(self, exclude: CatalogueModel | None) -> list[CatalogueModel]:
        """Loaded models that may be evicted, least recently used first; not those another load closed, which are
        that load's to evict (else a request held by one it evicted first could reload it with the room)."""
        others = self.closed_for_others(exclude)
        return sorted(
            (m for m in self._models if m is not exclude and m not in others and may_evict(m)),
            key=lambda m: m.last_used,
        )

    def busy(self, exclude: CatalogueModel) -> list[CatalogueModel]:
        """Loaded models that are not pinned and run generations (or swap), least recently used first: what a load
        may close to new requests (not one reopened less time ago than it was closed: see `close`)."""
        now = self._clock()
        return sorted(
            (m for m in self._models if m is not exclude and not m.spec.pin and m.holder.current is not None
             and not may_evict(m) and now >= m.closable_at),
            key=lambda m: m.last_used,
        )  # fmt: skip

    def closed(self, m: CatalogueModel) -> bool:
        return m.holder.current is not None and any(m in closed for closed in self._closed_for.values())

    def closed_for_others(self, loading: CatalogueModel | None) -> set[CatalogueModel]:
        """The models loads other than `loading` closed: theirs to evict."""
        return {m for load, closed in self._closed_for.items() if load is not loading for m in closed}

    def close(self, loading: CatalogueModel, victims: Sequence[CatalogueModel]) -> None:
        """`loading`'s wait for memory closes `victims` to new requests (none: it reopens what it closed).

        A model reopened still loaded (the load gave up, or needs it no more) cannot be closed again for as long as
        it was closed (`closable_at`): else a key whose load cannot succeed in time (the model's generations outlast
        the wait) could ask again at once and keep another key's model closed, its requests held until they time
        out, at the cost of one request each wait."""
        if set(victims) == set(self._closed_for.get(loading, ())):
            return
        was_closed = self._all()
        if victims:
            self._closed_for[loading] = tuple(victims)
            log.info("closing %s to new requests until it can be unloaded for %s", ", ".join(v.id for v in victims),
                     loading.id)  # fmt: skip
        else:
            del self._closed_for[loading]
        now, is_closed = self._clock(), self._all()
        for m in is_closed - was_closed:
            m.closed_since = now
        for m in was_closed - is_closed:
            if m.holder.current is not None:
                m.closable_at = now + (now - m.closed_since)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_while_closed(self, m: CatalogueModel, deadline: float, max_waiting: int) -> None:
        """Wait while `m` is closed. Such a request is not one of `m.waiting`, which would keep it from being
        evicted; at most `max_waiting` wait so."""
        if not self.closed(m):
            return
        if m.held >= max_waiting:
            raise ModelQueueFullError(
                f"{max_waiting} requests already wait for the model {m.id!r}, which is being unloaded to make room "
                "for another",
                retry_after_s=1,
            )
        m.held += 1
        try:
            while self.closed(m):
                changed, remaining = self._changed, deadline - self._clock()
                if remaining <= 0:
                    raise ModelUnavailableError(
                        f"the model {m.id!r} is being unloaded to make room for another model once its generations "
                        "end; try again shortly",
                        param="model",
                        code="model_loading",
                        retry_after_s=max(1, math.ceil(m.load_seconds or 5)),
                    )
                # Looked at again each second too: a model can also stop being closed by leaving its holder (a swap
                # that lost it), which tells nobody here.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
        finally:
            m.held -= 1

    def _all(self) -> set[CatalogueModel]:
        return {m for closed in self._closed_for.values() for m in closed}
