"""Planted: an event loop in a worker thread (next to a busy main thread) whose handlers
call a 40 ms service through a synchronous requests.get in check_stock."""

import asyncio
import os
import sys
import threading

import requests

sys.path.insert(0, os.path.dirname(__file__))
import _slow_http

BASE = ""


def check_stock(sku: int) -> bytes:
    return requests.get(f"{BASE}/stock/{sku}", timeout=30).content  # blocks the loop


async def handle(sku: int) -> None:
    await asyncio.sleep(0.002)
    check_stock(sku)


async def serve() -> None:
    for _ in range(8):
        await asyncio.gather(*(handle(i) for i in range(5)))


def main() -> None:
    global BASE
    server, BASE = _slow_http.start(0.04)
    loop_thread = threading.Thread(target=lambda: asyncio.run(serve()), name="api-loop")
    loop_thread.start()
    loop_thread.join()
    server.shutdown()
