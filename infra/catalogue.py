"""The stack's model catalogue (`ggufstack:models`): the models every replica serves, and whether they fit its memory.

Each entry becomes one entry of the server's `GGUFSTACK_MODELS` (`ModelEntry` in server/config/models.py), so the
pod's environment is the server's own serialisation of it. The memory check does the server's arithmetic, not a copy:
a model needs its weights plus an f16 KV cache of its context for each slot (`memory_estimate`), slots default as the
engine picks them (`slots_for`), and the models share the budget the server derives (GGUFSTACK_MODEL_MEMORY_BUDGET_MIB,
else the memory they run from less the capacity check's headroom). The stack cannot read a GGUF at preview time, so
each entry states the two facts the estimate reads, as `ggufstack model info` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from infra.sizing import POD_GPU_LAYERS, GpuVmSize
from server.config.models import ModelEntry, ModelName
from server.engine.sizing import slots_for
from server.lifecycle.capacity import HEADROOM
from server.model_source.blob import KEEP_CACHED
from server.model_source.facts import GGUFFacts, memory_estimate

MIB = 2**20
KIB = 2**10
VERSION_PATTERN = r"^[0-9A-Za-z:.\-]{8,64}$"


def blob_name(value: str) -> str:
    if not value.endswith(".gguf") or value.startswith("/") or len(value) > 1024:
        raise ValueError(f"{value!r} is not a GGUF blob name; allowed: a blob path ending in .gguf (e.g. qwen/q4.gguf)")
    return value


class StackModel(BaseModel):
    """One entry of `ggufstack:models`; unset limits take the stack's (`contextSize`) or the server's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, validate_by_name=True)

    id: ModelName
    blob: Annotated[str, AfterValidator(blob_name)]
    version: str | None = Field(None, pattern=VERSION_PATTERN)
    pin: bool = False
    ttl_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    context_size: int | None = Field(None, ge=64, le=1_048_576)
    slots: int | None = Field(None, ge=1, le=256)
    gpu_layers: int | None = Field(None, ge=-1, le=100_000)
    aliases: list[ModelName] = []
    # What `ggufstack model info` prints as "weights" (MiB) and "KV cache per token" (KiB).
    weights_mib: float | None = Field(None, gt=0)
    kv_kib_per_token: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> StackModel:
        if self.pin and self.ttl_seconds is not None:
            raise ValueError(f"{self.id} is pinned, and a pinned model is never unloaded; allowed: pin or ttlSeconds")
        if (self.weights_mib is None) != (self.kv_kib_per_token is None):
            raise ValueError(
                f"{self.id} states one of its sizes; allowed: both weightsMib and kvKibPerToken "
                "(as `ggufstack model info` prints them) or neither"
            )
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    @property
    def sized(self) -> bool:
        return self.weights_mib is not None

    def entry(self) -> ModelEntry:
        """The server's catalogue entry (its own validation runs here, at preview time)."""
        return ModelEntry(
            id=self.id,
            blob=self.blob,
            version=self.version,
            pin=self.pin,
            ttl_s=self.ttl_seconds,
            n_ctx=self.context_size,
            slots=self.slots,
            n_gpu_layers=self.gpu_layers,
            alias=list(self.aliases),
        )

    def gpu(self) -> bool:
        return (self.gpu_layers if self.gpu_layers is not None else POD_GPU_LAYERS) != 0

    def need_bytes(self, n_ctx: int) -> int:
        """Weights and KV cache, as the server charges them against its budget before loading the model."""
        assert self.weights_mib is not None and self.kv_kib_per_token is not None
        kv_per_token = round(self.kv_kib_per_token * KIB)
        # The estimate reads only the weights and the KV size; the stack knows nothing else of the GGUF.
        facts = GGUFFacts(
            architecture="",
            name=self.id,
            parameters=0,
            quantization="",
            context_length=0,
            layers=0,
            kv_bytes_per_token=kv_per_token,
            weights_bytes=round(self.weights_mib * MIB),
        )
        n_ctx = self.context_size or n_ctx
        slots = self.slots or slots_for(kv_per_token, n_ctx)
        return memory_estimate(facts, n_ctx=n_ctx, n_slots=slots).total_bytes


@dataclass(frozen=True)
class Misfit:
    """A config problem: the key to change (relative to the namespace), what is wrong, and what is allowed."""

    key: str
    problem: str
    allowed: str


def names_problem(models: Sequence[StackModel]) -> Misfit | None:
    seen: dict[str, str] = {}
    for index, model in enumerate(models):
        for name in model.names:
            if name in seen:
                return Misfit(
                    f"models[{index}]",
                    f"{model.id} uses the name {name!r}, which already names {seen[name]}",
                    "ids and aliases that name one model each",
                )
            seen[name] = model.id
    return None


def fit_problem(
    models: Sequence[StackModel],
    *,
    n_ctx: int,
    vm_size: str,
    size: GpuVmSize,
    pod_memory_mi: int,
    budget_mib: int | None,
) -> Misfit | None:
    """Whether the pinned models fit the replica (and each other model fits beside them), as the server will count.

    The server runs its budget from one GPU's memory when any model offloads layers (the pod offloads all by
    default), else from the pod's memory; models kept on the CPU take the pod's memory in either case.
    """
    for index, model in enumerate(models):
        if model.pin and not model.sized:
            return Misfit(
                f"models[{index}].weightsMib",
                f"{model.id} is pinned, and preview checks that pinned models fit, which needs their sizes",
                "weightsMib and kvKibPerToken: the weights (MiB) and KV cache per token (KiB) `ggufstack model info` "
                "prints",
            )
    gpu = any(model.gpu() for model in models)
    if gpu:
        memory_mib, where = size.gpu_memory_mib, f"{vm_size}'s GPU"
    else:
        memory_mib, where = pod_memory_mi, "the pod's memory request"
    if budget_mib is not None and budget_mib > memory_mib:
        return Misfit(
            "modelMemoryBudgetMib",
            f"{budget_mib:,} MiB is more than the {memory_mib:,} MiB of {where}",
            f"1..{memory_mib} (or leave it unset: the server takes that memory less its headroom)",
        )
    budget = budget_mib if budget_mib is not None else int(memory_mib / HEADROOM)
    budget_is = (
        f"the {budget:,} MiB budget (modelMemoryBudgetMib)"
        if budget_mib is not None
        else f"the {budget:,} MiB budget ({memory_mib:,} MiB of {where} less the server's {HEADROOM - 1:.0%} headroom)"
    )
    need = {model.id: model.need_bytes(n_ctx) / MIB for model in models if model.sized}
    pinned = [model.id for model in models if model.pin]
    pinned_mib = sum(need[model_id] for model_id in pinned)
    if pinned_mib > budget:
        return Misfit(
            "models",
            f"the pinned models ({_listed(need, pinned)}: weights plus KV cache for their context and slots) need "
            f"{pinned_mib:,.0f} MiB, more than {budget_is}",
            "fewer or smaller pinned models, a smaller contextSize or slots, or a larger gpuVmSize",
        )
    for index, model in enumerate(models):
        if model.pin or model.id not in need:
            continue
        if pinned_mib + need[model.id] > budget:
            return Misfit(
                f"models[{index}]",
                f"{model.id} needs {need[model.id]:,.0f} MiB, but the pinned models leave "
                f"{budget - pinned_mib:,.0f} MiB of {budget_is}, so it could never load",
                "a smaller contextSize or slots for it, fewer pinned models, or a larger gpuVmSize",
            )
    on_cpu = [model.id for model in models if model.pin and not model.gpu()]
    cpu_mib = sum(need[model_id] for model_id in on_cpu)
    pod_budget = int(pod_memory_mi / HEADROOM)
    if gpu and cpu_mib > pod_budget:
        return Misfit(
            "models",
            f"the pinned models kept on the CPU ({_listed(need, on_cpu)}, gpuLayers 0) need {cpu_mib:,.0f} MiB, more "
            f"than the pod's {pod_memory_mi:,} MiB memory request less the server's {HEADROOM - 1:.0%} headroom "
            f"({pod_budget:,} MiB)",
            "a larger serverMemoryGi, or GPU offload for them",
        )
    return None


def cache_problem(models: Sequence[StackModel], *, cache_gi: int) -> Misfit | None:
    """Whether the model cache volume holds what the server keeps of the sized models: up to KEEP_CACHED files per
    blob (the serving one, the one before it, one being swapped in). Past its size limit the kubelet evicts the pod."""
    sized = [model for model in models if model.weights_mib is not None]
    need_gi = sum(KEEP_CACHED * (model.weights_mib or 0) for model in sized) / 1024
    if need_gi > cache_gi:
        return Misfit(
            "modelCacheSizeGi",
            f"{cache_gi} GiB cannot hold the {KEEP_CACHED} versions the server keeps of each model "
            f"({', '.join(model.id for model in sized)}: {need_gi:,.1f} GiB)",
            f"at least {int(-(-need_gi // 1))} (and a gpuOsDiskSizeGb that holds it)",
        )
    return None


def _listed(need: dict[str, float], ids: Sequence[str]) -> str:
    return ", ".join(f"{model_id} {need[model_id]:,.0f} MiB" for model_id in ids)
