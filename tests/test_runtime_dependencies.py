"""Every third-party module the server imports is a runtime dependency of the package, declared directly.

The images install `uv sync --no-dev --extra server`: a module that reaches the dev environment only through a
dependency group (or only as another package's dependency) imports fine in every test and kills the deployed server.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The extras the images install besides the base dependencies (images/Dockerfile.*: `--extra server`).
IMAGE_EXTRAS = ("server",)


def imported_modules(source: str) -> set[str]:
    """Absolute names a file imports, at any depth, lazy imports in functions too.

    `from a.b import c` gives `a.b.c`: `c` may be a submodule that another distribution provides
    (`from opentelemetry import trace` is opentelemetry-api's).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top not in {"__future__", "server"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_runtime_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    return {_normalise(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in requirements}


@cache
def _top_level_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@cache
def _distribution_files(distribution: str) -> frozenset[str]:
    return frozenset(str(f) for f in importlib.metadata.distribution(distribution).files or ())


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides `module` (namespace packages such as `azure` have many candidates)."""
    parts = module.split(".")
    candidates = _top_level_owners().get(parts[0], [])
    for depth in range(len(parts), 0, -1):
        prefix = "/".join(parts[:depth])
        # The distribution holding the module's own file; another may hold only subpackages below it.
        owners = [c for c in candidates if {f"{prefix}/__init__.py", f"{prefix}.py"} & _distribution_files(c)]
        if len(owners) == 1:
            return owners[0]
    return candidates[0] if len(candidates) == 1 else None


def undeclared_imports(sources: dict[str, str]) -> list[str]:
    declared = declared_runtime_dependencies()
    problems = []
    for path, source in sorted(sources.items()):
        named: dict[str, str] = {}
        for module in sorted(filter(third_party, imported_modules(source))):
            distribution = distribution_of(module) or "no installed distribution"
            if _normalise(distribution) not in declared:
                named.setdefault(distribution, module)
        problems += [f"{path}: {distribution} (import {module})" for distribution, module in named.items()]
    return problems


def server_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "server").rglob("*.py"))}


def test_every_server_import_is_a_declared_runtime_dependency() -> None:
    assert undeclared_imports(server_sources()) == []


def test_a_dev_only_import_is_caught() -> None:
    # openai and pytest are dev-group packages; pyyaml is in the dev group and pulled in by others, never declared.
    problems = undeclared_imports({"server/x.py": "import openai\nfrom pytest import fixture\nimport yaml\n"})
    assert problems == [
        "server/x.py: openai (import openai)",
        "server/x.py: pytest (import pytest.fixture)",
        "server/x.py: PyYAML (import yaml)",
    ]


def test_a_transitive_dependency_is_not_enough() -> None:
    # starlette comes with fastapi, azure.core with azure-identity: a direct import needs its own declaration.
    assert undeclared_imports({"server/x.py": "import anyio\n"}) == ["server/x.py: anyio (import anyio)"]


def test_lazy_and_namespace_imports_are_seen() -> None:
    source = "def f():\n    from azure.storage.blob import BlobClient\n    import llama_cpp.llama_cpp\n"
    assert imported_modules(source) == {"azure.storage.blob.BlobClient", "llama_cpp.llama_cpp"}
    assert distribution_of("azure.storage.blob.BlobClient") == "azure-storage-blob"
    assert distribution_of("azure.core.MatchConditions") == "azure-core"
    assert distribution_of("opentelemetry.trace") == "opentelemetry-api"
    assert distribution_of("azure.monitor.opentelemetry.configure_azure_monitor") == "azure-monitor-opentelemetry"
