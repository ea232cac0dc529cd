"""Runs the real `ggufstack serve` in a subprocess, the way an operator or the container does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.base_url}/health/ready", timeout=5)

    def wait_ready(self, timeout: float = 120) -> None:
        self.wait_for(lambda r: r.status_code == 200, timeout, "ready")

    def wait_for(self, predicate, timeout: float, what: str) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: httpx.Response | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                last = self.ready()
                if predicate(last):
                    return last
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        body = last.text if last is not None else "no answer"
        raise TimeoutError(f"server not {what} after {timeout} s (last: {body}):\n{self.log()[-4000:]}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def ready_server(
    workdir: Path, env: dict[str, str] | None = None, *, command: list[str] | None = None
) -> Iterator[ServerProcess]:
    """A started server, ready to answer, stopped on exit (the shape of every module-scoped server fixture)."""
    server = start_server(workdir, env, command=command)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def start_server(
    workdir: Path, env: dict[str, str] | None = None, *, n_threads: int = 2, command: list[str] | None = None
) -> ServerProcess:
    """Start the server on a free port with only GGUFSTACK_* from `env` (the parent's are dropped).

    `command` runs another installation's server (the runtime environment's `ggufstack serve`) from `workdir`, so
    nothing of the repository or the dev environment is on its path.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GGUFSTACK_")}
    child_env.update(
        {
            "GGUFSTACK_PORT": str(port),
            "GGUFSTACK_N_THREADS": str(n_threads),
            "GGUFSTACK_CACHE_DIR": str(workdir / "cache"),
            "GGUFSTACK_LOG_LEVEL": "info",
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
        }
    )
    child_env.update(env or {})
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        if command is None:
            command, cwd = [sys.executable, "-m", "server", "serve"], REPO
        else:
            cwd = workdir
            for leak in ("PYTHONPATH", "VIRTUAL_ENV"):
                child_env.pop(leak, None)
        process = subprocess.Popen(command, cwd=cwd, env=child_env, stdout=log, stderr=subprocess.STDOUT)
    return ServerProcess(process, port, log_path, child_env)
