"""Healthy: short asyncio tasks, a small pool with spare capacity, a little CPU."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyflight


def small_job(i: int) -> int:
    return sum(range(1000)) + i


async def request(i: int, pool: ThreadPoolExecutor) -> None:
    with pyflight.task("request"):
        await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(pool, small_job, i)


async def amain() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(6):
            await asyncio.gather(*(request(i, pool) for i in range(10)))
            await asyncio.sleep(0.05)


def background() -> None:
    lock = threading.Lock()
    for _ in range(20):
        with lock:
            pass
        time.sleep(0.02)


def main() -> None:
    t = threading.Thread(target=background, name="housekeeping")
    t.start()
    asyncio.run(amain())
    t.join()
