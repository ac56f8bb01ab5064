"""Planted: one task's step burns 300 ms of CPU while five other tasks are ready (their
sleeps end meanwhile). The loop is blocked by that step; it is not starved: the other
tasks' long scheduling delays are the same problem, not a second one."""

import asyncio
import time


def burn_cpu() -> int:
    total = 0
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:
        for i in range(10_000):
            total += i * i % 7
    return total


async def handle(i: int) -> None:
    await asyncio.sleep(0.01)
    if i == 3:
        burn_cpu()
    await asyncio.sleep(0.01)


async def amain() -> None:
    await asyncio.gather(*(asyncio.create_task(handle(i)) for i in range(6)))


def main() -> None:
    asyncio.run(amain())
