"""The GPU kit's checks in a plain engine process (bench/gpu/engine_bench.py --identity): what the CUDA tests claim,
for a GPU run whose pytest process dies by a signal (on the first H200 runs it crashed loading the model)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from bench.gpu.run import cuda_tests, engine_identity, identity_line


def test_when_pytest_dies_by_a_signal_the_plain_process_says_what_the_cuda_tests_check(
    demo_gguf: Path, tmp_path: Path
) -> None:
    log = tmp_path / "tests.log"
    dies = dict(os.environ) | {"PYTEST_ADDOPTS": "-p tests.support.pytest_dies"}
    found = cuda_tests(demo_gguf, dies, tmp_path / "tests.xml", log)
    assert found["exit_code"] == -signal.SIGSEGV and found["junit"] == "missing", log.read_text()[-2000:]
    # On this CPU nothing is offloaded; the engine gives the same tokens alone and batched either way.
    checked = found["engine_process"]
    assert checked == {"exit": 0, "gpu_offload": False, "all_layers": False, "greedy": [], "seeded": []}
    said = log.read_text()
    assert "Fatal Python error: Segmentation fault" in said and "the same checks in a plain process" in said
    assert "IDENTITY " in said
    assert identity_line(checked) == (
        "NOT every layer on the GPU; greedy: same tokens alone and batched; seeded: same tokens alone and batched"
    )


def test_tests_that_run_leave_no_plain_process_check(tmp_path: Path) -> None:
    found = cuda_tests(tmp_path / "unused.gguf", dict(os.environ), tmp_path / "tests.xml", tmp_path / "tests.log")
    assert found["exit_code"] == 0 and "engine_process" not in found
    assert found["counts"] == {"skipped": 4} or found["counts"].get("passed"), found


def test_the_line_names_the_prompts_that_differ_and_a_process_that_failed_too() -> None:
    found = {"exit": 0, "gpu_offload": True, "all_layers": True, "greedy": [], "seeded": ["Water boils at"]}
    assert identity_line(found) == (
        "every layer on the GPU; greedy: same tokens alone and batched; "
        "seeded: other tokens batched than alone for ['Water boils at']"
    )
    assert identity_line({"exit": -11}) == "it failed too (exit -11; tests.log)"


def test_a_model_that_cannot_load_is_a_failed_check(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    found = engine_identity(missing, dict(os.environ), tmp_path / "tests.log")
    assert found["exit"] not in (0, None)
