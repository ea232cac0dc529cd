"""Hot swap: watch the model blob and replace the serving model with its new version without failing a request.

Every `GGUFSTACK_MODEL_WATCH_INTERVAL_S` the watcher asks whether the blob's ETag changed (a conditional request:
304 when it did not). On a change it downloads and verifies the new file in the background while the old model
serves, then swaps in one of two ways (see `capacity`):

- beside: load and warm up the new model next to the old one, then install it; new requests go to it, requests in
  flight finish on the old one, which is freed (engine context and weights) after its last lease ends;
- in place, when memory holds one model only: report not ready (Kubernetes routes around the pod), let the requests
  in flight finish, free the old model, load the new one, come back.

A version that fails verification, loading or warm-up is refused: the old model keeps serving, the reason shows in
/health/ready and /v1/models, and the watcher does not try that version again until the blob changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from server.config.settings import Settings
from server.lifecycle.capacity import SwapPlan, free_ram_bytes, free_vram_bytes, plan_swap
from server.lifecycle.catalogue import ModelSpec
from server.lifecycle.holder import ModelHolder, ModelState, Refusal, ServedModel
from server.lifecycle.loader import fetch, in_daemon_thread, load_served, publish_model_info
from server.model_source.base import FetchResult
from server.model_source.blob import BlobModelSource
from server.model_source.errors import ModelSourceError, VerificationError
from server.model_source.facts import memory_estimate, read_facts
from server.telemetry import prometheus

log = logging.getLogger(__name__)


# Told of each version a swap installed (the registry charges it what that version needs).
Swapped = Callable[[FetchResult], Awaitable[None]]


async def watch(spec: ModelSpec, holder: ModelHolder, serving: FetchResult, on_swapped: Swapped | None = None) -> None:
    """Swap `spec`'s model to its blob's new versions until cancelled; a watcher that fails shows in readiness."""
    if not spec.watched or not isinstance(spec.source, BlobModelSource):
        return
    prometheus.model_watcher_running.labels(spec.id).set(1)
    try:
        await ModelWatcher(spec.settings, holder, spec.source, serving, model_id=spec.id, on_swapped=on_swapped).run()
    except Exception as exc:  # a bug, not a bad version (those are refused): visible, and the model serves on
        log.exception("the watcher of %s stopped; new versions of it are not picked up", spec.id)
        holder.watcher_stopped = f"{type(exc).__name__}: {exc}"
    finally:
        prometheus.model_watcher_running.labels(spec.id).set(0)


class ModelWatcher:
    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        source: BlobModelSource,
        serving: FetchResult,
        *,
        model_id: str | None = None,
        on_swapped: Swapped | None = None,
    ) -> None:
        self._settings = settings
        self._on_swapped = on_swapped
        self._holder = holder
        self._source = source
        self._id = model_id or settings.model_alias or source.default_model_id()
        self._etag = serving.etag
        self._retiring: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        log.info(
            "watching %s for new versions every %.0f s", self._source.describe(), self._settings.model_watch_interval_s
        )
        while True:
            await asyncio.sleep(self._settings.model_watch_interval_s)
            try:
                await self.check()
            except Exception:
                # Whatever one round met, the next round checks again: a watcher that ends here would leave the
                # server on its old model for good while readiness stays green.
                prometheus.model_watch_errors.labels(self._id).inc()
                log.exception("checking for a new model version failed; will check again")

    async def check(self) -> None:
        """One round: swap to the blob's new version if there is one."""
        try:
            etag = await in_daemon_thread(self._source.probe, self._etag)
        except ModelSourceError as exc:
            log.warning("cannot check for a new model version (%s); the current model keeps serving", exc)
            return
        if etag is None or self._holder.readiness().state is ModelState.DRAINING:
            return
        noticed = time.monotonic()
        log.info("%s changed (ETag %s): fetching the new version", self._source.describe(), etag)
        try:
            fetched = await fetch(self._source, beside_serving=True)
        except VerificationError as exc:
            self._etag = etag  # not tried again until the blob changes
            self._refuse(etag.strip('"'), f"verification failed: {exc}", "none")
            return
        except ModelSourceError as exc:  # the source is unreachable for now: the same version is worth a new try
            log.warning("cannot fetch the new model version (%s); will try again at the next check", exc)
            return
        except Exception as exc:  # a local failure (disk full, a bug): refused, as a retry would likely meet it again
            self._etag = etag
            self._refuse(etag.strip('"'), f"download failed: {type(exc).__name__}: {exc}", "none")
            return
        self._etag = fetched.etag or etag
        current = self._holder.current
        if current is not None and current.sha256 == fetched.sha256:
            log.info("the new version has the serving model's sha256 %s: nothing to swap", current.sha256)
            self._holder.refused = None
            return
        try:
            plan = await in_daemon_thread(self._plan, fetched, current)
        except Exception as exc:  # VerificationError from a damaged header, or anything else reading it
            reason = str(exc) if isinstance(exc, VerificationError) else f"{type(exc).__name__}: {exc}"
            self._refuse(fetched.version or etag, f"verification failed: {reason}", "none")
            self._source.discard(fetched.path)
            return
        log.info("swapping to %s %s: %s", fetched.path.name, plan.mode.replace("_", " "), plan.why)
        if plan.mode == "beside" or current is None:
            await self._swap_beside(fetched, noticed)
        else:
            await self._swap_in_place(fetched, current, noticed)

    def _plan(self, fetched: FetchResult, current: ServedModel | None) -> SwapPlan:
        facts = read_facts(fetched.path)
        slots = current.engine.stats().slots_total if current is not None else self._settings.n_slots or 1
        needed = memory_estimate(facts, n_ctx=self._settings.n_ctx, n_slots=slots).total_bytes
        gpu = current is not None and current.engine.gpu_offload
        available = free_vram_bytes() if gpu else free_ram_bytes()
        return plan_swap(
            self._settings.model_swap, needed_bytes=needed, available_bytes=available, where="VRAM" if gpu else "RAM"
        )

    async def _swap_beside(self, fetched: FetchResult, noticed: float) -> None:
        try:
            new = await load_or_free(fetched, self._settings, self._model_id())
        except Exception as exc:  # llama.cpp fails a load or a warm-up in several ways; each is a refusal
            self._refuse(fetched.version or "", f"load or warm-up failed: {exc}", "beside")
            self._source.discard(fetched.path)
            return
        previous = self._install(new, noticed, "beside")
        if previous is not None:
            # Before anything is awaited: the model it replaced is out of the holder, so a cancellation (an unload)
            # that came before its retirement was scheduled would leave it loaded, owned by nobody.
            task = asyncio.create_task(self._retire(previous), name=f"retire-{previous.sha256[:12]}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        await self._swapped(fetched)

    async def _swap_in_place(self, fetched: FetchResult, old: ServedModel, noticed: float) -> None:
        in_flight = self._holder.leases_on(old)
        self._holder.set_state(
            ModelState.SWAPPING,
            f"swapping to {fetched.path.name}: {in_flight} requests in flight finish on the old model first",
        )
        try:
            await asyncio.wait_for(self._holder.wait_released(old), self._settings.drain_timeout_s)
        except TimeoutError:
            log.warning("swap: ending %d generations still in flight on the old model", self._holder.leases_on(old))
        await old.close()
        log.info("swap: freed the old model %s (sha256 %s)", old.model_id, old.sha256)
        try:
            new = await load_or_free(fetched, self._settings, self._model_id())
        except Exception as exc:  # as in _swap_beside; the old model is loaded again from its cached file
            self._refuse(fetched.version or "", f"load or warm-up failed: {exc}", "in_place")
            self._source.discard(fetched.path)
            await self._reload(old)
            return
        self._install(new, noticed, "in_place")
        await self._swapped(fetched)

    async def _reload(self, old: ServedModel) -> None:
        """Load the previous model again, retrying with backoff: no model serves meanwhile (not ready), and once
        that lasts GGUFSTACK_LOST_MODEL_RESTART_S, /health/live fails so Kubernetes restarts the process."""
        if old.path is None:
            self._holder.lost("the new model failed and the old one cannot be reloaded")
            return
        again = FetchResult(old.path, 0, 0.0, old.source_version, old.sha256, self._etag)
        delay = self._settings.source_retry_initial_s
        while True:
            try:
                served = await load_or_free(again, self._settings, old.model_id)
            except Exception as exc:
                log.error("reloading the previous model failed too (%s); retrying in %.0f s", exc, delay)
                self._holder.lost(f"the new model failed and reloading the old one failed: {exc} (retrying)")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.source_retry_max_s)
                continue
            self._holder.install(served)
            publish_model_info(served)
            await self._swapped(again)
            log.info("serving the previous model %s again", served.model_id)
            return

    async def _swapped(self, fetched: FetchResult) -> None:
        if self._on_swapped is None:
            return
        try:
            await self._on_swapped(fetched)
        except Exception:  # the new version serves all the same; only what it is charged may be off
            log.exception("recording the swap to %s failed", fetched.path.name)

    def _install(self, new: ServedModel, noticed: float, mode: str) -> ServedModel | None:
        previous = self._holder.install(new)
        self._holder.refused = None
        publish_model_info(new)
        seconds = time.monotonic() - noticed
        prometheus.model_swaps.labels("swapped", mode, self._id).inc()
        prometheus.model_swap_duration.labels(mode, self._id).observe(seconds)
        log.info(
            "swapped to %s (sha256 %s, version %s) %s in %.1f s from noticing the change",
            new.model_id,
            new.sha256,
            new.source_version,
            mode.replace("_", " "),
            seconds,
        )
        return previous

    async def _retire(self, old: ServedModel) -> None:
        in_flight = self._holder.leases_on(old)
        if in_flight:
            log.info("the old model %s finishes %d requests in flight before it is freed", old.sha256[:12], in_flight)
        await self._holder.wait_released(old)
        await old.close()
        log.info("freed the old model %s (sha256 %s)", old.model_id, old.sha256)

    def _refuse(self, version: str, reason: str, mode: str) -> None:
        self._holder.refused = Refusal(version, reason, int(time.time()))
        prometheus.model_swaps.labels("refused", mode, self._id).inc()
        current = self._holder.current
        serving = f"{current.model_id} (sha256 {current.sha256}) keeps serving" if current else "nothing serves"
        log.warning("refused model version %s: %s; %s", version, reason, serving)

    def _model_id(self) -> str:
        return self._id


async def load_or_free(fetched: FetchResult, settings: Settings, model_id: str) -> ServedModel:
    """`load_served`, which cancelling the watcher (an unload, a shutdown) does not cut in half: the load runs in
    threads that cannot be stopped, so the cancelled watcher waits for it, frees what it loaded, then ends."""
    loading = asyncio.ensure_future(load_served(fetched, settings, model_id))
    try:
        return await asyncio.shield(loading)
    except asyncio.CancelledError:
        await asyncio.wait([loading])
        if not loading.cancelled() and loading.exception() is None:
            await loading.result().close()
        raise
