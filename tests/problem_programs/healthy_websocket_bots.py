"""Healthy: trading bots following a WebSocket price feed: two ``asyncio.run`` whose main
coroutine iterates the socket (``async for message in ws``), one on the websockets client,
one on aiohttp's ``ws_connect``; and, meanwhile, a thread on websockets' sync client
(``for message in ws``, which waits in C). A server in a thread (websockets, its own loop)
pushes a price every 0.1-0.2 s (ten each). Each bot waits for the next price: listening,
not I/O it waits for."""

import asyncio
import json
import random
import threading

import aiohttp
import websockets
from websockets.sync.client import connect


async def feed(ws) -> None:
    for i in range(10):
        await asyncio.sleep(random.uniform(0.1, 0.2))  # the market moves
        await ws.send(json.dumps({"seq": i, "price": 100 + random.random()}))


def serve(port_box: list, ready: threading.Event, stop: threading.Event) -> None:
    async def run() -> None:
        async with websockets.serve(feed, "127.0.0.1", 0) as server:
            port_box.append(server.sockets[0].getsockname()[1])
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(run())


def decide(tick: dict) -> float:
    return sum(tick["price"] * k for k in range(200))


async def bot(url: str) -> None:
    async with websockets.connect(url) as ws:
        async for message in ws:  # the feed's next price
            decide(json.loads(message))


def sync_bot(url: str) -> None:
    with connect(url) as ws:
        for message in ws:  # the feed's next price
            decide(json.loads(message))


async def aiohttp_bot(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        async for msg in ws:
            decide(json.loads(msg.data))


def main() -> None:
    port_box: list = []
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(port_box, ready, stop), name="feed-server")
    thread.start()
    ready.wait()
    url = f"ws://127.0.0.1:{port_box[0]}/"
    follower = threading.Thread(target=sync_bot, args=(url,), name="sync-bot")
    follower.start()
    asyncio.run(bot(url))
    asyncio.run(aiohttp_bot(url))
    follower.join()
    stop.set()
    thread.join()


if __name__ == "__main__":
    main()
