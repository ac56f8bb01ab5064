"""Planted: two different blocking calls on one event loop, each 40-60 ms per step:
requests.get in load_profile, and a time.sleep-based rate limiter in throttle_writes."""

import asyncio
import os
import sys
import time

import requests

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http

BASE = ""


def load_profile(session: requests.Session, user: int) -> bytes:
    return session.get(f"{BASE}/users/{user}", timeout=30).content  # blocks the loop


def throttle_writes() -> None:
    time.sleep(0.05)  # blocks the loop


async def read_handler(session: requests.Session, i: int) -> None:
    await asyncio.sleep(0.001)
    load_profile(session, i)


async def write_handler(i: int) -> None:
    await asyncio.sleep(0.001)
    throttle_writes()


async def amain() -> None:
    with requests.Session() as session:
        for _ in range(5):
            await asyncio.gather(
                *(read_handler(session, i) for i in range(4)), *(write_handler(i) for i in range(4))
            )


def main() -> None:
    global BASE
    server, BASE = _slow_http.start(0.045)
    asyncio.run(amain())
    server.shutdown()
