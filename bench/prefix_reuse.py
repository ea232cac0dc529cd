"""Effect of prompt-prefix reuse on time to first token: requests sharing a ~500-token system prompt, one after another,
on an engine with prefix reuse on and on one with it off (in-process, demo model by default). A third row sends each
request as another tenant than the one whose request cached the prompt (`GenerationRequest.cache_scope`, a key's own
under GGUFSTACK_CACHE_SCOPE=key): the gap between it and the second row is what one key could time of another's
prompts if caches were shared.

    uv run --no-sync python bench/prefix_reuse.py [--model PATH] [--threads 2] [--requests 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.engine.base import GenerationRequest, SamplingParams  # noqa: E402
from server.engine.batching import BatchingEngine  # noqa: E402
from server.engine.llama_model import LlamaModel  # noqa: E402

SYSTEM = "You are a careful assistant for a travel agency. Answer briefly and politely. " * 30


async def ttfts(engine: BatchingEngine, n: int, *, tenants: bool = False) -> list[float]:
    """`tenants`: each request of another cache scope than every request before it."""
    out = []
    for i in range(n):
        prompt = engine.tokenize(f"{SYSTEM}\nQuestion {i}: where should I go in spring?", add_special=True)
        scope = f"key:{i}" if tenants else ""
        request = GenerationRequest(prompt, SamplingParams(max_tokens=2, temperature=0), cache_scope=scope)
        start = time.monotonic()
        events = aiter(engine.generate(request))
        await anext(events)
        out.append(time.monotonic() - start)
        async for _ in events:
            pass
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()
    if args.model is None:
        from server.model_source.local import demo_model

        args.model = demo_model()
    model = LlamaModel(args.model, n_gpu_layers=-1)
    print(f"shared prefix: {len(model.tokenize(SYSTEM, add_special=True))} tokens")
    rows = [("prefix reuse off", False, False), ("prefix reuse on", True, False), ("on, another key's", True, True)]
    for label, reuse, tenants in rows:
        engine = BatchingEngine(
            model, model_id="bench", n_ctx=2048, n_batch=512, n_threads=args.threads, n_slots=4, reuse_prefix=reuse
        )
        await ttfts(engine, 1)  # warm-up (and, with reuse, the request that fills the cache)
        times = await ttfts(engine, args.requests, tenants=tenants)
        print(f"{label:18}: TTFT median {statistics.median(times) * 1000:.0f} ms")
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
