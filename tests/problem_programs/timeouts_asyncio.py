"""Planted: four asyncio tasks quote prices from a partner with aiohttp and a
ClientTimeout of 0.3 s. The partner answers half of the calls in 20 ms and stalls on the
others, so those calls run into the timeout and fail. The cause is the partner's stalls;
"add timeouts" would be wrong, the client has them."""

import asyncio
import random
import time

import aiohttp
from aiohttp import web


async def stalling_partner(request: web.Request) -> web.Response:
    await asyncio.sleep(1.0 if random.random() < 0.5 else 0.02)  # half the calls stall
    return web.Response(text="42")


async def fetch_quote(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:  # TIMEOUT LINE: the partner stalls before answering
        return await response.text()


async def quoter(session: aiohttp.ClientSession, url: str, until: float, failures: list[int]) -> None:
    while time.monotonic() < until:
        try:
            await fetch_quote(session, url)
        except TimeoutError:
            failures.append(1)


async def amain() -> None:
    app = web.Application()
    app.router.add_get("/quote", stalling_partner)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    failures: list[int] = []
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        until = time.monotonic() + 2.5
        url = f"http://127.0.0.1:{port}/quote"
        await asyncio.gather(*(quoter(session, url, until, failures) for _ in range(4)))
    await runner.cleanup()
    assert failures, "no call timed out"


def main() -> None:
    random.seed(3)
    asyncio.run(amain())
