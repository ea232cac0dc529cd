"""Structured outputs under load: 8 concurrent streaming chats with a `json_schema` response format against the same
run unconstrained, on ggufstack's server and, when a binary is given, on llama.cpp's `llama-server`.

Every request asks for a person with a long biography, 128 tokens: the schema's minimum length keeps constrained
answers going to max_tokens, and the unconstrained round suppresses EOS, so both rounds produce the same tokens.
Prints aggregate completion tok/s per server and mode, and the ratios the issue sets targets for
(constrained/unconstrained ≥ 0.8, ours/llama.cpp ≥ 1.0). The minimum length makes the grammar refuse the model's
wish to close the string, so this run exercises the slow path (grammar over the whole vocabulary) more than
ordinary schemas do.

    uv run --no-sync python -m bench.structured_outputs [--llama-server PATH] [--threads 2] [--clients 8]
        [--same-sampling]

By default each server samples with its own defaults for what the request leaves out: ours with OpenAI's (the whole
distribution at temperature 0.7), llama-server with its own (top_k 40, top_p 0.95, min_p 0.05, which sample from far
fewer candidates). `--same-sampling` sends llama-server's settings to both, so the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(REPO))
        from server.model_source.local import demo_model

        args.model = demo_model()
    rows: dict[tuple[str, str], float] = {}
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
        # One server at a time, so they never compete for the cores.
        for name, argv, env, port, ready in plans:
            server = start(name, argv, env, port, Path(tmp))
            try:
                wait_ready(server, ready)
                model = model_id(server)
                sampling = LLAMA_SERVER_SAMPLING if args.same_sampling else {}
                asyncio.run(_round(server, model, 1, True, sampling))  # warm-up
                for mode in ("unconstrained", "json_schema"):
                    constrained = mode == "json_schema"
                    tokens, wall = asyncio.run(_round(server, model, args.clients, constrained, sampling))
                    rows[(name, mode)] = tokens / wall
                    print(f"{name} {mode}: {tokens} tokens in {wall:.1f} s", file=sys.stderr)
            finally:
                server.stop()
    print("\n| server | unconstrained tok/s | json_schema tok/s | constrained/unconstrained |\n|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in rows):
        free, bound = rows[(name, "unconstrained")], rows[(name, "json_schema")]
        print(f"| {name} | {free:.1f} | {bound:.1f} | {bound / free:.2f}x |")
    if ("llama.cpp", "json_schema") in rows:
        ratio = rows[("ours", "json_schema")] / rows[("llama.cpp", "json_schema")]
        print(f"\nours/llama.cpp with json_schema: {ratio:.2f}x")


if __name__ == "__main__":
    main()
