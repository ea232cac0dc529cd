"""A pytest plugin that kills its own process with SIGSEGV as the session starts: the GPU kit's tests step is rehearsed
with it (tests/bench/test_gpu_engine_bench.py), as the pytest process died loading the model on the first H200 runs."""

from __future__ import annotations

import os
import signal


def pytest_sessionstart(session: object) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
