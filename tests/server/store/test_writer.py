"""The audit writer on a real PostgreSQL that goes away mid-test: nothing is lost up to the bound."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest

from server.store.outage import Outage
from server.store.postgres import create_pool, migrate
from server.store.writer import AuditRow, AuditWriter, ConversationMessage, Record
from server.telemetry import prometheus
from tests.support.postgres import start_postgres


def _record(i: int, *, messages: bool = False) -> Record:
    now = datetime.now(UTC)
    row = AuditRow(f"req-{i}", "key_1", now, "chat", "m", "sha", 3, 4, 10.0, 2.0, 200, False)
    turns = [ConversationMessage("conv", "key_1", f"req-{i}", 0, "user", f"q{i}", now)] if messages else []
    return Record(row, turns)


async def _count(pool, table: str = "audit_log") -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
        row = await cursor.fetchone()
    return row[0]


async def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_rows_queued_during_an_outage_are_written_when_postgres_returns(tmp_path_factory) -> None:
    pg = start_postgres(tmp_path_factory.mktemp("pg-writer"))
    pool = create_pool(pg.url())
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await migrate(conn)
    writer = AuditWriter(pool, max_queue=50, linger_s=0.01, outage=Outage("postgresql"))
    task = asyncio.create_task(writer.run())
    dropped_before = prometheus.audit_rows_dropped._value.get()
    try:
        for i in range(10):
            assert writer.submit(_record(i, messages=True))

        async def first_ten() -> bool:
            return await _count(pool) == 10

        await _wait_for(first_ten)
        pg.stop()
        for i in range(10, 70):
            writer.submit(_record(i))
        await asyncio.sleep(1.0)
        assert writer.pending == 50, "the bound holds while PostgreSQL is down"
        assert prometheus.audit_rows_dropped._value.get() - dropped_before == 10
        pg.start()

        async def all_queued() -> bool:
            try:
                return writer.pending == 0 and await _count(pool) == 60
            except Exception:
                return False

        await _wait_for(all_queued, 30)
        assert await _count(pool, "conversation_messages") == 10
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT request_id FROM audit_log ORDER BY id")
            ids = [r[0] for r in await cursor.fetchall()]
        assert ids == [f"req-{i}" for i in range(60)], "in order, once each, the overflow (60-69) dropped"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()
        pg.destroy()


async def test_a_batch_written_twice_leaves_one_row_per_request(pool) -> None:
    writer = AuditWriter(pool, max_queue=10)
    writer.submit(_record(1))
    await writer.drain(5)
    writer.submit(_record(1))
    await writer.drain(5)
    assert await _count(pool) == 1


async def test_the_queue_holds_at_most_its_bytes_of_conversation_text(tmp_path_factory) -> None:
    """Threat: with conversations stored, each record holds up to a request body of text (4 MiB); a bound by count
    alone let 10,000 of them wait in memory during an outage (measured: 4 MB more resident memory per record)."""
    pool = create_pool("postgresql://nobody@127.0.0.1:1/none")  # never reached: nothing is written
    big = "x" * 1_000_000
    now = datetime.now(UTC)

    def talkative(i: int) -> Record:
        row = AuditRow(f"big-{i}", "key_1", now, "chat", "m", "sha", 3, 4, 10.0, 2.0, 200, False)
        return Record(row, [ConversationMessage("conv", "key_1", f"big-{i}", 0, "user", big, now)])

    writer = AuditWriter(pool, max_queue=10_000, max_queue_bytes=3_500_000)
    dropped_before = prometheus.audit_rows_dropped._value.get()
    assert [writer.submit(talkative(i)) for i in range(5)] == [True, True, True, False, False]
    assert writer.submit(_record(99)), "a record without text still fits"
    assert prometheus.audit_rows_dropped._value.get() - dropped_before == 2


async def test_a_batch_holds_at_most_its_bytes_of_conversation_text(pool, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = AuditWriter(pool, max_queue=100, batch_size=256)
    now = datetime.now(UTC)
    text = "y" * 6_000_000
    for i in range(5):
        row = AuditRow(f"batch-{i}-{now.timestamp()}", "key_1", now, "chat", "m", "sha", 3, 4, 10.0, 2.0, 200, False)
        writer.submit(
            Record(row, [ConversationMessage(f"c-{now.timestamp()}", "key_1", row.request_id, 0, "user", text, now)])
        )
    written: list[int] = []
    write = writer._write

    async def counting(records):
        written.append(len(records))
        await write(records)

    monkeypatch.setattr(writer, "_write", counting)
    await writer.drain(30)
    assert written == [2, 2, 1], "16 MiB a statement: two records of 6 MB each"


def _turn(request_id: str, key_id: str, text: str) -> Record:
    now = datetime.now(UTC)
    row = AuditRow(request_id, key_id, now, "chat", "m", "sha", 3, 4, 10.0, 2.0, 200, False)
    return Record(row, [ConversationMessage("conv", key_id, request_id, 0, "user", text, now)])


async def test_a_keys_conversation_text_is_stored_within_its_daily_budget(pool) -> None:
    """Threat: tokens bound what a request costs, not what it stores. A thinking block the chat template leaves out of
    the prompt costs no token and was stored whole, and a cache hit costs none at all: a review stored 1.39 GB in
    45 s from one key with a TPM limit. Past its budget a key's requests are still audited, their text not stored."""
    writer = AuditWriter(pool, max_queue=100, max_conversation_bytes_per_key_per_day=10_000)
    over_before = prometheus.conversation_records_over_budget._value.get()
    for i in range(3):
        writer.submit(_turn(f"a-{i}", "key_a", "é" * 2_000))  # 4000 bytes stored each (UTF-8)
    writer.submit(_turn("b-0", "key_b", "x" * 9_000))  # another key's budget is its own
    await writer.drain(10)
    writer.submit(_turn("a-3", "key_a", "x" * 1_000))  # what is left of the day's budget still takes a small one
    writer.submit(_turn("a-4", "key_a", "x" * 2_000))
    await writer.drain(10)
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT request_id FROM conversation_messages ORDER BY request_id")
        stored = [row[0] for row in await cursor.fetchall()]
        cursor = await conn.execute("SELECT key_id, bytes FROM conversation_bytes ORDER BY key_id")
        used = await cursor.fetchall()
    assert stored == ["a-0", "a-1", "a-3", "b-0"]
    assert used == [("key_a", 9_000), ("key_b", 9_000)]
    assert await _count(pool) == 6, "every request is audited"
    assert prometheus.conversation_records_over_budget._value.get() - over_before == 2


async def test_without_a_budget_conversation_text_is_stored_and_not_counted(pool) -> None:
    writer = AuditWriter(pool, max_queue=100)
    writer.submit(_turn("a-0", "key_a", "x" * 50_000))
    await writer.drain(10)
    assert await _count(pool, "conversation_messages") == 1
    assert await _count(pool, "conversation_bytes") == 0
