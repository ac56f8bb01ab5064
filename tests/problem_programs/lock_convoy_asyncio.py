"""Planted: request tasks hold one asyncio.Lock across a slow awaited call (a convoy)."""

import asyncio

SESSION_LOCK: "asyncio.Lock | None" = None
session = {"token": 0}


# asyncio lock and queue waits are opt-in (they cost ~1 us per wait that blocks)
PYFLIGHT_SOURCE_OPTIONS = {"asyncio": {"sync_waits": True}}


async def fake_network_call() -> int:
    await asyncio.sleep(0.015)  # slow I/O while the lock is held
    return 1


async def refresh_session(i: int) -> None:
    assert SESSION_LOCK is not None
    async with SESSION_LOCK:  # every request task queues up here
        session["token"] += await fake_network_call()


async def handle_request(i: int) -> None:
    await asyncio.sleep(0.001 * (i % 5))
    await refresh_session(i)


async def amain() -> None:
    global SESSION_LOCK
    SESSION_LOCK = asyncio.Lock()
    await asyncio.gather(*(handle_request(i) for i in range(40)))


def main() -> None:
    asyncio.run(amain())
