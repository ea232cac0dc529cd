"""The models this server may serve, each with its source and its own settings (context, slots, GPU layers), and
what the registry knows of each at run time.

The single-model settings (GGUFSTACK_MODEL_PATH, GGUFSTACK_BLOB_*, the demo model) are a one-entry catalogue whose
model is pinned, so one code path serves both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from server.config.models import ModelEntry
from server.config.settings import Settings
from server.lifecycle.holder import ModelHolder, ModelState, ServedModel
from server.model_source.base import ModelSource
from server.model_source.blob import BlobModelSource
from server.model_source.resolve import entry_source, model_source


@dataclass(frozen=True, slots=True, eq=False)
class ModelSpec:
    id: str
    aliases: tuple[str, ...]
    source: ModelSource
    # The server's settings with this model's n_ctx, n_slots and n_gpu_layers: what loads its engine.
    settings: Settings
    pin: bool = False
    ttl_s: float | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    @property
    def watched(self) -> bool:
        """Whether a watcher swaps it to its blob's new versions (a blob, no pinned version, watching on)."""
        source = self.source
        return (
            isinstance(source, BlobModelSource)
            and source.pinned_version is None
            and self.settings.model_watch_interval_s > 0
        )


def catalogue(settings: Settings) -> list[ModelSpec]:
    if settings.models is None:
        source = model_source(settings)
        return [ModelSpec(settings.model_alias or source.default_model_id(), (), source, settings, pin=True)]
    return [_spec(settings, entry) for entry in settings.models]


def _spec(settings: Settings, entry: ModelEntry) -> ModelSpec:
    own = {
        "n_ctx": entry.n_ctx if entry.n_ctx is not None else settings.n_ctx,
        "n_slots": entry.slots if entry.slots is not None else settings.n_slots,
        "n_gpu_layers": entry.n_gpu_layers if entry.n_gpu_layers is not None else settings.n_gpu_layers,
    }
    return ModelSpec(
        entry.id,
        tuple(entry.alias),
        entry_source(settings, entry),
        settings.model_copy(update=own),
        pin=entry.pin,
        ttl_s=entry.ttl_s,
    )


_LOADING_STATES = (ModelState.STARTING, ModelState.FETCHING, ModelState.LOADING, ModelState.WARMING_UP)


ModelStatusName = Literal["loaded", "loading", "unloaded", "failed"]


@dataclass(frozen=True, slots=True)
class ModelStatus:
    state: ModelStatusName
    reason: str | None
    served: ServedModel | None
    memory_bytes: int


@dataclass(eq=False)
class CatalogueModel:
    """One catalogue model and what the registry knows of it."""

    spec: ModelSpec
    holder: ModelHolder
    last_used: float = 0.0
    waiting: int = 0  # requests waiting for it to load: it is not evicted under them
    held: int = 0  # requests waiting while it is closed for another model's load (they do not keep it loaded)
    closed_since: float = 0.0  # when it was last closed for another model's load
    closable_at: float = 0.0  # reopened still loaded: not closed again before this (monotonic)
    loading: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    unloading: asyncio.Future[None] | None = None  # done once an unload under way has freed it: a reload waits for it
    failure: str | None = None
    retry_at: float = 0.0  # no new load on demand before this (monotonic), after a failed one
    retry_delay: float = 0.0
    load_seconds: float = 0.0  # the last load's, for Retry-After
    # Who its load was for (an opaque name the load's starter gives; "" for none), and, after an eviction to make room,
    # whose load evicted it: the starter of its next load may go by it (a key's load limit lets a restore of what the
    # admin key's load evicted go free).
    load_owner: str = ""
    evicted_by: str | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def is_loading(self) -> bool:
        return self.loading is not None and not self.loading.done()

    def status(self, memory_bytes: int) -> ModelStatus:
        """What /v1/models shows of it."""
        state = self.holder.readiness()
        served = self.holder.current
        if served is not None and state.state is not ModelState.SWAPPING:
            return ModelStatus("loaded", None, served, memory_bytes)
        if state.state in (ModelState.FAILED, ModelState.WAITING):
            return ModelStatus("failed", state.reason, None, memory_bytes)
        if state.state in (*_LOADING_STATES, ModelState.SWAPPING) or self.is_loading:
            return ModelStatus("loading", state.reason, served, memory_bytes)
        return ModelStatus("unloaded", None, None, memory_bytes)
