"""What a large stored Responses API conversation costs the event loop: the longest gap between two ticks of a 1 ms
ticker while the PostgreSQL store saves one, reads it back for a continuation, parses it (in a worker thread, as the
pipeline does) and measures it (`json_size`, as the bound does). Every stream the server has open waits that long.

The conversation is `--items` reasoning items of random text (PostgreSQL cannot compress it), about
GGUFSTACK_RESPONSES_MAX_CONVERSATION_BYTES (8 MiB) at the defaults, on a throwaway PostgreSQL.

    uv run --no-sync python -m bench.stored_conversations [--items 1900] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.throwaway_database import migrated_pool
from server.store.responses import StoredResponse, json_size
from server.store.responses_postgres import PostgresResponseStore


class Ticker:
    """Ticks every millisecond on the event loop; `longest` is the widest gap seen while `during` ran."""

    def __init__(self) -> None:
        self._gaps: list[float] = []
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self._gaps.append(now - last)
            last = now

    async def during(self, work: Callable[[], Awaitable[Any]]) -> float:
        self._gaps.clear()
        await work()
        await asyncio.sleep(0.005)  # the tick that ends the gap the work made
        return max(self._gaps)

    def stop(self) -> None:
        self._task.cancel()


def conversation(items: int) -> list[dict[str, Any]]:
    text = lambda: base64.b64encode(os.urandom(3000)).decode()  # noqa: E731
    return [
        {"type": "reasoning", "id": f"rs_{i}", "summary": [], "content": [{"type": "reasoning_text", "text": text()}]}
        for i in range(items)
    ]


async def one_round(
    store: PostgresResponseStore, ticker: Ticker, response_id: str, context: list[dict[str, Any]], size: int
) -> dict[str, float]:
    stored = StoredResponse(response_id, "key:a", time.time(), {"output": []}, [], context, size)
    gaps = {"save": await ticker.during(lambda: store.save(stored))}
    found: list[Any] = []

    async def read() -> None:
        found.append(await store.conversation(response_id, "key:a"))

    gaps["read"] = await ticker.during(read)
    gaps["parse"] = await ticker.during(lambda: asyncio.to_thread(found[0].load))
    gaps["size"] = await ticker.during(lambda: asyncio.to_thread(json_size, context))
    return gaps


async def run(items: int, rounds: int) -> None:
    async with migrated_pool("bench-stored-") as pool:
        store = PostgresResponseStore(pool, retention_s=3600)
        context = conversation(items)
        size = json_size(context)
        print(f"conversation: {items} items, {size / 2**20:.1f} MiB as JSON; {os.cpu_count()} cores")
        ticker = Ticker()
        gaps: dict[str, list[float]] = {"save": [], "read": [], "parse": [], "size": []}
        for i in range(rounds):
            for step, gap in (await one_round(store, ticker, f"resp_{i}", context, size)).items():
                gaps[step].append(gap)
        ticker.stop()
        for step, seen in gaps.items():
            print(
                f"{step:>5}: longest event-loop gap median {statistics.median(seen) * 1000:.1f} ms, "
                f"max {max(seen) * 1000:.1f} ms over {rounds} rounds"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1900)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.items, args.rounds))


if __name__ == "__main__":
    main()
