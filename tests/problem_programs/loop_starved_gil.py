"""Planted: a thread runs C code that holds the GIL (sum over a big range); the event
loop's own steps are short, but every wake-up waits for the GIL."""

import asyncio
import threading
import time

stop = threading.Event()


def spin_cpu() -> None:
    while not stop.is_set():
        sum(range(3_000_000))  # one C call, ~30+ ms without releasing the GIL


async def tick(i: int) -> None:
    for _ in range(30):
        await asyncio.sleep(0.005)


async def amain() -> None:
    await asyncio.gather(*(tick(i) for i in range(10)))


def main() -> None:
    worker = threading.Thread(target=spin_cpu, name="number-cruncher")
    worker.start()
    time.sleep(0.05)
    try:
        asyncio.run(amain())
    finally:
        stop.set()
        worker.join()
