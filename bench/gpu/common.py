"""Paths and build commands the kit's packing, dry run and GPU run share."""

from __future__ import annotations

import os
import subprocess
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ggufstack" / "gpu-kit"
TOOLS = ("llama-server", "llama-quantize")
# The benchmark's contenders of ours: the server, and the engine in a plain process when the server cannot start.
OURS = ("ours", "ours-engine")

# One CMake configuration for both builds; the GPU build adds CUDA for the machine's architecture. No web UI (its
# assets would be downloaded), no tests or examples, no curl.
CMAKE_FLAGS = [
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
]  # fmt: skip
# The native build leaves out llama.cpp's AMX kernels, which crash at their first matrix product on the Xeons that
# have them, as a GPU machine's host can (scripts/llama_wheel.py does the same for ./dev); llama-server and ours alike.
NO_AMX_FLAGS = ["-DCMAKE_C_FLAGS=-U__AMX_INT8__", "-DCMAKE_CXX_FLAGS=-U__AMX_INT8__"]
CUDA_FLAGS = [
    "-DGGML_CUDA=ON", "-DGGML_CUDA_FA_ALL_QUANTS=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON", *NO_AMX_FLAGS,
]  # fmt: skip
# The cached CPU tools are static, so the packed llama-quantize runs on any x86-64 Linux without its libraries.
CPU_FLAGS = ["-DGGML_CUDA=OFF", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF"]


def llama_cpp_version() -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    (entry,) = (p for p in lock["package"] if p["name"] == "llama-cpp-python")
    return entry["version"]


def cpu_tools_dir() -> Path:
    return CACHE / f"cpu-tools-{llama_cpp_version()}"


def cached_cpu_tools() -> Path | None:
    """The folder holding CPU builds of llama-server and llama-quantize from the locked sources, if built."""
    folder = cpu_tools_dir()
    return folder if all((folder / tool).is_file() for tool in TOOLS) else None


# Datasheet memory bandwidth in bytes/s by what nvidia-smi names the card, the more specific names first: the limit
# one stream's decode is measured against (every weight byte read once per token). NVIDIA's H200, H100, A100, L40S
# and L4 datasheets.
DATASHEET_BANDWIDTH = (
    ("GH200", None),  # two memory kinds on one name: measured against the copy rate only
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100 80GB PCIe", 1.935e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),  # the 40 GB cards
    ("L40", 0.864e12),
    ("L4", 0.3e12),
)


def datasheet_bandwidth(gpu_name: str) -> float | None:
    """The card's datasheet memory bandwidth in bytes/s, or None for a card not listed."""
    for name, bandwidth in DATASHEET_BANDWIDTH:
        if name in gpu_name:
            return bandwidth
    return None


def run(argv: list[str], log: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    if log is None:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        return subprocess.run(argv, check=True, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]


def cmake_build(
    src: Path, build: Path, flags: list[str], log: Path, jobs: int, env: dict[str, str] | None = None
) -> None:
    run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS, *flags], log, env=env)
    targets = ["--target", "llama", "llama-server", "llama-quantize"]
    run(["cmake", "--build", str(build), *targets, f"-j{jobs}"], log, env=env)


def unpack_sources(bundle: Path, work: Path) -> Path:
    with tarfile.open(bundle / "llama.cpp.tar.xz") as tar:
        tar.extractall(work, filter="data")
    return work / "src"
