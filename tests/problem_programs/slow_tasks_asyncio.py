"""Planted: one asyncio request is slow because it does a blocking call in render_page."""

import asyncio
import time

import pyflight


def render_page() -> None:
    time.sleep(0.3)


async def handle(i: int) -> None:
    with pyflight.task("GET /page"):
        await asyncio.sleep(0.01)
        if i == 7:
            render_page()


async def amain() -> None:
    for i in range(20):
        await handle(i)


def main() -> None:
    asyncio.run(amain())
