"""The bisection that names the import after which a model load crashes (bench/gpu/bisect_imports.py), on a made-up
package tree: each try is a pure function here, a fresh process on the GPU machine."""

from __future__ import annotations

import time

from bench.gpu.bisect_imports import bisect

# What each top-level module imports when it is imported, in order.
TREE = {
    "web": ["http", "codec", "schema"],
    "http": ["codec"],
    "codec": [],
    "schema": ["rpc", "attrs"],
    "rpc": ["native"],
    "native": [],
    "attrs": [],
    "yaml": [],
}


def imports_of(modules: list[str]) -> list[str]:
    """Top-level modules in the order their imports begin, as smoke.py --list-imports prints them."""
    seen: list[str] = []

    def visit(name: str) -> None:
        if name not in seen:
            seen.append(name)
            for child in TREE[name]:
                visit(child)

    for module in modules:
        visit(module)
    return seen


def crashes_once(culprit: str, tried: list[list[str]]):
    def crashes(modules: list[str]) -> bool:
        tried.append(modules)
        return culprit in imports_of(modules)

    return crashes


def test_the_deepest_module_whose_import_crashes_the_load_is_named_with_the_chain_to_it() -> None:
    tried: list[list[str]] = []
    found = bisect(["web", "yaml"], crashes_once("native", tried), imports_of, deadline=time.monotonic() + 60)
    assert found.chain == ["web", "schema", "rpc", "native"]
    assert found.to_json()["culprit"] == "native"
    assert found.modules == 8
    assert "once native is imported" in found.note
    assert len(tried) == len(found.tries) <= 12


def test_a_module_whose_own_code_crashes_the_load_is_named_though_it_imports_others() -> None:
    found = bisect(["web"], crashes_once("schema", []), imports_of, deadline=time.monotonic() + 60)
    assert found.chain == ["web", "schema"]


def test_a_crash_that_does_not_need_the_imports_is_said_to_be_something_else() -> None:
    found = bisect(["web"], lambda _modules: False, imports_of, deadline=time.monotonic() + 60)
    assert found.chain == [] and found.to_json()["culprit"] is None
    assert "not the imports'" in found.note


def test_running_out_of_time_keeps_what_was_found() -> None:
    calls = []

    def slow(modules: list[str]) -> bool:
        calls.append(modules)
        return "native" in imports_of(modules)

    found = bisect(["web"], slow, imports_of, deadline=time.monotonic() - 1)
    assert calls == [] and found.note.startswith("out of time")
