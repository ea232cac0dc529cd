"""Concurrent streaming throughput: ggufstack's server against llama-cpp-python's built-in server (and, with
`--llama-server BINARY`, llama.cpp's own `llama-server`), same GGUF, same run.

For 1, 4 and 8 concurrent clients each streaming a 128-token completion (EOS suppressed with logit_bias, so every
request produces exactly max_tokens), prints aggregate completion tok/s, TTFT p50/p95 and the ratio ours/theirs.

    uv run --no-sync --group bench python bench/concurrency.py [--model PATH] [--threads 2] [--only ours]
        [--llama-server PATH/TO/llama-server] [--no-theirs] [--repeat 5]

`--llama-server` also starts that binary with one slot per client of the largest round (`-np`), each slot holding
`--n-ctx` tokens, so it runs the same per-sequence context as ours. The servers are benchmarked one at a time, taking
turns round by round; with `--repeat N` every server runs N rounds per client count and the table shows medians, with
each ratio the median of the ratios of rounds run side by side. `--no-theirs` leaves out llama-cpp-python's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# SmolLM2's end-of-generation tokens; the script's default model is the demo model.
DEFAULT_NO_EOS = {"0": -100, "2": -100}


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Round:
    clients: int
    tokens: int
    wall_s: float
    ttfts_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def ttft_percentile(self, q: float) -> float:
        ordered = sorted(self.ttfts_s)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(name: str, argv: list[str], env: dict[str, str], port: int, logdir: Path) -> Server:
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    return Server(name, process, port, log)


def wait_ready(server: Server, path: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{server.name} not ready after {timeout_s} s")


async def stream_one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, str | None]:
    """TTFT of one streamed completion and its finish reason."""
    start = time.monotonic()
    ttft, finish = None, None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                if ttft is None and choice.get("text"):
                    ttft = time.monotonic() - start
                finish = choice.get("finish_reason") or finish
    return (ttft if ttft is not None else time.monotonic() - start), finish


async def run_round(server: Server, model: str, clients: int, max_tokens: int, no_eos: dict) -> Round:
    bodies = [
        {
            "model": model,
            "prompt": f"Story number {i}: once upon a time",
            "max_tokens": max_tokens,
            "temperature": 0,
            "logit_bias": no_eos,
            "stream": True,
        }
        for i in range(clients)
    ]
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.monotonic()
        results = await asyncio.gather(*(stream_one(client, server.url, b) for b in bodies))
        wall = time.monotonic() - start
    if any(finish != "length" for _, finish in results):
        raise RuntimeError(f"{server.name}: a stream ended early: {[f for _, f in results]}")
    return Round(clients, clients * max_tokens, wall, [t for t, _ in results])


def model_id(server: Server) -> str:
    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]


def print_table(results: dict[str, dict[int, list[Round]]]) -> None:
    """Medians over the repetitions; a ratio is the median of the ratios within each repetition."""
    others = [name for name in ("theirs", "llama.cpp") if name in results] if "ours" in results else []
    header = "| clients | server | aggregate tok/s | TTFT p50 ms | TTFT p95 ms |"
    print("\n" + header + "".join(f" ours/{name} tok/s |" for name in others))
    print("|---|---|---|---|---|" + "---|" * len(others))
    for name, by_clients in results.items():
        for clients, rounds in by_clients.items():
            tok_s = statistics.median(r.tokens_per_s for r in rounds)
            p50 = statistics.median(r.ttft_percentile(0.5) for r in rounds) * 1000
            p95 = statistics.median(r.ttft_percentile(0.95) for r in rounds) * 1000
            row = f"| {clients} | {name} | {tok_s:.1f} | {p50:.0f} | {p95:.0f} |"
            for other in others:
                pairs = zip(rounds, results[other][clients], strict=True)
                ratio = statistics.median(a.tokens_per_s / b.tokens_per_s for a, b in pairs)
                row += f" {ratio:.2f}x |" if name == "ours" else " |"
            print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--only", choices=["ours", "theirs"], help="benchmark one server only")
    parser.add_argument("--no-theirs", action="store_true", help="leave out llama-cpp-python's server")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per client count and server, the servers taking turns"
    )
    parser.add_argument(
        "--llama-server", type=Path, help="also benchmark this llama.cpp llama-server binary (README: how to build it)"
    )
    parser.add_argument("--no-eos-bias", type=json.loads, default=DEFAULT_NO_EOS, help="e.g. '{\"1\": -100}'")
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(REPO))
        from server.model_source.local import demo_model

        args.model = demo_model()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        logdir = Path(tmp)
        servers: list[tuple[Server, str]] = []
        try:
            if args.only != "theirs":
                port = free_port()
                env = {
                    "GGUFSTACK_MODEL_PATH": str(args.model),
                    "GGUFSTACK_N_THREADS": str(args.threads),
                    "GGUFSTACK_N_CTX": str(args.n_ctx),
                    "GGUFSTACK_LOG_LEVEL": "warning",
                }
                argv = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port)]
                servers.append((start("ours", argv, env, port, logdir), "/health/ready"))
            if args.only != "ours" and not args.no_theirs:
                port = free_port()
                argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(args.model), "--host", HOST]
                argv += ["--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
                argv += ["--n_ctx", str(args.n_ctx), "--interrupt_requests", "False", "--verbose", "False"]
                servers.append((start("theirs", argv, {}, port, logdir), "/v1/models"))
            if args.llama_server is not None and args.only is None:
                port = free_port()
                slots = max(args.clients)
                argv = [str(args.llama_server), "-m", str(args.model), "--host", HOST, "--port", str(port)]
                argv += ["-t", str(args.threads), "-np", str(slots), "-c", str(args.n_ctx * slots)]
                servers.append((start("llama.cpp", argv, {}, port, logdir), "/health"))
            models = {}
            for server, ready_path in servers:
                wait_ready(server, ready_path)
                models[server.name] = model_id(server)
                asyncio.run(run_round(server, models[server.name], 1, 8, args.no_eos_bias))  # warm-up
            # One server at a time, so they never compete for the cores; taking turns round by round, so the
            # machine's drift in speed (10-20 % over minutes on shared VMs) falls on every server alike.
            results: dict[str, dict[int, list[Round]]] = {server.name: {} for server, _ in servers}
            for _ in range(args.repeat):
                for clients in args.clients:
                    for server, _ in servers:
                        rnd = asyncio.run(
                            run_round(server, models[server.name], clients, args.max_tokens, args.no_eos_bias)
                        )
                        print(f"{server.name}: {clients} clients: {rnd.tokens_per_s:.1f} tok/s", file=sys.stderr)
                        results[server.name].setdefault(clients, []).append(rnd)
        finally:
            for server, _ in servers:
                server.stop()
    print_table(results)


if __name__ == "__main__":
    main()
