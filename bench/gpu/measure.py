"""One model's benchmark: our server against llama.cpp's `llama-server`, same GGUF, same slots and context, taking
turns round by round; cold start, VRAM, per-round throughput and TTFT, single-stream decode speed.

When our server fails to start (on the first GPU runs its process crashed loading the model where a plain engine
process did not), our engine in a plain process (`engine_bench.py`, contender "ours-engine") takes its turns instead,
so a loan still yields the engine's numbers: decode speed against the bandwidth limit, VRAM against the capacity
check. Its rounds have no HTTP in them, so its ratio to llama-server is not the server's."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Literal

import httpx

from bench.concurrency import HOST, Server, free_port, start
from bench.gpu.common import OURS

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Round:
    server: str
    clients: int
    max_tokens: int
    wall_s: float
    ttfts_s: list[float]
    decode_tok_s: list[float]  # each stream's tokens after its first, over the time they took

    @property
    def tok_s(self) -> float:
        return self.clients * self.max_tokens / self.wall_s

    def ttft_ms(self, q: float) -> float:
        ordered = sorted(self.ttfts_s)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Started:
    name: str
    cold_start_s: float
    vram_used_mib: int | None  # what the GPU's used memory grew by while this server started and warmed up
    log: str = ""


@dataclass
class ModelBench:
    model: str
    size_bytes: int
    n_ctx: int
    slots: int
    started: list[Started] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """Per client count and server: median tok/s and TTFT over the rounds, ours/theirs over rounds side by side."""
        rows = []
        by_key: dict[tuple[int, str], list[Round]] = {}
        for rnd in self.rounds:
            by_key.setdefault((rnd.clients, rnd.server), []).append(rnd)
        for (clients, server), rounds in sorted(by_key.items()):
            row = {
                "clients": clients,
                "server": server,
                "rounds": len(rounds),
                "tok_s": statistics.median(r.tok_s for r in rounds),
                "ttft_p50_ms": statistics.median(r.ttft_ms(0.5) for r in rounds),
                "ttft_p95_ms": statistics.median(r.ttft_ms(0.95) for r in rounds),
                "decode_tok_s_per_stream": statistics.median(statistics.median(r.decode_tok_s) for r in rounds),
            }
            theirs = by_key.get((clients, "llama.cpp"))
            if server in OURS and theirs:
                pairs = list(zip(rounds, theirs, strict=False))
                row["ours_over_llama_cpp"] = statistics.median(a.tok_s / b.tok_s for a, b in pairs)
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return asdict(self) | {"summary": self.summary()}


def gpu_used_mib() -> int | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True)
    try:
        return sum(int(v) for v in out.stdout.decode().split())
    except ValueError:
        return None


EngineBench = Literal["fallback", "always", "never"]


class EngineProcess:
    """Our engine in a plain process (engine_bench.py), one round per request line, as a contender of the rounds."""

    name = "ours-engine"

    def __init__(self, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.log = logdir / f"{self.name}.log"
        self._out = self.log.open("w")
        self.process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._out, text=True
        )
        self._answers: Queue[str | None] = Queue()
        self._reader = threading.Thread(target=self._read, name="engine-bench-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(("LOADED ", "READY ", "ROUND ")):
                self._answers.put(line)
            else:
                self._out.write(line)
                self._out.flush()
        self._answers.put(None)

    def answer(self, kind: str, timeout_s: float) -> dict:
        """The next `kind` line's JSON; RuntimeError with the log's tail if the process ended or said nothing."""
        try:
            line = self._answers.get(timeout=timeout_s)
        except Empty:
            line = None
        if line is None or not line.startswith(kind + " "):
            self._out.flush()
            code = self.process.poll()
            said = "exited with " + str(code) if code is not None else f"gave no {kind} in {timeout_s:.0f} s"
            raise RuntimeError(f"{self.name} {said}:\n{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads(line.split(" ", 1)[1])

    def play(self, clients: int, max_tokens: int, bias: dict, timeout_s: float = 600) -> Round:
        assert self.process.stdin is not None
        ask = {"clients": clients, "max_tokens": max_tokens, "logit_bias": bias}
        self.process.stdin.write(json.dumps(ask) + "\n")
        self.process.stdin.flush()
        got = self.answer("ROUND", timeout_s)
        if any(finish != "length" for finish in got["finishes"]):
            raise RuntimeError(f"{self.name}: a stream ended early: {got['finishes']}")
        return Round(self.name, clients, max_tokens, got["wall_s"], got["ttfts_s"], got["decode_tok_s"] or [0.0])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)  # it writes the process's last words to the log
        self._out.close()


def engine_argv(model: Path, *, n_ctx: int, slots: int, threads: int) -> list[str]:
    from server.config.settings import Settings

    n_batch = Settings.model_fields["n_batch"].default  # the server's, so both of ours batch alike
    argv = [sys.executable, "-X", "faulthandler", str(REPO / "bench/gpu/engine_bench.py"), str(model)]
    return [*argv, "--n-ctx", str(n_ctx), "--slots", str(slots), "--threads", str(threads), "--n-batch", str(n_batch)]


_QUIET: list[object] = []  # the no-op log callback, kept alive while llama.cpp holds it


def end_of_generation_tokens(model: Path) -> dict[str, float]:
    """A logit bias that pushes every end-of-generation token down, so each request runs to max_tokens."""
    import llama_cpp

    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda *_: None))
    llama_cpp.llama_log_set(_QUIET[0], ctypes.c_void_p(0))
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    ptr = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(ptr)
    eog = [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    llama_cpp.llama_model_free(ptr)
    return {str(t): -100.0 for t in eog}


def wait_ready(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(
        f"{server.name} not ready after {timeout_s} s:\n{server.log.read_text(errors='replace')[-3000:]}"
    )


async def _stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float, int, str | None]:
    """TTFT, time from the first token to the last, tokens streamed, finish reason."""
    start = time.monotonic()
    first = last = None
    chunks, finish = 0, None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                if choice.get("text"):
                    last = time.monotonic()
                    first = first or last
                    chunks += 1
                finish = choice.get("finish_reason") or finish
    first = first or time.monotonic()
    return first - start, (last or first) - first, chunks, finish


async def run_round(server: Server, model_id: str, clients: int, max_tokens: int, bias: dict) -> Round:
    bodies = [
        {
            "model": model_id,
            "prompt": f"Story number {i}: once upon a time",
            "max_tokens": max_tokens,
            "temperature": 0,
            "logit_bias": bias,
            "stream": True,
        }
        for i in range(clients)
    ]
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.monotonic()
        results = await asyncio.gather(*(_stream(client, server.url, b) for b in bodies))
        wall = time.monotonic() - start
    if any(finish != "length" for *_, finish in results):
        raise RuntimeError(f"{server.name}: a stream ended early: {[r[-1] for r in results]}")
    # Streamed chunks can hold more than one token: the rate counts tokens generated, not chunks.
    decode = [(max_tokens - 1) / span for _, span, _, _ in results if span > 0]
    return Round(server.name, clients, max_tokens, wall, [r[0] for r in results], decode or [0.0])


def _model_id(server: Server) -> str:
    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]


def bench_model(
    model: Path,
    *,
    llama_server: Path | None,
    clients: list[int],
    repeat: int,
    max_tokens: int,
    n_ctx: int,
    threads: int,
    env: dict[str, str],
    logdir: Path,
    time_left: Callable[[], float],
    on_progress: Callable[[ModelBench], None],
    engine: EngineBench = "fallback",
) -> ModelBench:
    """Start llama-server, then ours (one after the other, so each one's VRAM is what the GPU's use grew by), and our
    engine alone if `engine` is "always", or "fallback" and ours failed to start; warm each up at the largest client
    count, then run the rounds: client counts in the order given, each repeated with the contenders taking turns,
    while time_left() allows another round as long as the last one of its kind."""
    slots = max(clients)
    result = ModelBench(model.name, model.stat().st_size, n_ctx, slots)
    bias = end_of_generation_tokens(model)
    contenders: list[Server | EngineProcess] = []
    model_ids: dict[str, str] = {}
    try:
        port_ours = free_port()
        ours_env = env | {
            "GGUFSTACK_MODEL_PATH": str(model),
            "GGUFSTACK_N_CTX": str(n_ctx),
            "GGUFSTACK_N_SLOTS": str(slots),
            "GGUFSTACK_N_THREADS": str(threads),
            "GGUFSTACK_MAX_QUEUE": str(slots * 2),
            "GGUFSTACK_LOG_LEVEL": "info",
        }
        argv = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port_ours)]
        launches = []
        if llama_server is not None:
            port = free_port()
            their_argv = [str(llama_server), "-m", str(model), "--host", HOST, "--port", str(port), "-t", str(threads)]
            their_argv += ["-np", str(slots), "-c", str(n_ctx * slots), "-ngl", "999"]
            launches.append(("llama.cpp", their_argv, env, port, "/health"))
        launches.append(("ours", argv, ours_env, port_ours, "/health/ready"))
        for name, server_argv, server_env, server_port, ready_path in launches:
            before = gpu_used_mib()
            began = time.monotonic()
            server = start(name, server_argv, server_env, server_port, logdir)
            try:
                wait_ready(server, ready_path, timeout_s=max(30.0, min(300.0, time_left())))
                cold = time.monotonic() - began
                model_ids[name] = _model_id(server)
                asyncio.run(run_round(server, model_ids[name], slots, 8, bias))
            except (
                RuntimeError,
                TimeoutError,
                httpx.HTTPError,
            ) as exc:  # one server failing leaves the other's numbers
                server.stop()
                result.failed[name] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                on_progress(result)
                continue
            contenders.append(server)
            result.started.append(Started(name, cold, _grown(before)))
            on_progress(result)
        if engine == "always" or (engine == "fallback" and "ours" in result.failed):
            before = gpu_used_mib()
            began = time.monotonic()
            argv = engine_argv(model, n_ctx=n_ctx, slots=slots, threads=threads)
            alone = EngineProcess(argv, os.environ | env, logdir)
            try:
                alone.answer("LOADED", timeout_s=max(30.0, min(300.0, time_left())))
                cold = time.monotonic() - began
                alone.answer("READY", timeout_s=max(30.0, min(300.0, time_left())))  # after its warm-up round
            except RuntimeError as exc:
                alone.stop()
                result.failed[alone.name] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
            else:
                contenders.append(alone)
                result.started.append(Started(alone.name, cold, _grown(before)))
            on_progress(result)
        last: dict[int, float] = {}
        for n in clients:
            for rep in range(repeat):
                for contender in contenders:
                    need = last.get(n, 5.0) * 1.5 + 2
                    if time_left() < need:
                        result.skipped.append(
                            f"{n} clients, round {rep + 1}, {contender.name}: {time_left():.0f} s left"
                        )
                        continue
                    began = time.monotonic()
                    if isinstance(contender, EngineProcess):
                        rnd = contender.play(n, max_tokens, bias)
                    else:
                        rnd = asyncio.run(run_round(contender, model_ids[contender.name], n, max_tokens, bias))
                    last[n] = max(last.get(n, 0.0), time.monotonic() - began)
                    result.rounds.append(rnd)
                    print(f"  {model.name} {contender.name} {n} clients: {rnd.tok_s:.1f} tok/s", file=sys.stderr)
                    on_progress(result)
    finally:
        for contender in contenders:
            contender.stop()
        for started, contender in zip(result.started, contenders, strict=False):
            started.log = contender.log.read_text(errors="replace")[-4000:]
    return result


def _grown(before: int | None) -> int | None:
    """What the GPU's used memory grew by since `before` (None without nvidia-smi)."""
    after = gpu_used_mib()
    return after - before if before is not None and after is not None else None


def smoke_llama_server(binary: Path, model: Path, logdir: Path) -> dict[str, object]:
    """Start llama-server on `model` with every layer on the GPU and ask for a few tokens."""
    port = free_port()
    argv = [str(binary), "-m", str(model), "--host", HOST, "--port", str(port), "-ngl", "999", "-c", "512"]
    server = start("smoke-llama-server", argv, {}, port, logdir)
    try:
        wait_ready(server, "/health", timeout_s=60)
        body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
        answer = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        return {"ok": True, "usage": answer.get("usage")}
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        return {"ok": False, "error": str(exc)[-2000:]}
    finally:
        server.stop()
