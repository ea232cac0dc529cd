"""scripts/llama_wheel.py: the wheelhouse ./dev installs llama-cpp-python from."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("llama_wheel", ROOT / "scripts" / "llama_wheel.py")
llama_wheel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(llama_wheel)


def test_builds_from_the_sdist_uv_lock_pins() -> None:
    version, url, digest = llama_wheel.locked_sdist()
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (entry,) = (p for p in lock["package"] if p["name"] == "llama-cpp-python")
    assert version == entry["version"]
    assert url.endswith(f"llama_cpp_python-{version}.tar.gz")
    assert entry["sdist"]["hash"] == f"sha256:{digest}"


def test_cpu_and_cuda_builds_get_separate_wheelhouses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    plain = llama_wheel.flavour_dir(tmp_path, "0.3.36")
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    cuda = llama_wheel.flavour_dir(tmp_path, "0.3.36")
    assert plain.name == "0.3.36-no-amx"
    assert cuda != plain and cuda.parent == plain.parent


def test_an_sdist_that_does_not_match_the_lock_is_never_built(tmp_path: Path) -> None:
    tampered = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    tampered.write_bytes(b"not the locked sdist")
    out = tmp_path / "wheels"
    with pytest.raises(SystemExit, match=r"uv\.lock says"):
        llama_wheel.build(tampered.as_uri(), hashlib.sha256(b"the real one").hexdigest(), out, "uv-must-not-run")
    assert not out.exists()


def test_a_pin_names_the_locked_sdist_and_finds_the_same_wheel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images build from a pin file (so their compile layer depends on nothing else of the lock)."""
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.setattr("sys.argv", ["llama_wheel.py", "--pin"])
    llama_wheel.main()
    pin = capsys.readouterr().out.split()
    assert pin == list(llama_wheel.locked_sdist())
    wheel = tmp_path / "wheels" / f"{pin[0]}-no-amx" / "llama_cpp_python-x.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"")
    (tmp_path / "llama.pin").write_text(" ".join(pin))
    monkeypatch.setattr(
        "sys.argv", ["llama_wheel.py", "--from-pin", str(tmp_path / "llama.pin"), str(wheel.parents[1]), "uv"]
    )
    llama_wheel.main()
    assert capsys.readouterr().out.strip() == str(wheel)


def _amx_defined(flags: list[str]) -> bool:
    """Whether gcc, given `flags` and then -march for a CPU with AMX (as a native build there would), compiles
    llama.cpp's AMX kernels (they are behind `#if defined(__AMX_INT8__)`)."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc compiles llama-cpp-python for ./dev"
    macros = subprocess.run(
        [gcc, *flags, "-march=sapphirerapids", "-dM", "-E", "-x", "c", "-"],
        input="",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "#define __AMX_INT8__ 1" in macros


def test_every_build_leaves_out_the_amx_kernels_that_crash() -> None:
    env = llama_wheel.build_environment({"CFLAGS": "-O2", "PATH": "/usr/bin"})
    assert _amx_defined([]), "the check itself: -march for an AMX CPU defines the macro"
    for name in ("CFLAGS", "CXXFLAGS"):
        assert not _amx_defined(env[name].split()), f"{name} leaves it defined"
    assert env["CFLAGS"].startswith("-O2 "), "the caller's flags are kept"


def test_a_wheelhouse_from_before_the_amx_change_is_not_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    assert llama_wheel.flavour_dir(tmp_path, "0.3.36").name != "0.3.36-default"
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    before = hashlib.sha256(b"-DGGML_CUDA=on").hexdigest()[:10]
    assert llama_wheel.flavour_dir(tmp_path, "0.3.36").name != f"0.3.36-{before}"
