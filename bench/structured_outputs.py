"""Structured outputs under load: 8 concurrent streaming chats with a `json_schema` response format against the same
run unconstrained, on ggufstack's server and, when a binary is given, on llama.cpp's `llama-server`.

Every request asks for a person with a long biography, 128 tokens: the schema's minimum length keeps constrained
answers going to max_tokens, and the unconstrained round suppresses EOS, so both rounds produce the same tokens.
Prints aggregate completion tok/s per server and mode, and the ratios the issue sets targets for
(constrained/unconstrained ≥ 0.8, ours/llama.cpp ≥ 1.0). The minimum length makes the grammar refuse the model's
wish to close the string, so this run exercises the slow path (grammar over the whole vocabulary) more than
ordinary schemas do.

    uv run --no-sync python -m bench.structured_outputs [--llama-server PATH] [--threads 2] [--clients 8]
        [--same-sampling] [--repeat 5]

By default each server samples with its own defaults for what the request leaves out: ours with OpenAI's (the whole
distribution at temperature 0.7), llama-server with its own (top_k 40, top_p 0.95, min_p 0.05, which sample from far
fewer candidates). `--same-sampling` sends llama-server's settings to both, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.concurrency import DEFAULT_NO_EOS, HOST, REPO, Server, free_port, model_id, start, wait_ready

# Long enough that every answer runs to max_tokens in both rounds, so the ratio is the grammar's cost per token alone
# (short constrained answers would also pay more prefill per token).
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "role": {"enum": ["admin", "user", "guest"]},
        "biography": {"type": "string", "minLength": 1000},
    },
    "required": ["name", "role", "biography"],
    "additionalProperties": False,
}


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> int:
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return tokens


# llama-server's defaults for what a request leaves out; --same-sampling asks both servers for them.
LLAMA_SERVER_SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05}


async def _round(
    server: Server, model: str, clients: int, constrained: bool, sampling: dict[str, float]
) -> tuple[int, float]:
    bodies = []
    for i in range(clients):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Invent person number {i} as JSON."}],
            "max_tokens": 128,
            "temperature": 0.7,
            "seed": i,
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampling,
        }
        if constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
        else:
            body["logit_bias"] = DEFAULT_NO_EOS
        bodies.append(body)
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.monotonic()
        tokens = await asyncio.gather(*(_one(client, server.url, b) for b in bodies))
        return sum(tokens), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the demo model)")
    parser.add_argument("--llama-server", type=Path, help="a llama.cpp llama-server binary to compare with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--same-sampling", action="store_true", help="send llama-server's sampling defaults to both")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per server and mode, the servers taking turns")
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(REPO))
        from server.model_source.local import demo_model

        args.model = demo_model()
    sampling = LLAMA_SERVER_SAMPLING if args.same_sampling else {}
    modes = ("unconstrained", "json_schema")
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        plans = []
        port = free_port()
        env = {"GGUFSTACK_MODEL_PATH": str(args.model), "GGUFSTACK_N_THREADS": str(args.threads)}
        env |= {"GGUFSTACK_N_CTX": "1024", "GGUFSTACK_N_SLOTS": str(args.clients), "GGUFSTACK_LOG_LEVEL": "warning"}
        plans.append(
            ("ours", [sys.executable, "-m", "server", "serve", "--port", str(port)], env, port, "/health/ready")
        )
        if args.llama_server:
            port = free_port()
            argv = [
                str(args.llama_server),
                "-m",
                str(args.model),
                "-t",
                str(args.threads),
                "-c",
                str(1024 * args.clients),
            ]
            argv += ["-np", str(args.clients), "--host", HOST, "--port", str(port)]
            plans.append(("llama.cpp", argv, {}, port, "/health"))
        # All started, benchmarked one at a time (an idle server takes no CPU), taking turns round by round so the
        # machine's drift over minutes falls on every server alike.
        servers = [start(name, argv, env, port, Path(tmp)) for name, argv, env, port, _ in plans]
        try:
            models = {}
            for server, (*_, ready) in zip(servers, plans, strict=True):
                wait_ready(server, ready)
                models[server.name] = model_id(server)
                for mode in modes:  # warm-up: every prompt and grammar seen once
                    asyncio.run(_round(server, models[server.name], args.clients, mode == "json_schema", sampling))
            for _ in range(args.repeat):
                for server in servers:
                    for mode in modes:
                        round_ = _round(server, models[server.name], args.clients, mode == "json_schema", sampling)
                        tokens, wall = asyncio.run(round_)
                        rates.setdefault((server.name, mode), []).append(tokens / wall)
                        print(f"{server.name} {mode}: {tokens} tokens in {wall:.1f} s", file=sys.stderr)
        finally:
            for server in servers:
                server.stop()
    _report(rates)


def _report(rates: dict[tuple[str, str], list[float]]) -> None:
    """Medians over the rounds; each ratio is the median of the ratios of rounds run side by side."""

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    print("\n| server | unconstrained tok/s | json_schema tok/s | constrained/unconstrained |\n|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rates):
        free, bound = rates[(name, "unconstrained")], rates[(name, "json_schema")]
        print(
            f"| {name} | {statistics.median(free):.1f} | {statistics.median(bound):.1f} | {ratio(bound, free):.2f}x |"
        )
    if ("llama.cpp", "json_schema") in rates:
        ours, theirs = rates[("ours", "json_schema")], rates[("llama.cpp", "json_schema")]
        each = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
        print(f"\nours/llama.cpp with json_schema: {ratio(ours, theirs):.2f}x (rounds: {each})")


if __name__ == "__main__":
    main()
