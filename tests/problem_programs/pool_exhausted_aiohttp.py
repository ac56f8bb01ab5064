"""Planted: an asyncio client calls a partner API through aiohttp with a connection limit
of 2; twenty requests at once queue for a connection (a future aiohttp's connector awaits,
which no hook sees: the asyncio source's look at waiting tasks finds it)."""

import asyncio

import _slow_http
import aiohttp


async def fetch_quote(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        return await response.read()


async def amain(url: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
        await asyncio.gather(*(fetch_quote(session, url) for _ in range(20)))


def main() -> None:
    server, base = _slow_http.start(0.05)
    asyncio.run(amain(base + "/"))
    server.shutdown()
