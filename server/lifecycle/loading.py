"""The steps of loading one catalogue model: fetch, estimate its memory, load and warm up, then watch its blob."""

from __future__ import annotations

from collections.abc import Callable

from server.engine.sizing import slots_for
from server.lifecycle.catalogue import ModelSpec
from server.lifecycle.holder import ModelHolder, ModelState, ServedModel
from server.lifecycle.loader import fetch, in_daemon_thread, load_served
from server.lifecycle.watcher import Swapped, watch
from server.model_source.base import FetchResult
from server.model_source.facts import memory_estimate, read_facts


class ModelLoading:
    """The steps of loading one catalogue model, each run off the event loop; the registry decides when, and whether
    memory allows (its tests drive it with a stand-in)."""

    async def fetch(self, spec: ModelSpec, *, beside_serving: bool) -> FetchResult:
        return await fetch(spec.source, beside_serving=beside_serving)

    async def estimate(self, spec: ModelSpec, fetched: FetchResult) -> int:
        """Weights and KV cache for the model's context and slots, in bytes, from the GGUF's header."""
        facts = await in_daemon_thread(read_facts, fetched.path)
        settings = spec.settings
        slots = settings.n_slots or slots_for(facts.kv_bytes_per_token, settings.n_ctx)
        return memory_estimate(facts, n_ctx=settings.n_ctx, n_slots=slots).total_bytes

    async def load(
        self, spec: ModelSpec, fetched: FetchResult, report: Callable[[ModelState, str], None]
    ) -> ServedModel:
        return await load_served(fetched, spec.settings, spec.id, report=report)

    async def watch(
        self, spec: ModelSpec, holder: ModelHolder, fetched: FetchResult, on_swapped: Swapped | None = None
    ) -> None:
        """Swap the model to its blob's new versions until cancelled (when it is unloaded), telling `on_swapped` of
        each version installed."""
        await watch(spec, holder, fetched, on_swapped)
