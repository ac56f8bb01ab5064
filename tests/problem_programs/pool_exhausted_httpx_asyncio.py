"""Planted: an asyncio service fans out twelve quote requests at a time through one
httpx.AsyncClient whose pool holds two connections (max_connections=2); each call takes
60 ms, so the tasks queue for a connection inside httpcore (in fetch_quote), not for the
server. httpcore waits through anyio's Event, the same line as anyio's other waits (its
connect): the wait must still be told by its own stack."""

import asyncio
import os
import sys

import httpx

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http


async def fetch_quote(client: httpx.AsyncClient, base: str, n: int) -> bytes:
    response = await client.get(f"{base}/quotes/{n}")
    return response.content


async def fan_out(base: str, max_connections: int) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=max_connections), timeout=30) as client:
        for batch in range(4):
            await asyncio.gather(*(fetch_quote(client, base, batch * 100 + i) for i in range(12)))


def run(max_connections: int) -> None:
    server, base = _slow_http.start(0.06)
    asyncio.run(fan_out(base, max_connections))
    server.shutdown()


def main() -> None:
    run(max_connections=2)
