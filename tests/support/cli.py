"""Run the `ggufstack` command line as a user does: a fresh process, no GGUFSTACK_ setting leaking in from the
test run's own environment."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GGUFSTACK_")}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env={**clean, **env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
