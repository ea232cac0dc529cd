"""Builds the serving engine for a model file from the settings."""

from __future__ import annotations

import logging
from pathlib import Path

from server.config.settings import Settings
from server.engine.base import Engine, GenerationRequest, SamplingParams
from server.engine.batching import BatchingEngine
from server.engine.llama_model import LlamaModel

log = logging.getLogger(__name__)


def open_model(path: Path, settings: Settings) -> LlamaModel:
    model = LlamaModel(path, n_gpu_layers=settings.n_gpu_layers)
    info = model.info
    log.info(
        "loaded %s: %s, %.0f M parameters, %d layers, trained context %d",
        path.name,
        info.description,
        info.n_params / 1e6,
        info.n_layer,
        info.n_ctx_train,
    )
    if model.tool_syntax is not None:
        log.info("tool calls: the chat template's own %s syntax", model.tool_syntax)
    else:
        log.info("tool calls: the generic format (the chat template has no tool syntax the server knows)")
    if model.gpu_offload:
        log.info("CUDA offload active: %d of %d layers on the GPU", min(model.n_gpu_layers, info.n_layer), info.n_layer)
    elif model.gpu_offload_supported:
        log.info("CUDA offload inactive: GGUFSTACK_N_GPU_LAYERS=0")
    else:
        log.info("CUDA offload inactive: this llama.cpp build has no GPU backend; running on the CPU")
    return model


def engine_for(model: LlamaModel, settings: Settings, model_id: str) -> Engine:
    """The serving engine over loaded weights; closing it frees its context, not the weights."""
    return BatchingEngine(
        model,
        model_id=model_id,
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_threads=settings.n_threads,
        n_slots=settings.n_slots,
        max_queue=settings.max_queue,
        max_choices=settings.max_n,
        embedding_pooling=settings.embedding_pooling,
    )


async def warm_up(engine: Engine) -> None:
    """Generate one token, so the first real request doesn't pay for lazy allocations."""
    request = GenerationRequest(
        prompt_tokens=engine.tokenize("Hello", add_special=True), sampling=SamplingParams(max_tokens=1, temperature=0)
    )
    async for _ in engine.generate(request):
        pass
