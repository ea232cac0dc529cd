"""The PostgreSQL connection pool and the schema it expects.

Migrations are the numbered files in `migrations/`, applied in order at startup inside one transaction that holds an
advisory lock, so replicas starting together apply each file once. A database already at a higher version than this
code knows was migrated by a newer release: the server refuses to start rather than write rows it does not understand.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from azure.core.credentials_async import AsyncTokenCredential
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from server.store.entra import postgres_password

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every replica (and unlikely to collide with other apps' locks).
MIGRATION_LOCK_ID = 0x6767_7566_7374_6B


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer release of the server."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("server.store").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers must run 1, 2, 3, ... without gaps: {[m.version for m in found]}")
    return found


async def migrate(conn: AsyncConnection, available: list[Migration] | None = None) -> int:
    """Bring the schema up to date; returns the version it is at. Raises SchemaTooNewError."""
    available = migrations() if available is None else available
    latest = available[-1].version if available else 0
    async with conn.transaction():
        # Transaction-scoped: released by the commit, or by the server if this replica dies half-way.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cursor.fetchone()
        current = row[0] if row else 0
        if current > latest:
            raise SchemaTooNewError(_too_new(current, latest))
        for migration in available:
            if migration.version <= current:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
            log.info("database schema migrated to version %d (%s)", migration.version, migration.name)
    return max(current, latest)


async def schema_too_new(conninfo: str, credential: AsyncTokenCredential | None = None) -> str | None:
    """Before the server starts: the one-line reason to refuse a database migrated by a newer release, else None.
    A database that cannot be reached is not a reason: the server starts and retries."""
    latest = migrations()[-1].version
    kwargs = await postgres_password(credential)() if credential is not None else {}
    try:
        async with await AsyncConnection.connect(conninfo, connect_timeout=5, **kwargs) as conn:
            cursor = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = await cursor.fetchone()
            if not row or not row[0]:
                return None
            cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = await cursor.fetchone()
    except (psycopg.OperationalError, OSError):
        return None
    current = row[0] if row else 0
    return _too_new(current, latest) if current > latest else None


def _too_new(current: int, latest: int) -> str:
    return (
        f"the database schema is at version {current}, newer than this server knows ({latest}): "
        "run a release at least as new as the one that migrated it"
    )


def create_pool(
    conninfo: str, credential: AsyncTokenCredential | None = None, *, max_size: int = 8
) -> AsyncConnectionPool:
    """A pool that is not open yet (open it in the lifespan). With `credential`, each connection's password is a
    fresh Entra token; the URL names the user and carries no password."""
    return AsyncConnectionPool(
        conninfo,
        kwargs=postgres_password(credential) if credential is not None else None,
        min_size=1,
        max_size=max_size,
        open=False,
        # A dead database must not hold a request: a checkout gives up quickly and the caller degrades.
        timeout=2.0,
        # A connection that died with its server (a restart, a failover) is replaced at checkout, not handed out.
        check=AsyncConnectionPool.check_connection,
        name="ggufstack",
    )
