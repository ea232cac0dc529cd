"""What a long Responses API chat stores and costs in PostgreSQL, now that each continuation keeps its own turn and a
link to the one before (a thread) rather than a copy of the whole conversation.

Stores a chat of `--turns` turns (a user message and an answer of random text, about `--turn-bytes` each) the way the
server does, continuing each response from the one before, then prints: the table's size against what a copy of the
conversation in every row would have stored; the save time of the last turns; and the time to read the last
response's conversation for a continuation (a walk along the chain) against the same conversation kept whole in one
row, taking turns. On a throwaway PostgreSQL.

    uv run --no-sync python -m bench.response_threads [--turns 200] [--turn-bytes 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import time
from typing import Any

from bench.throwaway_database import migrated_pool
from server.store.responses import StoredResponse, json_size
from server.store.responses_postgres import PostgresResponseStore


def _text(chars: int) -> str:
    return base64.b64encode(os.urandom(chars * 3 // 4)).decode()


def turn(number: int, chars: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One turn's input and output items."""
    asked = [{"type": "message", "id": f"msg_in_{number}", "role": "user", "content": _text(chars // 2)}]
    answer = {"type": "output_text", "text": _text(chars // 2), "annotations": []}
    output = [{"type": "message", "id": f"msg_out_{number}", "role": "assistant", "content": [answer]}]
    return asked, output


async def _timed(work: Any) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


async def run(turns: int, turn_bytes: int, rounds: int) -> None:
    async with migrated_pool("bench-threads-") as pool:
        store = PostgresResponseStore(pool, retention_s=3600, max_bytes_per_key_per_day=0)
        context: list[dict[str, Any]] = []
        previous: str | None = None
        copies = 0
        saves: list[float] = []
        for number in range(turns):
            asked, output = turn(number, turn_bytes)
            size = json_size([*context, *asked, *output])
            response_id = f"resp_{number}"
            stored = StoredResponse(
                response_id, "key:a", time.time(), {"output": output}, asked, context, size, previous_id=previous
            )
            saves.append(await _timed(store.save(stored)))
            copies += size
            context, previous = stored.conversation(), response_id
        whole = StoredResponse("resp_whole", "key:a", time.time(), {"output": []}, [], context, json_size(context))
        await store.save(whole)
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT pg_total_relation_size('responses')")
            row = await cursor.fetchone()
        table = row[0] if row else 0
        chain_reads: list[float] = []
        whole_reads: list[float] = []
        for _ in range(rounds):
            chain_reads.append(await _timed(store.conversation(previous or "", "key:a")))
            whole_reads.append(await _timed(store.conversation("resp_whole", "key:a")))
        found = await store.conversation(previous or "", "key:a")
        assert found is not None and found.load() == context, "the chain reads back the whole conversation"
        print(
            f"{turns} turns of about {turn_bytes} bytes, {json_size(context) / 2**20:.2f} MiB in all; "
            f"{os.cpu_count()} cores"
        )
        print(
            f"responses table: {table / 2**20:.1f} MiB (with one whole copy for the read below); a copy of the "
            f"conversation in every row: {copies / 2**20:.1f} MiB of JSON"
        )
        print(f"save, last 10 turns: median {statistics.median(saves[-10:]) * 1000:.1f} ms")
        print(
            f"continuation read, {rounds} rounds taking turns: chain of {turns} rows median "
            f"{statistics.median(chain_reads) * 1000:.1f} ms, one whole row median "
            f"{statistics.median(whole_reads) * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--turn-bytes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.turns, args.turn_bytes, args.rounds))


if __name__ == "__main__":
    main()
