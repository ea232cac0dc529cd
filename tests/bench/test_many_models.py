"""bench/many_models.py in its quickest mode prints every figure it exists for (its numbers are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_quickest_run_prints_each_figure() -> None:
    argv = [sys.executable, "-m", "bench.many_models", "--cycles", "1", "--rounds", "1", "--streams", "2"]
    run = subprocess.run([*argv, "--max-tokens", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = {
        "smol: first token, loaded on demand evicting the other": r"[\d.]+ s = registry load [\d.]+ s .*\+\d+ ms",
        "gemma: first token, loaded on demand evicting the other": r"[\d.]+ s = registry load [\d.]+ s .*\+\d+ ms",
        "2 streams on smol alone": r"[\d.]+ tok/s, TTFT p50 \d+ / p95 \d+ ms",
        "2+2 streams on smol and gemma": r"[\d.]+ tok/s, TTFT p50 \d+ / p95 \d+ ms",
        "2+2 / 2 on smol alone": r"aggregate [\d.]+x",
        "peak RSS over the load/evict cycles": r"\d+ MiB, [+-]\d+ MiB over ready; budget \d+ MiB",
    }
    for label, value in figures.items():
        assert re.search(re.escape(label) + r".*  " + value, run.stdout), f"{label!r} missing:\n{run.stdout}"
