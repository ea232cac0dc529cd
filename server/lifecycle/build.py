"""The model registry the settings describe: their catalogue, and the memory budget it is held to."""

from __future__ import annotations

from server.config.settings import Settings
from server.lifecycle.budget import Budget, default_budget_bytes
from server.lifecycle.catalogue import catalogue
from server.lifecycle.registry import ModelRegistry


def build_registry(settings: Settings) -> ModelRegistry:
    """The registry of `settings`' catalogue. With the single-model settings and no budget set, the one model is not
    held to a budget: it loads as it always did."""
    specs = catalogue(settings)
    if settings.model_memory_budget_mib is not None:
        total: int | None = settings.model_memory_budget_mib * 2**20
    elif settings.models is None:
        total = None
    else:
        total = default_budget_bytes(gpu=any(spec.settings.n_gpu_layers != 0 for spec in specs))
    return ModelRegistry(
        specs,
        Budget(total, wait_s=settings.model_load_timeout_s),
        load_timeout_s=settings.model_load_timeout_s,
        max_waiting=settings.max_queue,
        retry_initial_s=settings.source_retry_initial_s,
        retry_max_s=settings.source_retry_max_s,
    )
