"""A throwaway Redis server on a free port, never the machine's own on 6379.

No persistence: `stop()` is an outage that loses every key (as a failover to an empty replica would), `start()` brings
it back on the same port. Password-protected, like every Redis the server meets in Azure.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, wait_for_port


@dataclass
class Redis:
    workdir: Path
    port: int
    password: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (./dev test does)")
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--requirepass",
                self.password,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(self.port, 20)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self, db: int = 0):
        import redis

        return redis.Redis.from_url(self.url(db))


def start_redis(workdir: Path) -> Redis:
    workdir.mkdir(parents=True, exist_ok=True)
    server = Redis(workdir, free_port(), secrets.token_urlsafe(16))
    server.start()
    return server
