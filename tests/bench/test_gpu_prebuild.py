"""The CUDA build made ahead (bench/gpu/prebuild.py): the toolkit tree it arranges from NVIDIA's wheels, its driver
stub, its packing, and how the GPU run takes it or builds instead. The build itself needs NVIDIA's wheels (about
450 MB) and the better part of an hour on 2 cores: it is made by hand (bench/gpu/README.md), not here."""

from __future__ import annotations

import ctypes
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from bench.gpu import pack, prebuild
from bench.gpu.common import CUDA_FLAGS

REPO = Path(__file__).resolve().parents[2]
LISTED = "Available devices:\n  CUDA0: NVIDIA H200 (143167 MiB, 142600 MiB free)\n"


def test_the_driver_stub_is_libcuda_so_1_with_the_names_the_headers_macros_give(tmp_path: Path) -> None:
    include = tmp_path / "include"
    include.mkdir()
    (include / "cuda.h").write_text(
        "typedef int CUresult;\n"
        "#define cuMemGetInfo cuMemGetInfo_v2\n"
        "CUresult cuMemGetInfo(unsigned long *free, unsigned long *total);\n"
        "CUresult cuInit(unsigned int flags);\n"
        "int cudaNotADriverFunction(void);\n"
    )
    stub = tmp_path / "lib" / "stubs" / "libcuda.so"
    prebuild.driver_stub(include, stub)
    library = ctypes.CDLL(str(stub))
    assert library.cuInit and library.cuMemGetInfo_v2
    for absent in ("cuMemGetInfo", "cudaNotADriverFunction"):
        with pytest.raises(AttributeError):
            getattr(library, absent)
    dynamic = subprocess.run(["readelf", "-d", str(stub)], capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libcuda.so.1]" in dynamic
    assert (stub.parent / "libcuda.so.1").resolve() == stub.resolve()


def test_the_wheels_tree_gets_the_links_a_packaged_toolkit_has(tmp_path: Path) -> None:
    top = tmp_path / "cu13"
    for name in ("bin/nvcc", "nvvm/bin/cicc", "include/cuda.h", "lib/libcublas.so.13", "lib/libcudart.so.13"):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_text(name)
    prebuild.arrange(top)
    assert (top / "bin/nvcc").stat().st_mode & 0o111 and (top / "nvvm/bin/cicc").stat().st_mode & 0o111
    assert (top / "lib64/libcublas.so.13").read_text() == "lib/libcublas.so.13"
    assert (top / "lib/libcublas.so").read_text() == "lib/libcublas.so.13"
    assert (top / "lib/libcudart.so").read_text() == "lib/libcudart.so.13"
    assert (top / "targets/x86_64-linux/include/cuda.h").read_text() == "include/cuda.h"
    assert (top / "targets/x86_64-linux/lib64/libcudart.so").read_text() == "lib/libcudart.so.13"


def test_the_prebuilt_flags_are_the_gpu_runs_for_one_architecture_and_any_x86_64() -> None:
    flags = prebuild.PREBUILT_FLAGS
    assert "-DGGML_CUDA=ON" in flags and "-DBUILD_SHARED_LIBS=ON" in flags
    assert [f for f in flags if f.startswith("-DGGML_NATIVE")] == ["-DGGML_NATIVE=OFF"]
    assert f"-DCMAKE_CUDA_ARCHITECTURES={prebuild.ARCH}" in flags
    assert "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON" in flags


def test_the_native_gpu_build_leaves_out_the_amx_kernels() -> None:
    # llama.cpp's AMX kernels crash a process at its first matrix product on AMX Xeons (llama.cpp issue 20824; seen
    # on a 2-core dev machine of this project), and a GPU machine's host can be such a Xeon.
    assert {"-DCMAKE_C_FLAGS=-U__AMX_INT8__", "-DCMAKE_CXX_FLAGS=-U__AMX_INT8__"} <= set(CUDA_FLAGS)


def test_the_devices_llama_server_lists() -> None:
    assert prebuild.listed_devices(LISTED) == ["CUDA0: NVIDIA H200 (143167 MiB, 142600 MiB free)"]
    assert prebuild.listed_devices("ggml_cuda_init: failed\nAvailable devices:\n  (none)\n") == []
    assert prebuild.listed_devices("error while loading shared libraries: libcublas.so.13") == []


def carried(tmp_path: Path, server_prints: str, exit_code: int = 0) -> Path:
    """A bundle's prebuilt archive whose llama-server prints `server_prints` for --list-devices."""
    folder = tmp_path / "made" / "cuda-sm90"
    folder.mkdir(parents=True)
    (folder / "BUILD.json").write_text(json.dumps({"arch": prebuild.ARCH}))
    server = folder / "llama-server"
    server.write_text(f"#!/bin/sh\nprintf '%s' '{server_prints}'\necho \"LD=$LD_LIBRARY_PATH\" >&2\nexit {exit_code}\n")
    server.chmod(0o755)
    archive = tmp_path / "bundle" / prebuild.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(folder, arcname="cuda-sm90")
    return archive


def test_the_gpu_run_takes_the_carried_build_that_lists_a_cuda_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "lib64").mkdir()
    (cuda / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(prebuild.shutil, "which", lambda name: str(cuda / "bin" / "nvcc"))
    env = {"LD_LIBRARY_PATH": "/elsewhere", "PATH": "/usr/bin:/bin"}
    step: dict = {}
    folder = prebuild.prebuilt(carried(tmp_path, LISTED), tmp_path / "work", env, prebuild.ARCH, step)
    assert folder == tmp_path / "work" / "cuda-sm90"
    assert (folder / "llama-server").exists()
    # The machine's CUDA libraries first (cuBLAS is not carried), what was there after.
    assert env["LD_LIBRARY_PATH"] == f"{cuda / 'lib64'}:/elsewhere"
    assert step["devices"] == ["CUDA0: NVIDIA H200 (143167 MiB, 142600 MiB free)"]
    assert "no build here" in step["note"]


@pytest.mark.parametrize(
    ("prints", "exit_code", "arch"),
    [("Available devices:\n  (none)\n", 0, "90"), ("", 127, "90"), (LISTED, 0, "100")],
    ids=["no-cuda-device", "does-not-start", "another-architecture"],
)
def test_the_gpu_run_builds_when_the_carried_build_does_not_serve_this_gpu(
    tmp_path: Path, prints: str, exit_code: int, arch: str
) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    step: dict = {}
    assert prebuild.prebuilt(carried(tmp_path, prints, exit_code), tmp_path / "work", env, arch, step) is None
    assert "building" in step["note"]
    assert "LD_LIBRARY_PATH" not in env


def test_pack_carries_the_build_made_ahead_while_the_bundle_fits(tmp_path: Path) -> None:
    built = tmp_path / "cache" / "cuda-sm90-0.3.36"
    built.mkdir(parents=True)
    (built / "libggml-cuda.so").write_bytes(bytes(range(256)) * 4096)
    (built / "libggml-cuda.so.0").symlink_to("libggml-cuda.so")
    out = tmp_path / "bundle"
    out.mkdir()
    assert pack.carry_prebuilt(out, built)
    with tarfile.open(out / prebuild.ARCHIVE) as tar:
        assert sorted(tar.getnames()) == ["cuda-sm90", "cuda-sm90/libggml-cuda.so", "cuda-sm90/libggml-cuda.so.0"]
        assert tar.getmember("cuda-sm90/libggml-cuda.so.0").issym()
    # Too big for a call: left out, and the GPU run builds.
    (out / "repo.tar.gz").write_bytes(b"x" * 4096)
    assert not pack.carry_prebuilt(out, built, limit=4096 + 100)
    assert not (out / prebuild.ARCHIVE).exists()
    # None made: an earlier pack's archive does not stay behind.
    (out / prebuild.ARCHIVE).write_bytes(b"old")
    assert not pack.carry_prebuilt(out, None)
    assert not (out / prebuild.ARCHIVE).exists()


def test_the_bundle_may_weigh_what_the_working_tree_leaves_of_a_call() -> None:
    tree = pack.working_tree_bytes()
    assert (REPO / "server" / "__main__.py").stat().st_size < tree < pack.CARRY_LIMIT // 4
