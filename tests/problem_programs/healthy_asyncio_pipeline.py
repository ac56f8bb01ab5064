"""Healthy: a busy asyncio pipeline (a producer feeding a bounded queue, a consumer doing
a little work per item): many short steps, but each consumer step is woken by real data."""

import asyncio
import json


async def produce(q: "asyncio.Queue[dict[str, int] | None]") -> None:
    for i in range(60000):
        await q.put({"id": i, "value": i * 3})
    await q.put(None)


async def consume(q: "asyncio.Queue[dict[str, int] | None]") -> None:
    total = 0
    while (item := await q.get()) is not None:
        total += len(json.dumps(item))


async def amain() -> None:
    q: asyncio.Queue[dict[str, int] | None] = asyncio.Queue(maxsize=64)
    await asyncio.gather(produce(q), consume(q))


def main() -> None:
    asyncio.run(amain())
