"""Planted: asyncio sends many blocking calls to a small executor."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor


def blocking_lookup(i: int) -> int:
    time.sleep(0.06)
    return i


async def amain() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=3, thread_name_prefix="lookup"))
    await asyncio.gather(*(loop.run_in_executor(None, blocking_lookup, i) for i in range(60)))


def main() -> None:
    asyncio.run(amain())
