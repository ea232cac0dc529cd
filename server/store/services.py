"""Opening the data plane's connections in the app's lifespan, and the tasks that keep them useful.

PostgreSQL unreachable at startup does not stop the server: migrations are retried in the background and audit
records wait in the writer's queue meanwhile (the retention job retries its passes on its own). A database migrated by
a newer release does stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
from azure.core.credentials_async import AsyncTokenCredential
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.config.settings import Settings
from server.store.entra import default_credential
from server.store.outage import Outage
from server.store.postgres import create_pool, migrate
from server.store.retention import RESPONSE_BATCH_ROWS, Pruner, Retention
from server.store.writer import AuditWriter
from server.telemetry import prometheus

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Database:
    pool: AsyncConnectionPool
    writer: AuditWriter
    outage: Outage


async def background(resources: AsyncExitStack, work: Coroutine[Any, Any, None], name: str) -> None:
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(_report_death)

    async def stop() -> None:
        task.cancel()
        # A task that died was reported when it did (_report_death); shutdown goes on.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    resources.push_async_callback(stop)


def _report_death(task: asyncio.Task[None]) -> None:
    """A background task is meant to run until the server stops: one that ends with an error must not do so
    silently (its exception would otherwise surface only at shutdown, if at all)."""
    if task.cancelled() or task.exception() is None:
        return
    prometheus.background_task_failures.labels(task.get_name()).inc()
    log.critical("background task %s died; its work has stopped", task.get_name(), exc_info=task.exception())


async def _migrate(pool: AsyncConnectionPool) -> None:
    async with pool.connection(timeout=STARTUP_TIMEOUT_S) as conn:
        await migrate(conn)


async def _migrate_until_done(pool: AsyncConnectionPool, writer: AuditWriter) -> None:
    delay = 1.0
    while True:
        try:
            await _migrate(pool)
            break
        except (psycopg.Error, PoolTimeout, OSError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    log.info("PostgreSQL reachable: schema up to date")
    await writer.run()


async def open_database(
    settings: Settings, resources: AsyncExitStack, credential: AsyncTokenCredential | None
) -> Database:
    assert settings.database_url is not None
    pool = create_pool(settings.database_url.get_secret_value(), credential)
    await pool.open(wait=False)
    resources.push_async_callback(pool.close)
    outage = Outage("postgresql", use="audit log")
    writer = AuditWriter(
        pool,
        max_queue=settings.audit_queue_max,
        max_queue_bytes=settings.audit_queue_max_bytes,
        outage=outage,
        max_conversation_bytes_per_key_per_day=settings.conversations_max_bytes_per_key_per_day,
    )
    resources.push_async_callback(writer.drain, DRAIN_TIMEOUT_S)
    try:
        await _migrate(pool)
    except (psycopg.Error, PoolTimeout, OSError) as exc:
        outage.failed(exc, "schema migrations are retried in the background; audit records wait in memory")
        await background(resources, _migrate_until_done(pool, writer), "migrate-then-write")
    else:
        await background(resources, writer.run(), "audit-writer")
    await background(resources, Pruner(pool, retentions(settings)).run(), "retention")
    return Database(pool, writer, outage)


def retentions(settings: Settings) -> list[Retention]:
    return [
        Retention("audit_log", settings.audit_retention_days),
        Retention("conversation_messages", settings.conversations_retention_days),
        Retention("responses", None, batch_rows=RESPONSE_BATCH_ROWS),
        Retention("response_threads", None),
        Retention("response_bytes", None),
    ]


async def entra_credential(settings: Settings, resources: AsyncExitStack) -> AsyncTokenCredential | None:
    if "entra" not in (settings.database_auth, settings.redis_auth):
        return None
    credential = default_credential()
    resources.push_async_callback(credential.close)
    return credential
