"""Planted: async handlers call a 50 ms service with a synchronous urllib.request.urlopen
in fetch_rates: no step reaches 100 ms, but the loop is blocked most of the time."""

import asyncio
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http

BASE = ""


def fetch_rates(currency: str) -> bytes:
    return urllib.request.urlopen(f"{BASE}/rates/{currency}", timeout=30).read()  # blocks the loop


async def handle(i: int) -> None:
    await asyncio.sleep(0.001)
    fetch_rates("EUR" if i % 2 else "USD")


async def amain() -> None:
    for _ in range(6):
        await asyncio.gather(*(handle(i) for i in range(6)))


def main() -> None:
    global BASE
    server, BASE = _slow_http.start(0.05)
    asyncio.run(amain())
    server.shutdown()
