"""Planted: one slow consumer task (awaited I/O per item) behind a small asyncio.Queue;
the producer tasks block on put."""

import asyncio

# asyncio lock and queue waits are opt-in (they cost ~1 us per wait that blocks)
PYFLIGHT_SOURCE_OPTIONS = {"asyncio": {"sync_waits": True}}


async def slow_consume(q: "asyncio.Queue[int | None]") -> None:
    while True:
        item = await q.get()
        if item is None:
            return
        await asyncio.sleep(0.01)  # writing each item out is slow


async def produce(q: "asyncio.Queue[int | None]", n: int) -> None:
    for i in range(n):
        await q.put(i)


async def amain() -> None:
    q: asyncio.Queue[int | None] = asyncio.Queue(maxsize=4)
    consumer = asyncio.create_task(slow_consume(q))
    await asyncio.sleep(0)  # the consumer starts first and waits for work
    await asyncio.gather(*(produce(q, 20) for _ in range(4)))
    await q.put(None)
    await consumer


def main() -> None:
    asyncio.run(amain())
