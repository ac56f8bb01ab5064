"""Planted: a coroutine runs a CPU-heavy function on the event loop."""

import asyncio


def crunch_numbers() -> int:
    total = 0
    for i in range(3_000_000):
        total += i * i % 7
    return total


async def ticker() -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)


async def amain() -> None:
    t = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    crunch_numbers()
    await asyncio.sleep(0.05)
    crunch_numbers()
    await t


def main() -> None:
    asyncio.run(amain())
