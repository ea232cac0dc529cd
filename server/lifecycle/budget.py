"""The memory budget the loaded models share: what each is charged (weights and KV cache, from its GGUF's header),
reservations made before a load begins, and the eviction a load that does not fit asks for.

The default budget is what the capacity check reads at startup: the free VRAM when models offload layers to a GPU,
else the free RAM (the pod's cgroup limit included), less the headroom compute buffers and the allocator need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server.lifecycle.capacity import HEADROOM, free_ram_bytes, free_vram_bytes

log = logging.getLogger(__name__)
K = TypeVar("K")


class NoRoomError(Exception):
    """A model does not fit in the budget, and nothing could be evicted in time."""


class NotWantedError(Exception):
    """A load waiting for memory found that nothing waits for it any more: it gave up before evicting anything more."""


def mib(n_bytes: int) -> float:
    return n_bytes / 2**20


def default_budget_bytes(*, gpu: bool) -> int | None:
    """Free VRAM (with GPU offload) or RAM now, less headroom; None when it cannot be read (no budget then)."""
    free = free_vram_bytes() if gpu else None
    if free is None:
        free = free_ram_bytes()
    return None if free is None else int(free / HEADROOM)


@dataclass(eq=False)
class Budget(Generic[K]):
    """`total_bytes` None: unbounded (every load fits). `wait_s`: how long a load waits for generations on the other
    models to end when evicting idle ones is not enough."""

    total_bytes: int | None
    wait_s: float = 120.0
    clock: Callable[[], float] = time.monotonic
    _charges: dict[K, int] = field(default_factory=dict)
    _retiring: int = 0  # models unloaded whose memory is not freed yet (generations in flight finish first)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def used_bytes(self) -> int:
        return sum(self._charges.values()) + self._retiring

    def charged(self, key: K) -> int:
        return self._charges.get(key, 0)

    async def reserve(
        self,
        key: K,
        need: int,
        *,
        evictable: Callable[[K], Sequence[K]],
        evict: Callable[[K], Awaitable[None]],
        kept: Callable[[K], bool] = lambda _key: False,
        busy: Callable[[K], Sequence[K]] = lambda _key: (),
        close: Callable[[Sequence[K]], None] = lambda _keys: None,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        """Charge `need` bytes to `key`, evicting what `evictable` offers (in its order) until it fits, then waiting
        for a change (a generation that ends, a model unloaded) up to `wait_s`; raises NoRoomError. `kept`: the keys
        never evicted (pinned), whose charges no wait can free.

        It evicts only when evicting everything `evictable` offers now would make room: a model that cannot fit yet
        (the others run generations) waits without unloading what others use, and one that can never fit beside the
        kept ones fails at once, before evicting anything. While it waits, the models `busy` offers (running
        generations, in their order) whose eviction would make room once those end are `close`d to new work, and
        reopened (`close(())`) when the wait ends: else new requests on them keep them busy, and the load waits
        for ever while other keys' requests for its model time out. Once nothing is `wanted` (every request waiting
        for the model left), it gives up (NotWantedError) rather than evict and close what others use for nobody."""
        total = self.total_bytes
        if total is None:
            self._charges[key] = need
            return
        if need > total:
            raise NoRoomError(
                f"the model needs about {mib(need):,.0f} MiB (weights and KV cache), more than the whole memory "
                f"budget of {mib(total):,.0f} MiB (GGUFSTACK_MODEL_MEMORY_BUDGET_MIB)"
            )
        try:
            await self._make_room(key, need, total, evictable, evict, kept, busy, close, wanted)
        finally:
            close(())
        self._charges[key] = need

    async def _make_room(
        self,
        key: K,
        need: int,
        total: int,
        evictable: Callable[[K], Sequence[K]],
        evict: Callable[[K], Awaitable[None]],
        kept: Callable[[K], bool],
        busy: Callable[[K], Sequence[K]],
        close: Callable[[Sequence[K]], None],
        wanted: Callable[[], bool],
    ) -> None:
        deadline = self.clock() + self.wait_s
        while self.used_bytes + need > total:
            if not wanted():
                raise NotWantedError("no request waits for it any more")
            # Checked each round: a pinned model loading at startup is charged only once its own load reserves.
            pinned = sum(charge for k, charge in self._charges.items() if k != key and kept(k))
            if need > total - pinned:
                raise NoRoomError(
                    f"the model needs about {mib(need):,.0f} MiB (weights and KV cache), and the pinned models hold "
                    f"{mib(pinned):,.0f} of the {mib(total):,.0f} MiB budget: it cannot load beside them"
                )
            victims = evictable(key)
            settled = self.used_bytes - self._retiring  # what stays once the unloads under way have freed theirs
            freeable = sum(self.charged(victim) for victim in victims)
            if settled + need > total and settled - freeable + need <= total:
                await evict(victims[0])
                continue
            # The idle victims too: reopened, a request would make one busy again as a busy one goes idle, and the
            # load would wait for a moment they are all idle that traffic on them never leaves.
            closing = self._closing(settled - freeable + need - total, busy(key))
            close([*victims, *closing] if closing else [])
            self._changed.clear()
            remaining = deadline - self.clock()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise NoRoomError(
                    f"not enough memory: the model needs about {mib(need):,.0f} MiB and {mib(self.used_bytes):,.0f} "
                    f"of the {mib(total):,.0f} MiB budget are taken by models that are pinned, loading or running "
                    "generations"
                ) from None

    def _closing(self, short: int, busy: Sequence[K]) -> list[K]:
        """The first of `busy` whose charges make up `short` bytes; none when all of them cannot (closing them would
        turn requests away for nothing)."""
        closing: list[K] = []
        for candidate in busy:
            if short <= 0:
                break
            closing.append(candidate)
            short -= self.charged(candidate)
        return closing if short <= 0 else []

    def recharge(self, key: K, need: int) -> None:
        """A loaded `key` now holds another version (a hot swap): charge it what that one needs. The swap checked
        the memory actually free; a charge now over the budget makes the next load evict more."""
        if key in self._charges:
            self._charges[key] = need
            self.changed()

    def release(self, key: K) -> None:
        """A reservation whose load failed."""
        self._charges.pop(key, None)
        self.changed()

    def retire(self, key: K) -> int:
        """`key` was unloaded: its charge stays counted until `retired` says its memory is free."""
        charge = self._charges.pop(key, 0)
        self._retiring += charge
        return charge

    def retired(self, charge: int) -> None:
        self._retiring -= charge
        self.changed()

    def changed(self) -> None:
        """Something that may make room happened: loads waiting for memory look again."""
        self._changed.set()
