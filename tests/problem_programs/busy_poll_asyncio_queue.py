"""Planted: consumers poll a queue with get_nowait() and ``await asyncio.sleep(0)`` when it
is empty (in poll_jobs), instead of awaiting queue.get(); a producer adds a job every 50 ms."""

import asyncio


async def poll_jobs(q: "asyncio.Queue[int]", seen: list[int]) -> None:
    while len(seen) < 20:
        try:
            seen.append(q.get_nowait())
        except asyncio.QueueEmpty:
            await asyncio.sleep(0)  # the planted busy-poll


async def produce(q: "asyncio.Queue[int]") -> None:
    for i in range(20):
        await asyncio.sleep(0.05)
        q.put_nowait(i)


async def amain() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    seen: list[int] = []
    await asyncio.gather(poll_jobs(q, seen), produce(q))


def main() -> None:
    asyncio.run(amain())
