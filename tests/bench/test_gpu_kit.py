"""The GPU kit (bench/gpu): its packing, and its dry run, which is every step of the GPU run but CUDA, on this CPU.

The dry run proves, before a GPU machine is lent: the synthetic models (the demo stand-in and the tiny shape) load and
generate; the smoke step's ways of loading run, and a rehearsed crash that needs an import (`--rehearse-crash`) is
narrowed down to that import and its native stack named; tests/server/engine/test_gpu_offload.py runs under the
stand-in; our server and our engine in a plain process start on a synthetic model, stream at 1 and 2 clients and the
results files are written. With CPU builds of llama-server and llama-quantize cached (`python bench/gpu/run.py
--build-cpu-tools --bundle DIR --out DIR`, once, ~40 minutes on 2 cores), it also quantizes and benchmarks
llama-server; without them it says so. What it cannot prove: the CUDA build, the carried wheels installing on the
GPU machine's Python (a rehearsal with wheels for this Python can: `pack.py --python 3.11` and `run.py --bundle ...
--lib ...`), and anything measured on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.gpu import pack
from bench.gpu.common import cached_cpu_tools
from bench.gpu.pack import _keep, trimmed_sources
from bench.gpu.run import host_cpu

REPO = Path(__file__).resolve().parents[2]


def test_trimming_keeps_what_the_builds_read_and_drops_the_rest() -> None:
    kept = [
        "CMakeLists.txt",
        "ggml/src/ggml-cuda/mmq.cu",
        "ggml/src/ggml-cuda/template-instances/fattn-mma-f16-instance-ncols1_1-ncols2_16.cu",
        "ggml/src/ggml-cpu/ggml-cpu.c",
        "tools/server/server.cpp",
        "tools/quantize/quantize.cpp",
        "models/ggml-vocab-llama-bpe.gguf",
    ]
    dropped = [
        "docs/build.md",
        "ggml/src/ggml-vulkan/ggml-vulkan.cpp",
        "ggml/src/ggml-metal/ggml-metal.m",
        "models/ggml-vocab-qwen2.gguf",
        "models/ggml-vocab-llama-bpe.gguf.inp",
        "tools/ui/src/app.html",
        "tests/test-backend-ops.cpp",
    ]
    assert [p for p in kept if not _keep(p)] == []
    assert [p for p in dropped if _keep(p)] == []


def test_long_names_keep_their_new_place_in_the_trimmed_tarball(tmp_path: Path) -> None:
    """A name over 100 characters travels in a PAX header, which tarfile writes back over a renamed member: the CUDA
    template instances were once left outside src/ and the CUDA build failed to find them."""
    sdist = tmp_path / "sdist.tar.gz"
    inner = "ggml/src/ggml-cuda/template-instances/fattn-mma-f16-instance-ncols1_1-ncols2_16-with-a-long-name.cu"
    source = tmp_path / "a.cu"
    source.write_text("// instance\n")
    with tarfile.open(sdist, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname=f"llama_cpp_python-0.3.36/vendor/llama.cpp/{inner}")
        tar.add(source, arcname="llama_cpp_python-0.3.36/llama_cpp/llama.py")
    trimmed_sources(sdist, tmp_path / "out.tar.xz")
    with tarfile.open(tmp_path / "out.tar.xz") as tar:
        assert sorted(tar.getnames()) == ["src/llama.cpp/" + inner, "src/llama_cpp/llama.py"]


def test_the_dry_run_passes_every_step_but_cuda(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "bench/gpu/run.py", "--dry-run", "--work", str(tmp_path), "--out", str(out)]
    argv += ["--rehearse-crash", "jsonschema"]  # the server imports it; the engine does not
    argv += ["--engine-bench", "always"]  # our engine in a plain process takes turns too (tests/bench/test_gpu_measure)
    done = subprocess.run(
        [*argv, "--clients", "1", "2"], cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert results["machine"]["cpu"] == host_cpu(Path("/proc/cpuinfo").read_text())
    assert {name: step["status"] for name, step in steps.items()} == {
        "env": "ok",
        "install": "skipped",
        "native trace": "ok",
        "models": "ok",
        "quantize": "ok" if cached_cpu_tools() else "skipped",
        "build": "skipped",
        "smoke": "ok",
        "tests": "ok",
        "bench tiny": "ok",
    }
    smoke = steps["smoke"]
    loads = (
        "raw",
        "raw-max",
        "raw-callback",
        "raw-no-mmap",
        "ours",
        "ours-thread",
        "ours-thread-64m",
        "ours-after:gguf",
    )
    for variant in loads:
        assert smoke[variant]["ok"], smoke[variant]["tail"]
    assert any("libllama" in library for library in smoke["ours"]["libraries"])
    # The rehearsed crash: a signal, found by bisection over the server's imports, its stack named in libllama.
    assert smoke["ours-after:server.api.app"]["exit"] == -11, smoke["ours-after:server.api.app"]["tail"]
    assert smoke["bisect"]["culprit"] == "jsonschema", smoke["bisect"]
    assert smoke["bisect"]["targets"] == ["server.api.app"]
    stack = results["native_stacks"]["smoke-ours-after-server.api.app.log"][0]
    assert "libllama.so: llama_hparams::n_layer() const" in stack, stack
    report = (out / "results.md").read_text()
    assert "the load crashes once jsonschema is imported" in report
    assert "libllama.so: llama_hparams::n_layer() const" in report
    assert steps["tests"]["counts"].get("passed", 0) >= 1
    assert not {"failure", "error"} & set(steps["tests"]["counts"])
    rows = results["bench"]["tiny"]["result"]["summary"]
    servers = {"ours", "ours-engine", "llama.cpp"} if cached_cpu_tools() else {"ours", "ours-engine"}
    assert {(row["clients"], row["server"]) for row in rows} == {(n, s) for n in (1, 2) for s in servers}
    assert all(row["tok_s"] > 0 for row in rows)
    assert "| 2 | ours |" in report
    assert "| 2 | ours-engine |" in report and "ours-engine: our engine in a plain process, no HTTP" in report


def test_the_host_cpu_is_named_with_its_amx_flags() -> None:
    # Two processors of a Sapphire Rapids Xeon, cut short: the first one's model and flags are the machine's.
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8 avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f amx_tile\n"
    )
    amx = ["amx_bf16", "amx_int8", "amx_tile"]
    assert host_cpu(cpuinfo) == {"model": "Intel(R) Xeon(R) Platinum 8480+", "amx": amx}
    assert host_cpu("processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu avx2\n")["amx"] == []
    assert host_cpu("") == {"model": "?", "amx": []}


@pytest.mark.skipif(cached_cpu_tools() is None, reason="no cached CPU build of llama-server and llama-quantize")
def test_the_cached_quantizer_runs_without_the_build_tree() -> None:
    tools = cached_cpu_tools()
    assert tools is not None
    done = subprocess.run([str(tools / "llama-quantize"), "--help"], capture_output=True, text=True)
    assert "usage" in (done.stdout + done.stderr).lower()


def test_the_wheels_are_downloaded_with_a_python_that_has_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from uv's environment (no pip) with that environment first on PATH, the packer finds a pip further on."""
    folders = []
    for name, status in (("uv-env", 1), ("system", 0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "python3").write_text(f"#!/bin/sh\nexit {status}\n")
        (folder / "python3").chmod(0o755)
        folders.append(str(folder))
    monkeypatch.setattr(pack.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", os.pathsep.join(folders))
    assert pack.python_with_pip() == f"{folders[1]}/python3"
    monkeypatch.setenv("PATH", folders[0])
    with pytest.raises(SystemExit, match="no Python with pip"):
        pack.python_with_pip()
