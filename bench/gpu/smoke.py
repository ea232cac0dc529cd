"""Load a model with every layer on the GPU and decode one token, in one of several ways, to find which way breaks.

    python -X faulthandler bench/gpu/smoke.py VARIANT MODEL

Variants: `raw` (llama-cpp-python's ctypes calls, llama.cpp's own logging to stderr, n_gpu_layers 99), `raw-max`
(n_gpu_layers 0x7FFFFFFF, as our server and llama-cpp-python's `Llama` spell "all"), `raw-callback` (a Python log
callback, as llama-cpp-python installs at import), `raw-no-mmap` (load_mode NONE), `ours` (the server's LlamaModel
and BatchingEngine), `ours-after:MODULE[,MODULE]` (ours, once those modules are imported: on the first GPU runs the
server and the test processes crashed loading the model where `ours` alone did not). Prints `OK <variant>` when the
token came out; a crash shows in the exit status and the log.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import sys
from pathlib import Path


def raw(model: Path, *, n_gpu_layers: int, callback: bool, load_mode: int | None) -> None:
    import llama_cpp

    if callback:

        @llama_cpp.llama_log_callback
        def forward(_level: int, text: bytes, _data: ctypes.c_void_p) -> None:
            sys.stderr.write(text.decode(errors="replace"))

        raw.keep = forward  # type: ignore[attr-defined]
        llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    else:
        llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    if load_mode is not None:
        params.load_mode = load_mode
    print(f"supports gpu offload: {llama_cpp.llama_supports_gpu_offload()}", flush=True)
    ptr = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    print(f"model loaded: {bool(ptr)}", flush=True)
    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = 256
    ctx = llama_cpp.llama_init_from_model(ptr, ctx_params)
    print(f"context: {bool(ctx)}", flush=True)
    tokens = (llama_cpp.llama_token * 2)(1, 2)
    batch = llama_cpp.llama_batch_get_one(tokens, 2)
    print(f"decode: {llama_cpp.llama_decode(ctx, batch)}", flush=True)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(ptr)


async def ours(model: Path) -> None:
    from server.engine.base import GenerationRequest, SamplingParams
    from server.engine.batching import BatchingEngine
    from server.engine.llama_model import LlamaModel

    loaded = LlamaModel(model, n_gpu_layers=-1)
    print(f"model loaded, gpu offload {loaded.gpu_offload}", flush=True)
    engine = BatchingEngine(loaded, model_id="smoke", n_ctx=256, n_batch=64, n_threads=4, n_slots=2)
    request = GenerationRequest(engine.tokenize("Hello", add_special=True), SamplingParams(max_tokens=2))
    async for event in engine.generate(request):
        print(f"event: {type(event).__name__}", flush=True)
    await engine.close()
    loaded.close()


VARIANTS = {
    "raw": lambda m: raw(m, n_gpu_layers=99, callback=False, load_mode=None),
    "raw-max": lambda m: raw(m, n_gpu_layers=0x7FFFFFFF, callback=False, load_mode=None),
    "raw-callback": lambda m: raw(m, n_gpu_layers=99, callback=True, load_mode=None),
    "raw-no-mmap": lambda m: raw(m, n_gpu_layers=99, callback=False, load_mode=0),
    "ours": lambda m: asyncio.run(ours(m)),
}


def native_libraries() -> list[str]:
    """The C++ runtime, OpenMP and CUDA libraries this process has mapped (which copy of each was loaded first)."""
    wanted = ("stdc++", "gomp", "omp", "cublas", "cudart", "ggml", "llama")
    found = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if path.startswith("/") and any(name in Path(path).name for name in wanted):
            found.add(path)
    return sorted(found)


if __name__ == "__main__":
    variant, path = sys.argv[1], Path(sys.argv[2])
    base, _, first = variant.partition(":")
    for module in filter(None, first.split(",")):  # `ours-after:gguf` imports gguf before loading
        importlib.import_module(module)
    if first:
        print(f"imported first: {first}; native libraries: {native_libraries()}", flush=True)
    VARIANTS["ours" if base == "ours-after" else base](path)
    print(f"OK {variant}", flush=True)
