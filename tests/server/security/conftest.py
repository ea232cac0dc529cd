"""One server with PostgreSQL and Redis, shared by the security tests (each makes its own keys); tests that must stop
a server or a database start their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import Postgres
from tests.support.redis import Redis
from tests.support.server import ServerProcess, start_server

MODEL = "chat-model"
ADMIN_KEY = "admin-" + uuid.uuid4().hex


def server_env(postgres: Postgres, database: str, redis: Redis, model_path: Path, **extra: str) -> dict[str, str]:
    return {
        "GGUFSTACK_DATABASE_URL": postgres.url(database),
        "GGUFSTACK_REDIS_URL": redis.url(),
        "GGUFSTACK_ADMIN_API_KEY": ADMIN_KEY,
        "GGUFSTACK_STORE_CONVERSATIONS": "true",
        "GGUFSTACK_MODEL_PATH": str(model_path),
        "GGUFSTACK_MODEL_ALIAS": MODEL,
        "GGUFSTACK_LOG_FORMAT": "json",
        **extra,
    }


@dataclass
class Plane:
    postgres: Postgres
    database: str
    redis: Redis
    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.base_url

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def create_key(self, **fields: object) -> dict:
        with self.admin() as admin:
            r = admin.post("/admin/keys", json={"name": "k-" + uuid.uuid4().hex[:6], **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def usage(self, key_id: str) -> dict:
        with self.admin() as admin:
            return admin.get(f"/admin/keys/{key_id}/usage").json()

    def sql(self, query: str, *params: object) -> list[tuple]:
        return self.postgres.execute(query, self.database, params)

    def chat(
        self, key: str, content: str = "Say hi.", *, headers: dict | None = None, **body: object
    ) -> httpx.Response:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1, **body}
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {key}", **(headers or {})},
            timeout=60,
        )


def eventually(probe: Callable[[], object], timeout: float = 15.0) -> object:
    """`probe()`'s first truthy result, polled (the audit writer and the limiter's late charges are asynchronous)."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


@contextmanager
def own_plane(
    postgres: Postgres, redis: Redis, model_path: Path, workdir: Path, name: str, **extra: str
) -> Iterator[Plane]:
    """A server of its own, on a fresh database named after `name`, with `extra` settings."""
    database = name + "_" + uuid.uuid4().hex[:8]
    postgres.create_database(database)
    server = start_server(workdir, server_env(postgres, database, redis, model_path, **extra), n_threads=1)
    try:
        server.wait_ready()
        yield Plane(postgres, database, redis, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plane(postgres: Postgres, redis_server: Redis, demo_gguf: Path, tmp_path_factory) -> Iterator[Plane]:
    workdir = tmp_path_factory.mktemp("security-server")
    with own_plane(postgres, redis_server, demo_gguf, workdir, "security", GGUFSTACK_KEY_CACHE_TTL_S="2") as shared:
        yield shared
