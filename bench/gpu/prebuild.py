"""The kit's CUDA build, made ahead on a machine without a GPU, so that a GPU loan need not spend its minutes building.

    uv run --no-sync python bench/gpu/prebuild.py --bundle .gpukit   # once; then pack.py carries it

Compiling CUDA needs no GPU, only the toolkit: NVIDIA publishes its parts as wheels on PyPI, at the exact version the
GPU machines have (nvcc 13.0.88, `TOOLKIT`). They are unpacked into a toolkit tree with the links a package manager's
toolkit has, and a stub driver library to link against (the driver is the GPU machine's: only its name, `libcuda.so.1`,
is recorded). The build is the GPU run's (same sources, same CMake options) for one architecture, `ARCH` (H100 and
H200 both), with two differences: the CPU code is built for x86-64 with AVX2 instead of for the building machine's CPU
(`GGML_NATIVE=OFF`), and the libraries find each other beside themselves (`$ORIGIN`), so the folder can travel.
llama-server and llama-quantize are built from the same tree.

On the GPU machine, `prebuilt()` unpacks it, puts that machine's CUDA libraries (cuBLAS, the runtime) on the loader's
path, and keeps it only if `llama-server --list-devices` lists a CUDA device; otherwise the run builds as before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu.common import (  # noqa: E402
    CACHE,
    CMAKE_FLAGS,
    CUDA_FLAGS,
    cmake_build,
    llama_cpp_version,
    unpack_sources,
)

ARCH = "90"
ARCHIVE = f"cuda-sm{ARCH}.tar.xz"
# The GPU machines' nvcc, and the parts of the same release a build reads (CCCL's headers, cuBLAS and the runtime to
# link against, the compiler's front and back ends).
TOOLKIT = {
    "nvidia-cuda-nvcc": "13.0.88",
    "nvidia-nvvm": "13.0.88",
    "nvidia-cuda-crt": "13.0.88",
    "nvidia-cuda-runtime": "13.0.88",
    "nvidia-cuda-cccl": "13.0.85",
    "nvidia-cublas": "13.0.2.14",
}
PREBUILT_FLAGS = [
    *(flag for flag in CUDA_FLAGS if not flag.startswith("-DGGML_NATIVE=")),
    "-DGGML_NATIVE=OFF",
    f"-DCMAKE_CUDA_ARCHITECTURES={ARCH}",
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
    # What travels is the xz archive, which packs the kernels smaller than nvcc's own compression followed by xz
    # (the call's carry limit is what this build must fit).
    "-DGGML_CUDA_COMPRESSION_MODE=none",
]


def prebuilt_dir() -> Path:
    return CACHE / f"cuda-sm{ARCH}-{llama_cpp_version()}"


def cached_prebuilt() -> Path | None:
    folder = prebuilt_dir()
    return folder if (folder / "BUILD.json").is_file() else None


def toolkit(root: Path, python: str) -> Path:
    """The toolkit tree under `root` (downloaded and arranged once); returns its top, where `bin/nvcc` is."""
    top = root / "cu13"
    if (top / "lib" / "stubs" / "libcuda.so").is_file():
        return top
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    argv = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
    for platform in ("manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64"):
        argv += ["--platform", platform]
    subprocess.run([*argv, *(f"{name}=={version}" for name, version in TOOLKIT.items())], check=True)
    unpacked = root / "unpacked"
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)  # noqa: S202 - NVIDIA's wheels, at pinned versions
    shutil.rmtree(top, ignore_errors=True)
    (unpacked / "nvidia" / "cu13").rename(top)
    arrange(top)
    driver_stub(top / "include", top / "lib" / "stubs" / "libcuda.so")
    for spent in (wheels, unpacked):
        shutil.rmtree(spent)
    return top


def arrange(top: Path) -> None:
    """The links nvcc's profile and CMake's FindCUDAToolkit look for, which the wheels leave out."""
    for folder in (top / "bin", top / "nvvm" / "bin"):
        for tool in folder.iterdir():
            if tool.is_file():
                tool.chmod(0o755)  # zip archives keep no modes
    (top / "lib64").symlink_to("lib")
    targets = top / "targets" / "x86_64-linux"
    targets.mkdir(parents=True)
    for name, to in (("include", "../../include"), ("lib", "../../lib"), ("lib64", "../../lib")):
        (targets / name).symlink_to(to)
    for versioned in (top / "lib").glob("lib*.so.*"):
        plain = versioned.with_name(versioned.name.split(".so.")[0] + ".so")
        if not plain.exists():
            plain.symlink_to(versioned.name)


def driver_stub(include: Path, out: Path) -> None:
    """A library named `libcuda.so.1` defining every function `cuda.h` declares, under the names its macros give
    them (`cuMemGetInfo` is `cuMemGetInfo_v2`): what the toolkit's own stub is, and the wheels lack."""
    preprocess = ["gcc", "-E", "-P", f"-I{include}", "-"]
    header = subprocess.run(preprocess, input="#include <cuda.h>\n", capture_output=True, text=True, check=True).stdout
    names = sorted(set(re.findall(r"\b(cu[A-Z]\w*)\s*\(", header)))
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.with_suffix(".c")
    source.write_text("".join(f"void {name}(void) {{}}\n" for name in names))
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(source)], check=True)
    # The name the libraries record, for the linker to find when it links the tools against them (-rpath-link).
    out.with_name("libcuda.so.1").unlink(missing_ok=True)
    out.with_name("libcuda.so.1").symlink_to(out.name)


def build(src: Path, top: Path, out: Path, log: Path, jobs: int) -> Path:
    """The libraries and the two tools, built with the toolkit at `top`, copied into `out` with what made them."""
    build_dir = out.with_name(out.name + "-build")
    env = dict(os.environ, PATH=f"{top / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    flags = [*PREBUILT_FLAGS, f"-DCMAKE_CUDA_COMPILER={top / 'bin' / 'nvcc'}", f"-DCUDAToolkit_ROOT={top}"]
    # The libraries' run path is only `$ORIGIN` (the GPU machine's CUDA is elsewhere): linking the tools, the linker
    # finds cuBLAS and the driver the libraries need in the toolkit tree.
    flags.append(f"-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,{top / 'lib'}:{top / 'lib' / 'stubs'}")
    cmake_build(src, build_dir, flags, log, jobs, env=env)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in sorted((build_dir / "bin").iterdir()):
        if ".so" in path.name or path.name in ("llama-server", "llama-quantize"):
            shutil.copy2(path, out / path.name, follow_symlinks=False)
    made = {"arch": ARCH, "toolkit": TOOLKIT, "cmake": [*CMAKE_FLAGS, *PREBUILT_FLAGS]}
    made["llama_cpp"] = llama_cpp_version()
    (out / "BUILD.json").write_text(json.dumps(made, indent=1))
    return out


def cuda_library_dirs() -> list[Path]:
    """Where this machine's CUDA toolkit keeps its libraries (cuBLAS, the runtime), beside the `nvcc` on PATH."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    top = Path(nvcc).resolve().parent.parent
    found = [top / "lib64", top / "targets" / "x86_64-linux" / "lib"]
    return [folder for folder in dict.fromkeys(found) if folder.is_dir()]


def listed_devices(output: str) -> list[str]:
    """The devices `llama-server --list-devices` lists ("CUDA0: NVIDIA H200 (...)"); none for "(none)"."""
    after = output.partition("Available devices:")[2]
    # Each device on its own indented line; what follows the list (other output) is not.
    return [line.strip() for line in after.splitlines() if line.startswith("  ") and line.strip() != "(none)"]


def prebuilt(archive: Path, into: Path, env: dict[str, str], arch: str, step: dict) -> Path | None:
    """The carried build unpacked into `into`, with `env` given the loader path it needs, if it is for this GPU's
    architecture and lists a CUDA device here; None otherwise (why is in `step`), and the run builds instead."""
    if arch != ARCH:
        step["status"] = "skipped"
        step["note"] = f"built for sm_{ARCH}, this GPU is sm_{arch}: building"
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    folder = into / archive.name.removesuffix(".tar.xz")
    step["build"] = json.loads((folder / "BUILD.json").read_text())
    loader = [str(d) for d in cuda_library_dirs()] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    trial = env | {"LD_LIBRARY_PATH": os.pathsep.join(loader)}
    try:
        done = subprocess.run(
            [str(folder / "llama-server"), "--list-devices"], env=trial, capture_output=True, text=True, timeout=60
        )
        listed, output, code = done.stdout, done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired:
        listed, output, code = "", "no answer in 60 s", None
    step["devices"] = devices = listed_devices(listed)
    if code != 0 or not any(device.startswith("CUDA") for device in devices):
        step["status"] = "failed"
        step["note"] = f"llama-server --list-devices (exit {code}) lists no CUDA device: building"
        step["output"] = output.splitlines()[-20:]
        return None
    env["LD_LIBRARY_PATH"] = trial["LD_LIBRARY_PATH"]
    step["note"] = f"the carried sm_{ARCH} build lists {devices[0]}: no build here"
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a folder pack.py wrote (for its sources)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    from bench.gpu.pack import python_with_pip

    work = CACHE / "prebuild"
    src = unpack_sources(args.bundle, work)
    top = toolkit(CACHE / "cuda-toolkit", python_with_pip())
    print(build(src / "llama.cpp", top, prebuilt_dir(), work / "build.log", args.jobs))


if __name__ == "__main__":
    main()
