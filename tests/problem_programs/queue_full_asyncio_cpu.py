"""Planted: the consumer task of a bounded asyncio.Queue parses every item on the event
loop (CPU); the producers block on put."""

import asyncio
import hashlib

# asyncio lock and queue waits are opt-in (they cost ~1 us per wait that blocks)
PYFLIGHT_SOURCE_OPTIONS = {"asyncio": {"sync_waits": True}}


def parse_record(item: int) -> bytes:
    data = str(item).encode() * 64
    for _ in range(7500):  # ~10 ms of CPU per item (longer than the 5 ms switch interval)
        data = hashlib.sha256(data).digest() * 8
    return data


async def consume(q: "asyncio.Queue[int | None]") -> None:
    while True:
        item = await q.get()
        if item is None:
            return
        parse_record(item)
        await asyncio.sleep(0)


async def produce(q: "asyncio.Queue[int | None]", n: int) -> None:
    for i in range(n):
        await q.put(i)


async def amain() -> None:
    q: asyncio.Queue[int | None] = asyncio.Queue(maxsize=2)
    consumer = asyncio.create_task(consume(q))
    await asyncio.gather(*(produce(q, 50) for _ in range(3)))
    await q.put(None)
    await consumer


def main() -> None:
    asyncio.run(amain())
