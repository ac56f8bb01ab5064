"""Planted: asyncio handlers offload CPU-bound rendering to a 2-process pool, and twelve
requests arrive at once: most of their time is spent queueing for a worker process."""

import asyncio
from concurrent.futures import ProcessPoolExecutor


def render_report(rows: int) -> int:
    total = 0
    for i in range(rows):
        total += i * i % 7
    return total


async def handle(pool: ProcessPoolExecutor) -> int:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, render_report, 1_000_000)


async def amain() -> None:
    with ProcessPoolExecutor(max_workers=2) as pool:
        await asyncio.gather(*(handle(pool) for _ in range(12)))


def main() -> None:
    asyncio.run(amain())
