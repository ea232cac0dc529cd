"""Load a model with every layer on the GPU and decode one token, in one of several ways, to find which way breaks.

    python -X faulthandler bench/gpu/smoke.py VARIANT MODEL
    python bench/gpu/smoke.py --list-imports MODULE[,MODULE]

Variants: `raw` (llama-cpp-python's ctypes calls, llama.cpp's own logging to stderr, n_gpu_layers 99), `raw-max`
(n_gpu_layers 0x7FFFFFFF, as our server and llama-cpp-python's `Llama` spell "all"), `raw-callback` (a Python log
callback, as llama-cpp-python installs at import), `raw-no-mmap` (load_mode NONE), `ours` (the server's LlamaModel
and BatchingEngine), `ours-thread` (ours, the model loaded in a fresh daemon thread as the server loads it),
`ours-thread-64m` (the same with a 64 MiB thread stack: if only this one of the two works, the stack is too small),
`ours-after:MODULE[,MODULE]` (ours, once those modules are imported: on the first GPU runs the server and the test
processes crashed loading the model where `ours` alone did not). Prints `OK <variant>` when the token came out; a
crash shows in the exit status and the log.

`--list-imports` prints, as `IMPORTS <json>`, the top-level modules that importing those modules brings in after
the engine's own, in the order they come: bench/gpu/bisect_imports.py narrows a crash down to one of them.

With GGUFSTACK_KIT_REHEARSE_CRASH=MODULE set, a variant crashes inside libllama just before the load when MODULE
has been imported: the dry run's rehearsal of a crash that depends on an import (no GPU needed).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


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


REHEARSE = "GGUFSTACK_KIT_REHEARSE_CRASH"


def rehearse_crash() -> None:
    import llama_cpp

    if os.environ.get(REHEARSE) in sys.modules:
        print(f"{REHEARSE}: {os.environ[REHEARSE]} is imported, crashing in libllama", flush=True)
        llama_cpp.llama_model_n_layer(ctypes.c_void_p(64))  # reads through a pointer into the unmapped first page


def in_fresh_thread(load: Callable[[], T], *, stack_bytes: int = 0) -> T:
    """Run `load` in a new daemon thread and wait for it, as the server's lifecycle.loader.in_daemon_thread does;
    `stack_bytes` 0 keeps the platform's thread stack size. Not that function itself: importing the loader imports
    settings, telemetry and model sources, a second difference from `ours` where this variant wants only the thread."""
    result: list[T] = []
    before = threading.stack_size(stack_bytes)
    try:
        thread = threading.Thread(target=lambda: result.append(load()), name="loader-open_model", daemon=True)
        thread.start()
    finally:
        threading.stack_size(before)
    thread.join()
    if not result:
        raise RuntimeError("the load in a fresh thread raised (its traceback is above)")
    return result[0]


async def ours(model: Path, *, thread: bool = False, stack_bytes: int = 0) -> None:
    from server.engine.base import GenerationRequest, SamplingParams
    from server.engine.batching import BatchingEngine
    from server.engine.llama_model import LlamaModel

    rehearse_crash()
    load = lambda: LlamaModel(model, n_gpu_layers=-1)  # noqa: E731
    loaded = in_fresh_thread(load, stack_bytes=stack_bytes) if thread else load()
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
    "ours-thread": lambda m: asyncio.run(ours(m, thread=True)),
    "ours-thread-64m": lambda m: asyncio.run(ours(m, thread=True, stack_bytes=64 << 20)),
}


def imports_after_the_engine(modules: list[str]) -> list[str]:
    """The top-level modules importing `modules` adds to what the engine imports, in the order they come."""
    import server.engine.batching
    import server.engine.llama_model  # noqa: F401

    seen = set(sys.modules)
    added: list[str] = []
    order = _ImportOrder(added, seen)
    sys.meta_path.insert(0, order)
    try:
        import_first(modules)
    finally:
        sys.meta_path.remove(order)
    return added


class _ImportOrder:
    """A meta path finder that finds nothing and notes each new top-level module as its import begins."""

    def __init__(self, added: list[str], seen: set[str]) -> None:
        self.added, self.seen = added, seen

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        top = name.partition(".")[0]
        if top not in self.seen:
            self.seen.add(top)
            self.added.append(top)


def native_libraries() -> list[str]:
    """Every shared library this process has mapped: which copy of the C++ runtime, OpenMP, CUDA... came first."""
    found = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if path.startswith("/") and ".so" in Path(path).name:
            found.add(path)
    return sorted(found)


def import_first(modules: list[str]) -> None:
    """Import each module; one that cannot be imported here (an optional dependency a package only tries) is said
    and passed over, so that only a crash fails the variant."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"not importable: {module}: {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--list-imports":
        print("IMPORTS " + json.dumps(imports_after_the_engine(sys.argv[2].split(","))), flush=True)
        sys.exit(0)
    variant, path = sys.argv[1], Path(sys.argv[2])
    base, _, first = variant.partition(":")
    import_first(list(filter(None, first.split(","))))  # `ours-after:gguf` imports gguf before loading
    import llama_cpp  # noqa: F401 - maps libllama and ggml's libraries, as every variant's first step would

    print("LIBRARIES " + json.dumps(native_libraries()), flush=True)
    VARIANTS["ours" if base == "ours-after" else base](path)
    print(f"OK {variant}", flush=True)
