"""Planted: the service of ``thread_limiter_fastapi`` (a `def` endpoint making a 50 ms
blocking call) with anyio's thread limiter at 8 threads, and clients coming in bursts of
32 requests with quiet spells between them: in each burst requests queue for a worker
thread (the time is in lookup_inventory's sleep, the wait in anyio's CapacityLimiter);
between bursts the workers sit idle in their loop, which is no work they were busy in."""

import asyncio

import httpx
from thread_limiter_fastapi import serve_and_call


async def bursts(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(3):
            await asyncio.gather(*(client.get(f"/item/{i}") for i in range(32)))
            await asyncio.sleep(0.6)  # a quiet spell: the workers idle


def main() -> None:
    serve_and_call(bursts, threads=8)


if __name__ == "__main__":
    main()
