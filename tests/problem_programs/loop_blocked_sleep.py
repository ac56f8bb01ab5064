"""Planted: a coroutine calls a blocking function (time.sleep) on the event loop."""

import asyncio
import time


def load_config_sync() -> None:
    time.sleep(0.4)  # the blocking line


async def handler(i: int) -> None:
    await asyncio.sleep(0.01)
    if i % 10 == 5:
        load_config_sync()


async def amain() -> None:
    for _ in range(2):
        await asyncio.gather(*(handler(i) for i in range(20)))


def main() -> None:
    asyncio.run(amain())
