"""The CPU image, built from images/Dockerfile.cpu as it is, run with its own entrypoint as its own user, and called.

Built by scripts/image.py (what `./dev image` runs): buildah, no daemon, stand-in base images where no registry
answers. The container runs under `buildah run --isolation chroot` (the only runtime that works without cgroup and
rlimit privileges), on the host's network, with the demo GGUF copied into its /models volume.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DEMO_MODEL_ID
from tests.support import smoke
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/ggufstack:cpu-test"

pytestmark = pytest.mark.skipif(
    shutil.which("buildah") is None or os.geteuid() != 0,
    reason="needs buildah, run as root (./dev test installs it wherever apt-get has it)",
)

_spec = importlib.util.spec_from_file_location("image", ROOT / "scripts" / "image.py")
image_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_script)


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


def _uv() -> str:
    return shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")


@pytest.fixture(scope="module")
def cpu_image() -> str:
    image_script.build(TAG, _uv())
    return TAG


def image_config(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]


@pytest.fixture
def container(cpu_image: str) -> Iterator[str]:
    name = buildah("from", "--pull=never", "--quiet", cpu_image)
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], check=False, capture_output=True)


@dataclass
class Running:
    base_url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def run_entrypoint(container: str, image: str, env: dict[str, str], log: Path) -> Iterator[Running]:
    """The image's ENTRYPOINT as the image's USER, like `docker run -e ...`; stopped with SIGTERM as Kubernetes does."""
    config = image_config(image)
    port = free_port()
    settings = {"GGUFSTACK_HOST": "127.0.0.1", "GGUFSTACK_PORT": str(port), **env}
    buildah("config", *(a for k, v in settings.items() for a in ("--env", f"{k}={v}")), container)
    command = ["buildah", "run", "--isolation", "chroot", "--user", config["User"], container, "--"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command + config["Entrypoint"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = Running(f"http://127.0.0.1:{port}", process, log)
    try:
        yield running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(running: Running, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"the container exited with {running.process.returncode}:\n{running.log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{running.base_url}/health/ready", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s:\n{running.log.read_text()[-4000:]}")


def server_uids(port: int) -> set[int]:
    listeners = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid]
    return {psutil.Process(c.pid).uids().real for c in listeners}


def test_the_image_serves_the_openai_sdk_as_its_own_user(
    cpu_image: str, container: str, demo_gguf: Path, tmp_path: Path
) -> None:
    buildah("copy", "--chown", "10001:10001", container, str(demo_gguf), f"/models/{DEMO_MODEL_ID}")
    env = {"GGUFSTACK_MODEL_PATH": f"/models/{DEMO_MODEL_ID}", "GGUFSTACK_EMBEDDING_POOLING": "mean"}
    with run_entrypoint(container, cpu_image, env, tmp_path / "container.log") as running:
        wait_ready(running)
        smoke.exercise(running.base_url, DEMO_MODEL_ID)
        assert server_uids(int(running.base_url.rsplit(":", 1)[1])) == {10001}


def test_the_image_is_lean_non_root_and_holds_only_the_server(cpu_image: str, container: str) -> None:
    config = image_config(cpu_image)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["ggufstack", "serve"]
    assert config["Healthcheck"]["Test"][-1].endswith("/health/live', timeout=4)")
    root = Path(buildah("mount", container))
    try:
        tools = ("gcc", "g++", "cc", "c++", "cmake", "make", "ld")
        assert [tool for tool in tools if (root / "usr/bin" / tool).exists()] == []
        app = sorted(p.name for p in (root / "app").iterdir())
        assert app == [".venv"], app
        site = next((root / "app/.venv/lib").glob("python3*/site-packages"))
        installed = {p.name for p in site.iterdir()}
        assert "server" in installed and "llama_cpp" in installed
        assert not {"infra", "tests", "stacks", "bench", "pytest", "openai", "pulumi"} & installed
    finally:
        subprocess.run(["buildah", "umount", container], check=False, capture_output=True)
    size = buildah("images", "--format", "{{.Size}}", cpu_image)
    print(f"\n{cpu_image}: {size}")
