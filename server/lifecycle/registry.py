"""Many models behind one endpoint: resolve a request's model by id or alias, load it on demand, keep the loaded ones
within a memory budget, unload idle ones.

Each catalogue model has its own `ModelHolder` (leases, hot swap, readiness) and, for a blob, its own watcher. A
request for a model that is not loaded starts one load (single flight) and waits for it, with every other request
for that model, up to GGUFSTACK_MODEL_LOAD_TIMEOUT_S. A load first counts what the model will take (weights and KV
cache, from its GGUF's header) against the budget and, when it does not fit, evicts the least recently used models
that are not pinned, have no generation in flight and no request waiting for them; if that is not enough, it waits for
generations to end; meanwhile the models whose eviction would make room once their generations end take no new
requests (those wait, up to the load timeout, until the load evicted them or gave up), so that one key keeping its
model busy cannot keep another key's model out of memory. Pinned models load at startup, are never evicted, and
readiness waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.engine.base import EngineStats
from server.lifecycle.budget import Budget, NoRoomError, NotWantedError, mib
from server.lifecycle.catalogue import CatalogueModel, ModelSpec, ModelStatus
from server.lifecycle.failures import ModelQueueFullError, ModelUnavailableError, PinnedModelError, describe_failure
from server.lifecycle.holder import Lease, ModelHolder, ModelState, Readiness, ServedModel, ServerDrainingError
from server.lifecycle.loader import publish_model_info
from server.lifecycle.loading import ModelLoading
from server.lifecycle.unloading import unload
from server.lifecycle.victims import Victims, may_evict
from server.model_source.base import FetchResult
from server.telemetry import prometheus

log = logging.getLogger(__name__)

# Called as a request starts a model's load, with the owner of the load that evicted the model (None: none did); names
# the new load's owner, or refuses the load by raising.
StartingLoad = Callable[[str | None], str]


@dataclass(eq=False)
class ModelRegistry:
    specs: list[ModelSpec]
    budget: Budget[CatalogueModel]
    load_timeout_s: float = 120.0
    max_waiting: int = 64
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    loading: ModelLoading = field(default_factory=ModelLoading)
    clock: Callable[[], float] = time.monotonic
    models: list[CatalogueModel] = field(init=False)
    _by_name: dict[str, CatalogueModel] = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _draining: bool = field(init=False, default=False)
    _victims: Victims = field(init=False)

    def __post_init__(self) -> None:
        self.models = [CatalogueModel(spec, self._holder(spec)) for spec in self.specs]
        self._by_name = {name: m for m in self.models for name in m.spec.names}
        self._victims = Victims(self.models, self.clock)
        for m in self.models:
            m.holder.on_release = functools.partial(self._released, m)

    @staticmethod
    def _holder(spec: ModelSpec) -> ModelHolder:
        if spec.pin:
            return ModelHolder()
        return ModelHolder(ModelState.UNLOADED, f"{spec.id} loads on its first request")

    # Which model

    def resolve(self, name: str) -> CatalogueModel | None:
        return self._by_name.get(name)

    @property
    def default(self) -> CatalogueModel:
        """The first catalogue model: what requests that name none (the tokenizer's) use."""
        return self.models[0]

    @property
    def sole(self) -> CatalogueModel | None:
        """The one model of a one-model catalogue (the single-model settings), else None."""
        return self.models[0] if len(self.models) == 1 else None

    # Serving

    async def lease(self, m: CatalogueModel, starting_load: StartingLoad | None = None) -> Lease:
        """A lease on `m`'s engine, loading it first if it is not loaded (waiting at most the load timeout).
        `starting_load` is called just before this request starts a load of `m` (not when it joins one under way)
        with the owner of the load that evicted `m` (None: no load did), and names the new load's owner; it may
        refuse the load by raising."""
        if self._draining:
            raise ServerDrainingError("the server is shutting down and takes no new requests")
        holder = m.holder
        deadline = self.clock() + self.load_timeout_s
        await self._victims.wait_while_closed(m, deadline, self.max_waiting)
        if holder.current is not None or m.spec.pin or holder.lost_for() > 0:
            # Loaded (or swapping in place, or a pinned model its own task loads): serve, or say why not, now.
            return holder.lease()
        if m.waiting >= self.max_waiting:
            raise ModelQueueFullError(
                f"{self.max_waiting} requests already wait for the model {m.id!r} to load", retry_after_s=1
            )
        m.waiting += 1
        try:
            while True:
                task = self._start_load(m, starting_load)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise self._still_loading(m)
                try:
                    await asyncio.wait_for(asyncio.shield(task), remaining)
                except TimeoutError:
                    raise self._still_loading(m) from None
                if self.draining:
                    raise ServerDrainingError("the server is shutting down and takes no new requests")
                if (loaded := self._lease_loaded(m)) is not None:
                    return loaded
                if m.failure is not None:
                    raise self._failed(m)
        finally:
            self._stop_waiting(m)

    def closed(self, m: CatalogueModel) -> bool:
        """Loaded, but closed to new requests while a load waits for its generations to end to evict it."""
        return self._victims.closed(m)

    def _stop_waiting(self, m: CatalogueModel) -> None:
        m.waiting -= 1
        if m.waiting == 0 and m.is_loading:
            self.budget.changed()  # a load waiting for memory looks again: it may be for nobody now

    def _lease_loaded(self, m: CatalogueModel) -> Lease | None:
        return m.holder.lease() if m.holder.current is not None else None

    def _start_load(self, m: CatalogueModel, starting: StartingLoad | None = None) -> asyncio.Task[None]:
        if m.loading is not None and not m.loading.done():
            return m.loading
        if m.failure is not None and self.clock() < m.retry_at:
            raise self._failed(m)
        m.load_owner = starting(m.evicted_by) if starting is not None else ""
        m.evicted_by = None
        m.loading = self._spawn(self._load_once(m), f"load-{m.id}")
        return m.loading

    def _still_loading(self, m: CatalogueModel) -> ModelUnavailableError:
        reason = m.holder.readiness().reason
        return ModelUnavailableError(
            f"the model {m.id!r} is not loaded yet ({reason}); try again shortly",
            param="model",
            code="model_loading",
            retry_after_s=max(1, math.ceil(m.load_seconds or 5)),
        )

    def _failed(self, m: CatalogueModel) -> ModelUnavailableError:
        wait = max(1, math.ceil(m.retry_at - self.clock()))
        return ModelUnavailableError(
            f"the model {m.id!r} could not be loaded: {m.failure}", param="model", retry_after_s=wait
        )

    def _released(self, m: CatalogueModel, lease: Lease) -> None:
        # Only a request that was served counts as use: a refused one (403, 429, a bad prompt) must not keep a model
        # loaded past its ttl_s or move it back in the order of eviction.
        if lease.admitted:
            m.last_used = self.clock()
        self.budget.changed()

    # Loading

    async def _load_once(self, m: CatalogueModel, *, retrying: bool = False) -> None:
        """One load of `m`; a failure is recorded on `m` (and its holder's readiness), never raised."""
        holder, spec = m.holder, m.spec
        started = self.clock()
        try:
            if m.unloading is not None:  # its previous copy is still being freed: one copy at a time
                holder.set_state(ModelState.LOADING, "waiting for its previous copy to be freed")
                await asyncio.shield(m.unloading)
            holder.set_state(ModelState.FETCHING, f"fetching {spec.source.describe()}")
            fetched = await self.loading.fetch(spec, beside_serving=any(x.holder.current for x in self.models))
            need = await self.loading.estimate(spec, fetched)
            await self.budget.reserve(
                m,
                need,
                evictable=self._victims.evictable,
                evict=functools.partial(self._evict, for_load_of=m),
                kept=lambda other: other.spec.pin,
                busy=self._victims.busy,
                close=functools.partial(self._victims.close, m),
                # A request that left stops waiting; a pinned model's load is the server's own.
                wanted=lambda: m.waiting > 0 or spec.pin,
            )
            try:
                holder.set_state(ModelState.LOADING, f"loading {fetched.path.name}")
                served = await self.loading.load(spec, fetched, holder.set_state)
            except BaseException:
                self.budget.release(m)
                raise
        except asyncio.CancelledError:
            raise
        except NotWantedError:
            holder.set_state(ModelState.UNLOADED, f"{spec.id} loads on its next request")
            return
        except Exception as exc:
            self._load_failed(m, exc, retrying=retrying)
            return
        if self.draining:  # loaded while the server began to stop: free it, nothing may use it
            self.budget.release(m)
            await served.close()
            return
        holder.install(served)
        m.failure, m.retry_delay = None, 0.0
        m.last_used = self.clock()
        m.load_seconds = self.clock() - started
        publish_model_info(served)
        prometheus.model_loads.labels(m.id, "loaded").inc()
        prometheus.model_load_duration.labels(m.id).observe(m.load_seconds)
        log.info("ready: serving %s (sha256 %s, cold start %.1f s)", m.id, served.sha256, m.load_seconds)
        if spec.watched:
            m.watcher = self._spawn(
                self.loading.watch(spec, holder, fetched, functools.partial(self._swapped, m)), f"watch-{m.id}"
            )
        self.budget.changed()

    async def _swapped(self, m: CatalogueModel, fetched: FetchResult) -> None:
        """`m`'s watcher installed another version: charge it what that version needs, not what the first did."""
        self.budget.recharge(m, await self.loading.estimate(m.spec, fetched))

    def _load_failed(self, m: CatalogueModel, exc: Exception, *, retrying: bool) -> None:
        reason = describe_failure(exc)
        prometheus.model_loads.labels(m.id, "failed").inc()
        m.failure = reason
        if isinstance(exc, NoRoomError):  # memory may free any moment: the next request tries again at once
            m.retry_delay, m.retry_at = 0.0, self.clock()
        else:
            m.retry_delay = min(max(m.retry_delay * 2, self.retry_initial_s), self.retry_max_s)
            m.retry_at = self.clock() + m.retry_delay
        if not retrying:
            m.holder.set_state(ModelState.FAILED, reason)
            log.warning("loading %s failed: %s", m.id, reason)

    async def _keep_loaded(self, m: CatalogueModel) -> None:
        """A pinned model: load it, retrying with backoff until it serves; every failure shows in readiness."""
        while True:
            await self._load_once(m, retrying=True)
            if m.holder.current is not None or self._draining:
                return
            reason, delay = m.failure or "unknown", m.retry_delay
            m.holder.set_state(ModelState.WAITING, f"{reason} (next try in {delay:.0f} s)")
            log.warning("%s; retrying in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    # Unloading

    async def _evict(
        self, m: CatalogueModel, reason: str = "budget", for_load_of: CatalogueModel | None = None
    ) -> None:
        # Checked again here, with nothing awaited until the model has left its holder: a list of victims made
        # before an await (another eviction's) may name one a request has leased since.
        if not may_evict(m):
            return
        m.evicted_by = for_load_of.load_owner if for_load_of is not None else None
        log.info("unloading %s (%s)", m.id, "to make room" if reason == "budget" else reason)
        prometheus.model_evictions.labels(m.id, reason).inc()
        await unload(m, self.budget, f"unloaded ({reason}); loads again on its next request", None)

    async def reap(self) -> None:
        """Unload the models idle longer than their ttl_s."""
        for m in self._victims.evictable(None):
            if m.spec.ttl_s is not None and self.clock() - m.last_used >= m.spec.ttl_s:
                await self._evict(m, "idle")

    async def _reap_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.reap()

    # Admin

    async def load(self, m: CatalogueModel) -> None:
        """Load `m` now (an admin asked), waiting at most the load timeout."""
        if m.holder.current is not None or m.spec.pin:
            return
        m.failure = None  # an admin's load is a new try, whatever the backoff
        m.waiting += 1  # not evicted by a load that runs meanwhile before the admin sees it loaded
        try:
            await asyncio.wait_for(asyncio.shield(self._start_load(m)), self.load_timeout_s)
        except TimeoutError:
            raise self._still_loading(m) from None
        finally:
            self._stop_waiting(m)
        if m.failure is not None:
            raise self._failed(m)

    async def unload(self, m: CatalogueModel, drain_s: float) -> None:
        """Unload `m` (an admin asked); the generations in flight on it finish first, for up to `drain_s`."""
        if m.spec.pin:
            raise PinnedModelError(f"the model {m.id!r} is pinned: it stays loaded")
        if m.loading is not None and not m.loading.done():
            await asyncio.shield(m.loading)  # a load cannot be stopped halfway: its thread would leak the weights
        prometheus.model_evictions.labels(m.id, "admin").inc()
        await unload(m, self.budget, "unloaded by an admin; loads again on its next request", drain_s)

    # What the API shows

    def status(self, m: CatalogueModel) -> ModelStatus:
        return m.status(self.budget.charged(m))

    def readiness(self) -> Readiness:
        """Ready while every pinned model serves and the server is not draining."""
        if (sole := self.sole) is not None:
            return sole.holder.readiness()
        for m in self.models:
            state = m.holder.readiness()
            if state.state is ModelState.DRAINING or (m.spec.pin and not state.ready):
                return Readiness(False, state.state, f"{m.id}: {state.reason}", state.refused)
        pinned = [m.id for m in self.models if m.spec.pin]
        reason = f"serving {', '.join(pinned)}" if pinned else "no pinned model: every model loads on demand"
        return Readiness(True, ModelState.READY, reason)

    def lost_for(self) -> float:
        return max(m.holder.lost_for() for m in self.models)

    def engine_stats(self) -> Mapping[str, EngineStats]:
        """Each loaded model's engine load, by model id, for /metrics."""
        stats = {}
        for m in self.models:
            if (engine_stats := m.holder.engine_stats()) is not None:
                stats[m.id] = engine_stats
        return stats

    def memory(self) -> Mapping[str, int]:
        return {m.id: self.budget.charged(m) for m in self.models}

    # Lifetime

    def start(self) -> None:
        """Load the pinned models (in the background: the probes answer meanwhile) and unload idle ones."""
        for m in self.models:
            if m.spec.pin:
                m.loading = self._spawn(self._keep_loaded(m), f"keep-{m.id}")
        ttls = [m.spec.ttl_s for m in self.models if m.spec.ttl_s is not None]
        if ttls:
            self._spawn(self._reap_forever(max(0.5, min(min(ttls) / 4, 30.0))), "reap-idle-models")
        budget = self.budget.total_bytes
        log.info(
            "%d models in the catalogue (%s); memory budget %s",
            len(self.models),
            ", ".join(f"{m.id}{' (pinned)' if m.spec.pin else ''}" for m in self.models),
            f"{mib(budget):,.0f} MiB" if budget is not None else "unbounded",
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        self._draining = True
        for m in self.models:
            m.holder.start_draining()

    @property
    def in_flight(self) -> int:
        return sum(m.holder.in_flight for m in self.models)

    async def wait_idle(self) -> None:
        for m in self.models:
            await m.holder.wait_idle()

    def take(self) -> list[ServedModel]:
        """Every loaded model, out of its holder, for the caller to close."""
        return [served for m in self.models if (served := m.holder.take()) is not None]

    async def close(self) -> None:
        """Stop loading and watching, then free every loaded model."""
        self._draining = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for served in self.take():
            await served.close()
