"""The data plane's cost: response-cache hit latency over HTTP, and 8-stream throughput with API keys, rate limits and
the audit log on versus off, in one run on the same GGUF.

Starts its own throwaway PostgreSQL and Redis (as the tests do) unless given URLs, then one server at a time:
"off" (no data plane) and "on" (database + Redis + admin key, a key with limits high enough never to refuse).

    uv run --no-sync python -m bench.data_plane [--model PATH] [--threads 2] [--hits 300] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.concurrency import DEFAULT_NO_EOS, HOST, Server, free_port, start, stream_one, wait_ready

ADMIN_KEY = "bench-admin-key-0123456789"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(name: str, model: Path, threads: int, extra: dict[str, str], logdir: Path) -> Server:
    port = free_port()
    env = {
        "GGUFSTACK_MODEL_PATH": str(model),
        "GGUFSTACK_N_THREADS": str(threads),
        "GGUFSTACK_LOG_LEVEL": "warning",
        **extra,
    }
    argv = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port)]
    server = start(name, argv, env, port, logdir)
    wait_ready(server, "/health/ready")
    return server


def cache_hit_latencies(server: Server, model: str, key: str, hits: int) -> list[float]:
    body = {"model": model, "messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 32}
    body["temperature"] = 0
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        first = client.post("/v1/chat/completions", json=body)
        first.raise_for_status()
        latencies = []
        for _ in range(hits):
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - started)
            if response.headers.get("x-ggufstack-cache") != "hit":
                raise RuntimeError(f"expected a cache hit, got {response.status_code} {response.headers}")
    return latencies


async def throughput(server: Server, model: str, key: str | None, clients: int, max_tokens: int) -> float:
    """Aggregate completion tok/s of `clients` concurrent streams of `max_tokens` each (EOS suppressed)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    bodies = [
        {
            "model": model,
            "prompt": f"Story number {i}: once upon a time",
            "max_tokens": max_tokens,
            "temperature": 1.0,  # not deterministic: nothing comes from the cache
            "logit_bias": DEFAULT_NO_EOS,
            "stream": True,
        }
        for i in range(clients)
    ]
    async with httpx.AsyncClient(timeout=600, headers=headers) as client:
        started = time.monotonic()
        results = await asyncio.gather(*(stream_one(client, server.url, body) for body in bodies))
        wall = time.monotonic() - started
    if any(finish != "length" for _, finish in results):
        raise RuntimeError(f"{server.name}: a stream ended early: {[f for _, f in results]}")
    return clients * max_tokens / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hits", type=int, default=300, help="cache hits to time")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--database-url", help="PostgreSQL to use (default: a throwaway one)")
    parser.add_argument("--redis-url", help="Redis to use (default: a throwaway one)")
    args = parser.parse_args()
    if args.model is None:
        from server.model_source.local import demo_model

        args.model = demo_model()

    with tempfile.TemporaryDirectory(prefix="bench-data-plane-") as tmp:
        logdir = Path(tmp)
        services = []
        try:
            database_url, redis_url = args.database_url, args.redis_url
            if database_url is None:
                from tests.support.postgres import start_postgres

                postgres = start_postgres(logdir / "postgres")
                services.append(postgres.destroy)
                database_url = postgres.create_database("bench")
            if redis_url is None:
                from tests.support.redis import start_redis

                redis = start_redis(logdir / "redis")
                services.append(redis.stop)
                redis_url = redis.url()

            off = start_server("off", args.model, args.threads, {}, logdir)
            try:
                model = httpx.get(off.url + "/v1/models", timeout=10).json()["data"][0]["id"]
                asyncio.run(throughput(off, model, None, 1, 8))  # warm-up
                off_tps = asyncio.run(throughput(off, model, None, args.clients, args.max_tokens))
            finally:
                off.stop()

            on_env = {
                "GGUFSTACK_DATABASE_URL": database_url,
                "GGUFSTACK_REDIS_URL": redis_url,
                "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
            }
            on = start_server("on", args.model, args.threads, on_env, logdir)
            try:
                created = httpx.post(
                    on.url + "/admin/keys",
                    json={"name": "bench", "rpm": 1_000_000, "tpm": 1_000_000_000},
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    timeout=30,
                )
                created.raise_for_status()
                key = created.json()["key"]
                asyncio.run(throughput(on, model, key, 1, 8))  # warm-up
                on_tps = asyncio.run(throughput(on, model, key, args.clients, args.max_tokens))
                latencies = cache_hit_latencies(on, model, key, args.hits)
            finally:
                on.stop()
        finally:
            for stop in reversed(services):
                stop()

    print("\n| measure | value |\n|---|---|")
    print(f"| cache hit p50 (ms, {args.hits} requests over HTTP) | {percentile(latencies, 0.5) * 1000:.2f} |")
    print(f"| cache hit p99 (ms) | {percentile(latencies, 0.99) * 1000:.2f} |")
    print(f"| cache hit mean (ms) | {statistics.fmean(latencies) * 1000:.2f} |")
    print(f"| {args.clients}-stream tok/s, data plane off | {off_tps:.1f} |")
    print(f"| {args.clients}-stream tok/s, keys + limits + audit on | {on_tps:.1f} |")
    print(f"| on/off | {on_tps / off_tps:.3f} |")


if __name__ == "__main__":
    main()
