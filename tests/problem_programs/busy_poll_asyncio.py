"""Planted: wait_for_ready busy-polls a flag with ``await asyncio.sleep(0)`` while a worker
thread does the real work; the loop spins at 100% CPU instead of awaiting an event."""

import asyncio
import threading
import time

state = {"done": False}


def slow_backend() -> None:
    time.sleep(1.2)
    state["done"] = True


async def wait_for_ready() -> None:
    while not state["done"]:
        await asyncio.sleep(0)  # the planted busy-poll


async def heartbeat() -> None:
    for _ in range(10):
        await asyncio.sleep(0.1)


async def amain() -> None:
    threading.Thread(target=slow_backend, name="backend").start()
    await asyncio.gather(wait_for_ready(), heartbeat())


def main() -> None:
    asyncio.run(amain())
