"""Planted: asyncio hands work to threads that all serialise on one lock."""

import asyncio
import threading
import time

INVENTORY_LOCK = threading.Lock()
stock = {"apples": 0}


def update_inventory(i: int) -> None:
    with INVENTORY_LOCK:  # executor threads queue up here
        time.sleep(0.02)
        stock["apples"] += i


async def amain() -> None:
    await asyncio.gather(*(asyncio.to_thread(update_inventory, i) for i in range(40)))


def main() -> None:
    asyncio.run(amain())
