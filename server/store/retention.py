"""Deleting audit rows, stored conversation messages and stored Responses API responses once their time is up.

Every request adds an audit row (and, with conversations stored, its messages), so without this the tables grow for
as long as the server runs, and prompts kept "for a while" are kept forever. Stored responses are kept by thread (a
first response and those continuing it), which carries its own expiry, is never read past it, and is deleted here,
its responses and then its own row. One task per replica makes a pass at startup and then every PASS_INTERVAL_S, off
every request's path.

Each batch is its own short transaction that deletes the oldest rows past the cutoff, on an index of the column it
compares: BATCH_ROWS audit rows or messages, fewer stored responses (megabytes each), so the audit writer's inserts
never wait long behind it. A batch first takes a transaction-level advisory lock without waiting: while one replica
prunes, the others skip their pass, and a replica that dies mid-pass holds nothing. The cutoff is the database's
clock, so replicas whose clocks differ agree on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.store.errors import describe
from server.telemetry import prometheus

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 3600.0
BATCH_ROWS = 5000
# A stored response may hold megabytes (its conversation), each deleted chunk by chunk from its TOAST table: fewer of
# them make a batch as short as 5000 audit rows.
RESPONSE_BATCH_ROWS = 100
# Any constant works; it only has to be the same in every replica and differ from the migrations' lock.
PRUNE_LOCK_ID = 0x6767_7566_7265_74

_DELETE_OLD = """
DELETE FROM {table} WHERE id IN (
    SELECT id FROM {table} WHERE created_at < now() - make_interval(days => %(days)s)
    ORDER BY created_at LIMIT %(rows)s
)
"""
# A thread is deleted this long after it expired, never sooner: a save whose transaction began before the expiry may
# still add a response to it (see responses_postgres.py), and must not link it to rows being deleted.
THREAD_GRACE = timedelta(hours=1)
_DELETE_EXPIRED_RESPONSES = """
DELETE FROM responses WHERE id IN (
    SELECT r.id FROM response_threads t JOIN responses r ON r.thread_id = t.id
    WHERE t.expires_at < now() - %(grace)s ORDER BY t.expires_at LIMIT %(rows)s
)
"""
_DELETE_EXPIRED_THREADS = """
DELETE FROM response_threads WHERE id IN (
    SELECT t.id FROM response_threads t WHERE t.expires_at < now() - %(grace)s
    AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.thread_id = t.id) ORDER BY t.expires_at LIMIT %(rows)s
)
"""
# A key's stored bytes of an earlier day count for nothing: a save drops its own owner's, these are the keys that
# stopped saving (revoked ones among them).
_DELETE_PAST_DAYS = """
DELETE FROM response_bytes WHERE (owner, day) IN (
    SELECT owner, day FROM response_bytes WHERE day < (now() AT TIME ZONE 'UTC')::date LIMIT %(rows)s
)
"""
_EXPIRED = {
    "responses": _DELETE_EXPIRED_RESPONSES,
    "response_threads": _DELETE_EXPIRED_THREADS,
    "response_bytes": _DELETE_PAST_DAYS,
}

Table = Literal["audit_log", "conversation_messages", "responses", "response_threads", "response_bytes"]


@dataclass(frozen=True, slots=True)
class Retention:
    """Rows of `table` are kept `days` days after they were made; with `days` None, until their thread expires (stored
    responses and their threads, in that order)."""

    table: Table
    days: int | None
    batch_rows: int = BATCH_ROWS

    @property
    def kept_forever(self) -> bool:
        return self.days == 0

    def describe(self) -> str:
        return "past their expiry" if self.days is None else f"older than {self.days} days"


class AnotherReplicaIsPruningError(Exception):
    """The prune lock is held: another replica is making its pass."""


class Pruner:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        retentions: Sequence[Retention],
        *,
        interval_s: float = PASS_INTERVAL_S,
        retry_s: float = 60.0,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        """`batch_rows`: the most rows a batch deletes, in any table (each retention may set fewer)."""
        self._pool = pool
        self._retentions = [r for r in retentions if not r.kept_forever]
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._batch_rows = batch_rows

    async def prune(self) -> dict[str, int] | None:
        """One pass: delete every row past its table's retention. Returns the rows deleted per table, or None when
        another replica was pruning (it deletes the same rows). Raises what PostgreSQL raises."""
        deleted: dict[str, int] = {}
        try:
            for retention in self._retentions:
                deleted[retention.table] = await self._prune_table(retention)
        except AnotherReplicaIsPruningError:
            return None
        finally:
            for table, rows in deleted.items():
                if rows:
                    prometheus.retention_rows_deleted.labels(table).inc(rows)
        return deleted

    async def _prune_table(self, retention: Retention) -> int:
        statement: sql.Composable
        if retention.days is None:
            statement = sql.SQL(_EXPIRED[retention.table])
        else:
            statement = sql.SQL(_DELETE_OLD).format(table=sql.Identifier(retention.table))
        batch_rows = min(retention.batch_rows, self._batch_rows)
        params = {"days": retention.days, "rows": batch_rows, "grace": THREAD_GRACE}
        total = 0
        while True:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK_ID,))
                locked = await cursor.fetchone()
                if not locked or not locked[0]:
                    raise AnotherReplicaIsPruningError
                cursor = await conn.execute(statement, params)
                rows = cursor.rowcount
            total += rows
            if rows < batch_rows:
                if total:
                    log.info("deleted %d rows of %s %s", total, retention.table, retention.describe())
                return total

    async def run(self) -> None:
        """Make a pass now and then every interval, until cancelled. A failed pass (PostgreSQL unreachable, the
        schema not migrated yet) is logged and tried again sooner, backing off to the interval: nothing stops it."""
        delay = self._retry_s
        while True:
            try:
                deleted = await self.prune()
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                self._failed(exc)
            except Exception as exc:  # a bug: worth a traceback, not the end of retention
                self._failed(exc, traceback=True)
            else:
                prometheus.retention_passes.labels("skipped" if deleted is None else "done").inc()
                delay = self._retry_s
                await asyncio.sleep(self._interval_s)
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._interval_s)

    @staticmethod
    def _failed(exc: Exception, *, traceback: bool = False) -> None:
        prometheus.retention_passes.labels("failed").inc()
        log.warning("retention pass failed (%s): tried again later", describe(exc), exc_info=exc if traceback else None)
