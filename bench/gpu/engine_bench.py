"""Our engine without the server around it, as one contender of bench/gpu/measure.py's rounds.

    python -X faulthandler bench/gpu/engine_bench.py MODEL --n-ctx N --slots S --threads T --n-batch B
    python -X faulthandler bench/gpu/engine_bench.py MODEL --identity

Loads MODEL with every layer on the GPU in this process's main thread (importing only the engine: on the first GPU
runs the server process crashed loading where a plain engine process did not) and prints `LOADED <json>`; warms up
as the servers are warmed up (a round at every slot) and prints `READY`; then answers
each request line `{"clients": n, "max_tokens": m, "logit_bias": {...}}` on stdin with `ROUND <json>` (wall time,
each stream's TTFT and decode rate, finish reasons) on stdout, until stdin closes. Rounds run one at a time, when
the parent asks, so this contender takes turns with the servers like they take turns with each other.

Its numbers have no HTTP, JSON or SSE in them: they say what the engine does, not what a client of the server sees.

`--identity` is the CUDA tests' claims checked without pytest (on the first GPU runs the pytest process crashed
loading the model too): prints `IDENTITY <json>` with whether every layer went to the GPU, and per sampling the
prompts whose tokens differ batched from alone (tests/support/engine.py's check, which the tests run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from server.engine.base import Finished, GenerationRequest, SamplingParams, TextDelta  # noqa: E402
from server.engine.batching import BatchingEngine  # noqa: E402
from server.engine.llama_model import LlamaModel  # noqa: E402


async def one_stream(engine: BatchingEngine, prompt: str, max_tokens: int, bias: dict[int, float]) -> dict:
    """TTFT, the decode rate after the first token, and how it finished, for one generation."""
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, logit_bias=bias)
    began = time.monotonic()
    first = last = None
    finish = None
    tokens = 0
    async for event in engine.generate(GenerationRequest(engine.tokenize(prompt, add_special=True), sampling)):
        if isinstance(event, TextDelta) and event.text:
            last = time.monotonic()
            first = first or last
        elif isinstance(event, Finished):
            finish, tokens = event.finish_reason, event.completion_tokens
    first = first or time.monotonic()
    span = (last or first) - first
    return {"ttft_s": first - began, "decode_tok_s": (tokens - 1) / span if span > 0 else 0.0, "finish": finish}


async def round_of(engine: BatchingEngine, clients: int, max_tokens: int, bias: dict[int, float]) -> dict:
    began = time.monotonic()
    streams = await asyncio.gather(
        *(one_stream(engine, f"Story number {i}: once upon a time", max_tokens, bias) for i in range(clients))
    )
    return {
        "wall_s": time.monotonic() - began,
        "ttfts_s": [s["ttft_s"] for s in streams],
        "decode_tok_s": [s["decode_tok_s"] for s in streams],
        "finishes": [s["finish"] for s in streams],
    }


async def serve_rounds(args: argparse.Namespace) -> None:
    model = LlamaModel(args.model, n_gpu_layers=-1)
    engine = BatchingEngine(
        model, model_id=args.model.name, n_ctx=args.n_ctx, n_batch=args.n_batch, n_threads=args.threads,
        n_slots=args.slots, max_queue=args.slots * 2,
    )  # fmt: skip
    try:
        loaded = {"gpu_offload": model.gpu_offload, "n_gpu_layers": model.n_gpu_layers, "n_layer": model.info.n_layer}
        print("LOADED " + json.dumps(loaded), flush=True)
        await round_of(engine, args.slots, 8, {})
        print("READY {}", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            ask = json.loads(line)
            bias = {int(token): float(value) for token, value in ask.get("logit_bias", {}).items()}
            answer = await round_of(engine, ask["clients"], ask["max_tokens"], bias)
            print("ROUND " + json.dumps(answer), flush=True)
    finally:
        await engine.close()
        model.close()


async def identity(path: Path) -> None:
    from tests.support.engine import SAMPLINGS, differ_batched

    model = LlamaModel(path, n_gpu_layers=-1)
    try:
        found: dict[str, object] = {
            "gpu_offload": model.gpu_offload,
            "all_layers": model.n_gpu_layers >= model.info.n_layer,
        }
        for name, sampling in SAMPLINGS.items():
            found[name] = await differ_batched(model, **sampling)
    finally:
        model.close()
    print("IDENTITY " + json.dumps(found), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--identity", action="store_true", help="check alone and batched give the same tokens, exit")
    parser.add_argument("--n-ctx", type=int, help="context per slot, as GGUFSTACK_N_CTX")
    parser.add_argument("--slots", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--n-batch", type=int)
    args = parser.parse_args()
    if args.identity:
        asyncio.run(identity(args.model))
    elif None in (args.n_ctx, args.slots, args.threads, args.n_batch):
        parser.error("the rounds need --n-ctx, --slots, --threads and --n-batch")
    else:
        asyncio.run(serve_rounds(args))


if __name__ == "__main__":
    main()
