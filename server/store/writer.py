"""Audit rows and conversation messages, written to PostgreSQL in batches by one background task.

A request hands its record to `submit`, which never waits: the database never stalls a stream. While PostgreSQL is
unreachable, records wait in memory, up to `max_queue` records and `max_queue_bytes` of conversation text (a
record holds up to a request body's worth, so a bound by count alone is no bound on memory); they are written, in
order and once each (request ids are the server's own and unique, inserts skip duplicates), when it is back. Records
beyond either bound are dropped, counted and logged. A record PostgreSQL refuses for what it holds is set aside
(counted and logged), never retried forever. Each API key may store at most `max_conversation_bytes_per_key_per_day`
of conversation text a day (UTC, the database's clock): past it, a request's audit row is written without its
messages (counted and logged once a key a day).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from server.store.errors import describe, is_connection_failure, is_transient
from server.store.outage import Outage
from server.telemetry import prometheus

log = logging.getLogger(__name__)

_AUDIT_INSERT = (
    "INSERT INTO audit_log (request_id, key_id, created_at, endpoint, model, model_version, prompt_tokens, "
    "completion_tokens, latency_ms, ttft_ms, status, cache_hit, client_request_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING"
)
# A key's conversation bytes of the day (the database's day, in UTC, so replicas agree on it): the upsert locks the
# row, made if need be, and returns what it holds.
_BYTES_USED = (
    "INSERT INTO conversation_bytes (key_id, day, bytes) VALUES (%s, (now() AT TIME ZONE 'UTC')::date, 0) "
    "ON CONFLICT (key_id, day) DO UPDATE SET bytes = conversation_bytes.bytes RETURNING bytes"
)
_BYTES_SET = "UPDATE conversation_bytes SET bytes = %s WHERE key_id = %s AND day = (now() AT TIME ZONE 'UTC')::date"
_BYTES_FORGET = "DELETE FROM conversation_bytes WHERE key_id = %s AND day < (now() AT TIME ZONE 'UTC')::date"
_MESSAGE_INSERT = (
    "INSERT INTO conversation_messages (conversation_id, key_id, request_id, position, role, content, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id, position) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class AuditRow:
    request_id: str
    key_id: str | None
    created_at: datetime
    endpoint: str
    model: str | None  # None: the request ran no model (a stored response read)
    model_version: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: int
    cache_hit: bool
    client_request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationMessage:
    conversation_id: str
    key_id: str | None
    request_id: str
    position: int
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Record:
    """What one request leaves behind: its audit row and, when history is kept, its messages."""

    audit: AuditRow
    messages: Sequence[ConversationMessage] = field(default=())

    @property
    def size(self) -> int:
        """Roughly what the record holds in memory, in bytes: its messages' text and a row's worth besides."""
        return _ROW_BYTES + sum(len(m.content) + _ROW_BYTES for m in self.messages)

    @property
    def text_bytes(self) -> int:
        """What its messages' text takes stored (UTF-8), as its key's daily conversation budget counts it."""
        return sum(len(m.content.encode()) for m in self.messages)


_ROW_BYTES = 512  # an audit row or a message's fields other than its text, as Python objects
_BATCH_BYTES = 16 * 1024 * 1024  # of records written in one statement (one record larger than this goes alone)


class AuditWriter:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        max_queue: int,
        max_queue_bytes: int = 256 * 1024 * 1024,
        batch_size: int = 256,
        linger_s: float = 0.05,
        outage: Outage | None = None,
        max_conversation_bytes_per_key_per_day: int = 0,
    ) -> None:
        self._pool = pool
        self._conversation_budget = max_conversation_bytes_per_key_per_day
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._outage = outage or Outage("postgresql")
        self._queue: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._dropped_since_warning = 0
        self._warned_over_budget: dict[str, date] = {}  # key id: the day it was last said to be past its budget

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, record: Record) -> bool:
        """Queue a record; False if the queue is full and it was dropped."""
        size = record.size
        if len(self._queue) >= self._max_queue or self._queued_bytes + size > self._max_queue_bytes:
            prometheus.audit_rows_dropped.inc()
            if self._dropped_since_warning == 0:
                log.warning(
                    "audit queue full (%d records, %d bytes) while PostgreSQL is unreachable: dropping new records",
                    len(self._queue),
                    self._queued_bytes,
                )
            self._dropped_since_warning += 1
            return False
        self._queue.append(record)
        self._queued_bytes += size
        prometheus.audit_queue_depth.set(len(self._queue))
        self._wake.set()
        return True

    async def run(self) -> None:
        """Write batches until cancelled. Nothing a record holds can stop it: a record PostgreSQL refuses is set
        aside, and only a failure to reach the database (or a busy one) makes it wait and try again."""
        backoff = 0.5
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            # A short linger gathers a busy server's records into one round trip.
            await asyncio.sleep(self._linger_s)
            try:
                await self._write_next()
            except Exception as exc:  # transient, by _write_next's contract
                if is_connection_failure(exc):
                    self._outage.failed(
                        exc, f"{len(self._queue)} audit records wait in memory (at most {self._max_queue})"
                    )
                elif backoff == 0.5:  # once per busy spell
                    log.warning("PostgreSQL is busy (%s): audit records wait and are retried", describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            self._outage.succeeded()
            if self._dropped_since_warning:
                log.warning(
                    "%d audit records were dropped while PostgreSQL was unreachable", self._dropped_since_warning
                )
                self._dropped_since_warning = 0

    async def _write_next(self) -> None:
        """Write the next batch, and take it off the queue. Raises only transient errors (the batch stays queued).
        When PostgreSQL refuses the batch for what it holds, each record is written on its own and the ones it
        refuses are set aside: one bad record must cost neither the batch nor the queue behind it."""
        batch: list[Record] = []
        size = 0
        for record in itertools.islice(self._queue, self._batch_size):
            # A batch of conversation text is bounded too: 256 records of a request body each made one statement of
            # a gigabyte, which a database short of memory refuses every time it is tried.
            if batch and size + record.size > _BATCH_BYTES:
                break
            batch.append(record)
            size += record.size
        if not batch:
            return
        try:
            await self._write(batch)
        except Exception as exc:
            if is_transient(exc):
                raise
        else:
            # Only now, after the commit: a batch that failed half-way is still queued and is written again.
            for _ in batch:
                self._take()
            return
        for record in batch:
            try:
                await self._write([record])
            except Exception as exc:
                if is_transient(exc):
                    raise
                self._set_aside(record, exc)
            self._take()

    def _take(self) -> None:
        """Take the written (or set aside) record at the queue's head off it."""
        self._queued_bytes -= self._queue.popleft().size
        prometheus.audit_queue_depth.set(len(self._queue))

    async def _write(self, records: Sequence[Record]) -> None:
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(_AUDIT_INSERT, [astuple(r.audit) for r in records])
            kept = await self._within_budget(cursor, records)
            messages = [astuple(m) for r in kept for m in r.messages]
            if messages:
                await cursor.executemany(_MESSAGE_INSERT, messages)

    async def _within_budget(self, cursor: AsyncCursor[Any], records: Sequence[Record]) -> list[Record]:
        """The records whose messages fit their key's budget for the day, in order, charged in the same transaction
        as they are written (a batch that fails is charged nothing). Each key's row of the day is locked while it is
        charged: replicas writing for one key at once add up, never overwrite."""
        with_text = [r for r in records if r.messages]
        keys = sorted({r.audit.key_id for r in with_text if r.audit.key_id is not None})
        if not self._conversation_budget or not keys:
            return with_text
        # Locked in one order (sorted): two replicas' batches holding the same keys never wait on each other's locks.
        used = {key: await self._used_today(cursor, key) for key in keys}
        kept: list[Record] = []
        over: Counter[str] = Counter()
        for record in with_text:
            key = record.audit.key_id
            if key is not None:
                size = record.text_bytes
                if used[key] + size > self._conversation_budget:
                    over[key] += 1
                    continue
                used[key] += size
            kept.append(record)
        for key, total in used.items():
            await cursor.execute(_BYTES_SET, (total, key))
            await cursor.execute(_BYTES_FORGET, (key,))
        for key, count in over.items():
            prometheus.conversation_records_over_budget.inc(count)
            today = datetime.now(UTC).date()
            if self._warned_over_budget.get(key) != today:
                self._warned_over_budget[key] = today
                log.warning(
                    "API key %s stored its %d bytes of conversation text for today: the messages of its requests are "
                    "not stored until tomorrow (UTC)", key, self._conversation_budget,
                )  # fmt: skip
        return kept

    async def _used_today(self, cursor: AsyncCursor[Any], key: str) -> int:
        await cursor.execute(_BYTES_USED, (key,))
        row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    def _set_aside(self, record: Record, exc: Exception) -> None:
        prometheus.audit_records_refused.inc()
        # The error's type and SQLSTATE only: its message may quote what the record holds.
        log.error(
            "PostgreSQL refused the audit record of request %s (%s): set aside, not retried",
            record.audit.request_id,
            describe(exc),
        )

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: write what is queued, for at most `timeout_s`; report what could not be written."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._queue and asyncio.get_running_loop().time() < deadline:
            try:
                await self._write_next()
            except Exception:  # transient, by _write_next's contract
                await asyncio.sleep(0.2)
        if self._queue:
            log.warning("shutting down with %d audit records unwritten (PostgreSQL unreachable)", len(self._queue))
