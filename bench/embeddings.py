"""Embeddings throughput: 256 short inputs on ggufstack's server and, when a binary is given, on llama.cpp's
`llama-server --embeddings`, same GGUF, mean pooling, one server at a time.

Two shapes of the same work: one request carrying all 256 inputs, and 256 one-input requests sent 32 at a time (what
the cross-request batching is for). Prints inputs/s per server and shape, the ratio ours/llama.cpp, and two checks
that the speed is not bought with wrong answers: each server's lowest cosine similarity between an input's vector in
the big batch and the same input embedded alone (every input), and the lowest between the two servers' vectors for
the same input (both L2-normalise, so ~1.0 means the same embedding).

    uv run --no-sync python -m bench.embeddings [--llama-server PATH] [--threads 2] [--inputs 256]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.concurrency import HOST, REPO, Server, free_port, model_id, start, wait_ready

SUBJECTS = ["The cat", "A storm", "Our team", "The river", "My neighbour", "The market", "A violin", "The old bridge"]
VERBS = ["crossed", "watched", "repaired", "forgot", "painted", "followed", "ignored", "celebrated"]
OBJECTS = ["the hill", "a letter", "the harbour", "its shadow", "the budget", "a song", "the garden", "the city"]


def inputs(count: int) -> list[str]:
    """Short, distinct sentences of 6 to 10 tokens."""
    return [f"{SUBJECTS[i % 8]} {VERBS[(i // 8) % 8]} {OBJECTS[(i // 64) % 8]} on day {i}." for i in range(count)]


async def one_request(server: Server, model: str, texts: list[str]) -> tuple[float, list[list[float]]]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.monotonic()
        r = await client.post(server.url + "/v1/embeddings", json={"model": model, "input": texts})
        r.raise_for_status()
        wall = time.monotonic() - started
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return wall, [d["embedding"] for d in data]


async def many_requests(server: Server, model: str, texts: list[str], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one(text: str) -> None:
            async with gate:
                r = await client.post(server.url + "/v1/embeddings", json={"model": model, "input": text})
                r.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(one(t) for t in texts))
        return time.monotonic() - started


def cosine_floor(a: list[list[float]], b: list[list[float]]) -> float:
    return min(sum(x * y for x, y in zip(u, v, strict=True)) for u, v in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the demo model)")
    parser.add_argument("--llama-server", type=Path, help="a llama.cpp llama-server binary to compare with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(REPO))
        from server.model_source.local import demo_model

        args.model = demo_model()
    texts = inputs(args.inputs)
    rates: dict[tuple[str, str], float] = {}
    batched_vs_alone: dict[str, float] = {}
    vectors: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        port = free_port()
        env = {"GGUFSTACK_MODEL_PATH": str(args.model), "GGUFSTACK_N_THREADS": str(args.threads)}
        env |= {"GGUFSTACK_EMBEDDING_POOLING": "mean", "GGUFSTACK_LOG_LEVEL": "warning", "GGUFSTACK_N_CTX": "1024"}
        plans = [("ours", [sys.executable, "-m", "server", "serve", "--port", str(port)], env, port, "/health/ready")]
        if args.llama_server:
            port = free_port()
            argv = [str(args.llama_server), "-m", str(args.model), "-t", str(args.threads), "--embeddings"]
            # As many slots as our batch holds sequences would be unfair to neither: 8 slots of 1024 tokens, and a
            # physical batch as large as ours (n_batch 512).
            argv += ["--pooling", "mean", "-c", "8192", "-np", "8", "-b", "512", "-ub", "512"]
            argv += ["--host", HOST, "--port", str(port)]
            plans.append(("llama.cpp", argv, {}, port, "/health"))
        for name, argv, server_env, port, ready in plans:
            server = start(name, argv, server_env, port, Path(tmp))
            try:
                wait_ready(server, ready)
                model = model_id(server)
                asyncio.run(one_request(server, model, texts[:8]))  # warm-up: our embedding context is lazy
                wall, vectors[name] = asyncio.run(one_request(server, model, texts))
                rates[(name, "one request")] = len(texts) / wall
                alone = [asyncio.run(one_request(server, model, [text]))[1][0] for text in texts]
                batched_vs_alone[name] = cosine_floor(vectors[name], alone)
                wall = asyncio.run(many_requests(server, model, texts, args.concurrency))
                rates[(name, "one per request")] = len(texts) / wall
                print(f"{name}: done", file=sys.stderr)
            finally:
                server.stop()
    shapes = ["one request", f"one per request ({args.concurrency} at a time)"]
    print(f"\n{len(texts)} inputs, {args.threads} threads; inputs/s\n")
    print(f"| server | {shapes[0]} | {shapes[1]} | lowest cosine, batched vs alone |\n|---|---|---|---|")
    for name in vectors:
        row = f"| {name} | {rates[(name, 'one request')]:.0f} | {rates[(name, 'one per request')]:.0f} |"
        print(f"{row} {batched_vs_alone[name]:.5f} |")
    if "llama.cpp" in vectors:
        for shape in ("one request", "one per request"):
            print(f"ours/llama.cpp, {shape}: {rates[('ours', shape)] / rates[('llama.cpp', shape)]:.2f}x")
        print(f"lowest cosine similarity ours vs llama.cpp: {cosine_floor(vectors['ours'], vectors['llama.cpp']):.5f}")


if __name__ == "__main__":
    main()
