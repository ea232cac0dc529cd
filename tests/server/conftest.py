from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest
from psycopg_pool import AsyncConnectionPool

from server.store.postgres import create_pool, migrate
from tests.support.postgres import Postgres, start_postgres
from tests.support.redis import Redis, start_redis


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


def database_name(nodeid: str) -> str:
    return "t" + hashlib.sha1(nodeid.encode(), usedforsecurity=False).hexdigest()[:16]


@pytest.fixture
async def pool(postgres: Postgres, request: pytest.FixtureRequest) -> AsyncIterator[AsyncConnectionPool]:
    """A pool on a fresh, migrated database named after the test."""
    url = postgres.create_database(database_name(request.node.nodeid))
    pool = create_pool(url)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await migrate(conn)
    try:
        yield pool
    finally:
        await pool.close()
