"""Pack everything the GPU run needs into one folder that travels to a GPU machine with no package registry.

    uv run --no-sync python bench/gpu/pack.py [--out .gpukit] [--sdist PATH] [--no-wheels]

The folder holds:
- `llama.cpp.tar.xz`: the llama.cpp sources the locked llama-cpp-python sdist vendors, trimmed to what a build of
  the shared library, `llama-server` and `llama-quantize` reads (no other backends, docs, tests, web UI sources or
  vocabulary test files; one vocabulary GGUF kept for the synthetic models), and the sdist's pure-Python `llama_cpp`
  package, which loads whatever library `LLAMA_CPP_LIB_PATH` names.
- `repo.tar.gz`: this checkout's tracked files as they are in the working tree (the server, tests and this kit).
- `wheels/`: CPython 3.12 manylinux wheels of the server's runtime dependencies (and the few test plugins) that the
  GPU machine's image lacks, at the versions uv.lock pins.
- `smollm2-vocab.gguf`: the demo model's tokenizer and chat template without its weights, so the CUDA tests can run
  on a stand-in with the demo model's shape (the real file is 98 MB, more than a call may carry).
- `llama-quantize`, when a CPU build of it is cached (`bench/gpu/run.py --build-cpu-tools`): the GPU run quantizes
  with it while the CUDA build runs, instead of waiting for the fresh one.
- `cuda-sm90.tar.xz`, when the CUDA build is made ahead (`bench/gpu/prebuild.py`) and fits the carry limit: the GPU
  run uses it instead of building, if it lists a CUDA device there.
- `go.sh`: the one command the GPU machine runs (`bash .gpukit/go.sh`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu.common import CACHE, cached_cpu_tools  # noqa: E402
from bench.gpu.prebuild import ARCHIVE, cached_prebuilt  # noqa: E402

# Python packages the GPU machine's image already has (its image's list; importing them there works). Anything the
# server imports that is not here travels as a wheel.
PRESENT = {
    "annotated-doc", "certifi", "charset-normalizer", "click", "h11", "httpcore", "httpx", "idna",
    "jinja2", "markdown-it-py", "markupsafe", "mdurl", "numpy", "packaging", "pluggy", "prometheus-client",
    "pygments", "pytest", "pyyaml", "requests", "rich", "shellingham", "six", "typer",
    "urllib3", "uvloop", "iniconfig", "protobuf", "wrapt", "zipp", "psutil", "attrs",
}  # fmt: skip
# What the server imports at start and the CUDA tests import (their conftest reaches the Blob test support).
NEEDED = [
    "fastapi", "starlette", "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "typing-inspection",
    "annotated-types", "sse-starlette", "uvicorn", "httptools", "gguf", "diskcache", "psycopg", "psycopg-binary",
    "psycopg-pool", "redis", "azure-core", "azure-storage-blob", "azure-identity", "azure-keyvault-secrets",
    "isodate", "cryptography", "cffi", "pycparser", "msal", "msal-extensions", "pyjwt", "tqdm", "pytest-asyncio",
    "opentelemetry-api", "typing-extensions", "anyio", "jsonschema", "jsonschema-specifications", "referencing",
    "rpds-py",
]  # fmt: skip
# What one device call carries: the bundle and the working tree together.
CARRY_LIMIT = 64 * 2**20
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]

# Paths under the sdist's vendor/llama.cpp that no CPU or CUDA build of the library and the two tools reads.
_DROP_DIRS = (
    "docs/", "media/", ".github/", ".devops/", "benches/", "tests/", "examples/", "pocs/", "gguf-py/", "conversion/",
    "requirements/", "skills/", "ci/", "tools/ui/src/", "tools/ui/tests/", "tools/ui/static/", "tools/server/tests/",
    "tools/server/bench/", "tools/mtmd/tests/",
)  # fmt: skip
_OTHER_BACKENDS = (
    "sycl", "vulkan", "opencl", "metal", "cann", "hexagon", "webgpu", "openvino", "et", "virtgpu", "musa", "hip",
    "zdnn", "zendnn", "rpc", "blas", "kompute",
)  # fmt: skip
VOCAB = "ggml-vocab-llama-bpe.gguf"


def _keep(rel: str) -> bool:
    """Whether a path inside vendor/llama.cpp goes into the trimmed tree."""
    if rel.startswith("models/"):
        return rel in ("models/", f"models/{VOCAB}")
    if any(rel.startswith(d) for d in _DROP_DIRS):
        return False
    return not any(rel.startswith(f"ggml/src/ggml-{name}/") for name in _OTHER_BACKENDS)


def locked_sdist() -> tuple[str, str, str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    (entry,) = (p for p in lock["package"] if p["name"] == "llama-cpp-python")
    return entry["version"], entry["sdist"]["url"], entry["sdist"]["hash"].removeprefix("sha256:")


def fetch_sdist() -> Path:
    """The locked sdist, downloaded once into the cache and checked against uv.lock's hash."""
    version, url, digest = locked_sdist()
    path = CACHE / "sdist" / url.rsplit("/", 1)[-1]
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"==> downloading llama-cpp-python {version} sdist", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=300) as response:  # noqa: S310 - the locked URL
        data = response.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise SystemExit(f"error: the downloaded sdist's sha256 is not the one uv.lock pins ({digest})")
    path.write_bytes(data)
    return path


def trimmed_sources(sdist: Path, out: Path) -> tuple[int, int]:
    """Write the trimmed llama.cpp and the `llama_cpp` package as `src/llama.cpp/...` and `src/llama_cpp/...`."""
    kept = dropped = 0
    with (
        tarfile.open(sdist) as src,
        lzma.open(out, "wb", preset=6) as xz,
        tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            parts = member.name.split("/", 1)
            rel = parts[1] if len(parts) > 1 else ""
            if rel.startswith("vendor/llama.cpp/"):
                inner = rel.removeprefix("vendor/llama.cpp/")
                if not _keep(inner + ("/" if member.isdir() else "")):
                    dropped += member.size
                    continue
                name = f"src/llama.cpp/{inner}"
            elif rel.startswith("llama_cpp/") and "/lib/" not in rel:
                name = f"src/{rel}"
            else:
                continue
            kept += member.size
            # A long name travels in the member's PAX header, which tarfile writes back over a new name: drop it.
            member.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in ("path", "linkpath")}
            member.name = name
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return kept, dropped


def repo_archive(out: Path) -> None:
    """The checkout's tracked files as they are now (uncommitted edits included)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(out, "w:gz") as tar:
        for name in files.decode().split("\0"):
            path = REPO / name
            if name and path.is_file() and not name.startswith(("infra/", "stacks/", "images/")):
                tar.add(path, arcname=f"repo/{name}")


def locked_versions(names: list[str]) -> dict[str, str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"]}
    missing = [n for n in names if n not in versions]
    if missing:
        raise SystemExit(f"error: uv.lock has no {', '.join(missing)}")
    return {n: versions[n] for n in names}


def python_with_pip() -> str:
    """A Python that has pip: this one, else the first `python3` on PATH that has it (uv's environments have none,
    and one may come first on PATH); any pip downloads wheels for another Python."""
    if importlib.util.find_spec("pip"):
        return sys.executable
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "python3"
        if (
            candidate.is_file()
            and subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True).returncode == 0
        ):
            return str(candidate)
    raise SystemExit("error: no Python with pip on PATH to download the wheels with (apt-get install python3-pip)")


def download_wheels(out: Path, python: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    wanted = [n for n in dict.fromkeys(NEEDED) if n not in PRESENT]
    argv = [python_with_pip(), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version"]
    argv += [python, "--implementation", "cp", "-d", str(out)]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    pinned = [f"{n}=={v}" for n, v in locked_versions(wanted).items()]
    subprocess.run([*argv, *pinned], check=True)


GO_SH = """#!/usr/bin/env bash
# The GPU machine's one command: unpack this checkout's copy and run the kit against the bundle beside it.
set -u
BUNDLE="$(cd "$(dirname "$0")" && pwd)"
WORK="${GPUKIT_WORK:-/tmp/gpukit}"
mkdir -p "$WORK" && tar -xzf "$BUNDLE/repo.tar.gz" -C "$WORK"
export PYTHONUNBUFFERED=1 PATH="$PATH:/usr/local/cuda/bin"
exec python3 "$WORK/repo/bench/gpu/run.py" --bundle "$BUNDLE" --work "$WORK" --out "${OUT:-$WORK/out}" "$@"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".gpukit")
    parser.add_argument("--sdist", type=Path, help="the llama-cpp-python sdist (default: download the locked one)")
    parser.add_argument("--no-wheels", action="store_true", help="leave the wheels out (the CPU dry run needs none)")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version, for the wheels")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sdist = args.sdist or fetch_sdist()
    kept, dropped = trimmed_sources(sdist, out / "llama.cpp.tar.xz")
    print(f"==> llama.cpp sources: kept {kept / 2**20:.1f} MiB, dropped {dropped / 2**20:.1f} MiB", file=sys.stderr)
    repo_archive(out / "repo.tar.gz")
    if not args.no_wheels:
        download_wheels(out / "wheels", args.python)
    from bench.synthetic_gguf import vocab_only
    from server.model_source.local import demo_model

    vocab_only(demo_model(), out / "smollm2-vocab.gguf")
    tools = cached_cpu_tools()
    if tools is not None:
        shutil.copy2(tools / "llama-quantize", out / "llama-quantize")
    (out / "go.sh").write_text(GO_SH)
    carry_prebuilt(out, cached_prebuilt())
    total = bundle_bytes(out)
    print(f"==> {out}: {total / 2**20:.1f} MiB", file=sys.stderr)


def bundle_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def working_tree_bytes() -> int:
    """What the device tool sends besides the bundle: the tracked files and those untracked that git does not ignore."""
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    names = subprocess.run(listed, cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO / name).stat().st_size for name in names if name and (REPO / name).is_file())


def carry_prebuilt(out: Path, built: Path | None, limit: int | None = None) -> bool:
    """Put the CUDA build made ahead into the bundle, unless there is none or the bundle would pass `limit`: a call
    carries 64 MiB with the working tree, and a bundle the device tool refuses is no bundle at all."""
    archive = out / ARCHIVE
    archive.unlink(missing_ok=True)  # an earlier pack's
    if built is None:
        print("==> no CUDA build made ahead (bench/gpu/prebuild.py): the GPU run builds", file=sys.stderr)
        return False
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(built, arcname=ARCHIVE.removesuffix(".tar.xz"))
    total = bundle_bytes(out)
    if limit is None:
        limit = CARRY_LIMIT - working_tree_bytes() - 2**20  # a MiB to spare: the tree may grow before the call
    if total > limit:
        archive.unlink()
        print(f"==> left out the CUDA build made ahead: the bundle would be {total / 2**20:.1f} MiB", file=sys.stderr)
        return False
    print(f"==> the CUDA build made ahead: {archive.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    return True


if __name__ == "__main__":
    io.DEFAULT_BUFFER_SIZE = 1 << 20
    main()
