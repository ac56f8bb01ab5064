"""Planted: an asyncio crawler bounds its downstream calls with a Semaphore(2), so the
request tasks queue on it (the bound at work: the fix is the limit, not a lock)."""

import asyncio

DOWNSTREAM: "asyncio.Semaphore | None" = None


async def call_downstream(i: int) -> int:
    assert DOWNSTREAM is not None
    async with DOWNSTREAM:  # at most two calls at once: the others wait here
        await asyncio.sleep(0.03)  # the downstream service's answer
    return i


async def handle_request(i: int) -> None:
    await call_downstream(i)
    await asyncio.sleep(0.001)


async def amain() -> None:
    global DOWNSTREAM
    DOWNSTREAM = asyncio.Semaphore(2)
    for _ in range(3):
        await asyncio.gather(*(handle_request(i) for i in range(20)))


def main() -> None:
    asyncio.run(amain())
