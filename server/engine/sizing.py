"""How many slots an engine gets by default, and what copying one slot's KV costs: both from the model's size."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: slots_for serves the Pulumi program too, whose environment has no llama.cpp.
    from server.engine.llama_model import LlamaModel

# KV memory the default slot count may use: every slot holds a full n_ctx of keys and values.
DEFAULT_KV_BUDGET_BYTES = 2 << 30
MAX_DEFAULT_SLOTS = 8


def default_slot_count(model: LlamaModel, n_ctx: int) -> int:
    """As many slots as fit DEFAULT_KV_BUDGET_BYTES of f16 KV cache, 1 to MAX_DEFAULT_SLOTS."""
    return slots_for(model.kv_bytes_per_token, n_ctx)


def slots_for(kv_bytes_per_token: int, n_ctx: int) -> int:
    """The default slot count from a model's KV size alone (its GGUF's facts will do, before it loads)."""
    per_slot = max(1, n_ctx * kv_bytes_per_token)
    return max(1, min(MAX_DEFAULT_SLOTS, DEFAULT_KV_BUDGET_BYTES // per_slot))


def kv_copy_cost(model: LlamaModel, n_ctx: int) -> float:
    """What copying one slot's KV stream (all n_ctx cells) costs, in prompt tokens computed again: memory copied
    against a token's share of the model's arithmetic. Measured on 2 CPU cores with SmolLM2-135M: a prompt token in a
    prefill 4 ms, a copy of 1024 cells (24 MB) 3 ms, of 4096 cells 10.7 ms; the ratio holds for larger models as both
    grow with their size."""
    return 4 * n_ctx * model.kv_bytes_per_token / model.info.n_params
