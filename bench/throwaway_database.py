"""A migrated schema on a throwaway PostgreSQL, for the benchmarks that measure the store."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from server.store.postgres import create_pool, migrate
from tests.support.postgres import start_postgres


@asynccontextmanager
async def migrated_pool(prefix: str) -> AsyncIterator[AsyncConnectionPool]:
    """A pool on a PostgreSQL started in a fresh temporary folder, its schema migrated; destroyed on leaving."""
    postgres = start_postgres(Path(tempfile.mkdtemp(prefix=prefix)))
    pool = create_pool(postgres.url())
    try:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await migrate(conn)
        yield pool
    finally:
        await pool.close()
        postgres.destroy()
