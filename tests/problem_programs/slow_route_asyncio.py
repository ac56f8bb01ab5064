"""Planted: every asyncio request of one kind awaits ~300 ms in fetch_inventory (a slow
downstream call); the requests are sequential, so the service spends most of its time in
that one operation, with no outlier."""

import asyncio

import pyflight


async def fetch_inventory(sku: int) -> int:
    await asyncio.sleep(0.3)  # the planted slow downstream call
    return sku * 2


async def lookup_price(sku: int) -> int:
    await asyncio.sleep(0.002)
    return sku


async def handle(i: int) -> None:
    with pyflight.task("GET /inventory/{sku}"):
        await fetch_inventory(i)
    with pyflight.task("GET /price/{sku}"):
        await lookup_price(i)


async def amain() -> None:
    for i in range(8):
        await handle(i)


def main() -> None:
    asyncio.run(amain())
