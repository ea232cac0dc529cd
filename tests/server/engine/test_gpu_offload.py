"""CUDA offload: proven where the build has a GPU backend and a GPU is present, reported honestly elsewhere."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from server.engine.llama_model import LlamaModel
from tests.support.engine import PROMPTS, SAMPLINGS, differ_batched
from tests.support.server import ServerProcess

HAS_GPU_BACKEND = bool(llama_cpp.llama_supports_gpu_offload())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_BACKEND, reason="llama-cpp-python was built without a GPU backend (no CUDA here)")
def test_all_layers_are_offloaded_to_the_gpu(demo_gguf: Path) -> None:
    model = LlamaModel(demo_gguf, n_gpu_layers=-1)
    try:
        assert model.gpu_offload
        assert model.n_gpu_layers >= model.info.n_layer
    finally:
        model.close()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_BACKEND, reason="llama-cpp-python was built without a GPU backend (no CUDA here)")
def test_server_logs_active_offload(demo_server: ServerProcess) -> None:
    assert "CUDA offload active" in demo_server.log()


@pytest.mark.skipif(HAS_GPU_BACKEND, reason="this build has a GPU backend")
def test_cpu_build_says_offload_is_inactive_and_why(demo_server: ServerProcess, demo_gguf: Path) -> None:
    assert "CUDA offload inactive: this llama.cpp build has no GPU backend" in demo_server.log()
    model = LlamaModel(demo_gguf, n_gpu_layers=-1)
    try:
        assert not model.gpu_offload and model.n_gpu_layers == 0
    finally:
        model.close()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_BACKEND, reason="llama-cpp-python was built without a GPU backend (no CUDA here)")
@pytest.mark.parametrize("sampling", SAMPLINGS.values(), ids=SAMPLINGS.keys())
async def test_same_tokens_alone_and_batched_with_every_layer_on_the_gpu(demo_gguf: Path, sampling: dict) -> None:
    """The engine tests' determinism promise (tests/server/engine: each slot its own KV stream), on the GPU's
    kernels."""
    model = LlamaModel(demo_gguf, n_gpu_layers=-1)
    try:
        assert model.gpu_offload
        differ = await differ_batched(model, **sampling)
    finally:
        model.close()
    assert not differ, f"{len(differ)} of {len(PROMPTS)} prompts gave other tokens batched than alone: {differ}"
