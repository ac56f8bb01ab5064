"""Healthy: async handlers call a 50 ms service the right way (urlopen in the loop's
executor), so the loop stays free; steps are short."""

import asyncio
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http

BASE = ""


def fetch_rates(currency: str) -> bytes:
    return urllib.request.urlopen(f"{BASE}/rates/{currency}", timeout=30).read()


async def handle(i: int) -> None:
    await asyncio.sleep(0.001)
    await asyncio.to_thread(fetch_rates, "EUR" if i % 2 else "USD")


async def amain() -> None:
    for _ in range(6):
        await asyncio.gather(*(handle(i) for i in range(6)))
        await asyncio.sleep(0.05)


def main() -> None:
    global BASE
    server, BASE = _slow_http.start(0.05)
    asyncio.run(amain())
    server.shutdown()
