"""Healthy: asyncio tasks use a lock and a queue lightly (short critical sections, a fast
consumer, an unbounded queue)."""

import asyncio

counter = {"n": 0}


# asyncio lock and queue waits are opt-in (they cost ~1 us per wait that blocks)
PYFLIGHT_SOURCE_OPTIONS = {"asyncio": {"sync_waits": True}}


async def handle(i: int, lock: asyncio.Lock, q: "asyncio.Queue[int | None]") -> None:
    await asyncio.sleep(0.002 * (i % 7))
    async with lock:  # short, no await inside
        counter["n"] += 1
    q.put_nowait(i)
    await asyncio.sleep(0.01)


async def log_writer(q: "asyncio.Queue[int | None]") -> None:
    while await q.get() is not None:
        pass


async def amain() -> None:
    lock = asyncio.Lock()
    q: asyncio.Queue[int | None] = asyncio.Queue()
    writer = asyncio.create_task(log_writer(q))
    for _ in range(8):
        await asyncio.gather(*(handle(i, lock, q) for i in range(20)))
        await asyncio.sleep(0.02)
    await q.put(None)
    await writer


def main() -> None:
    asyncio.run(amain())
