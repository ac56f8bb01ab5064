"""Healthy: an aiohttp WebSocket service with five connected clients, each sending a
message every 0.3-0.6 s and getting it back in capitals. The server's handlers spend
their lives in ``ws.receive`` waiting for their clients: idle connections."""

import asyncio
import random

from aiohttp import ClientSession, WSMsgType, web


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:  # the client's next message
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data.upper())
    return ws


async def client(url: str, messages: int) -> None:
    async with ClientSession() as session, session.ws_connect(url) as ws:
        for i in range(messages):
            await asyncio.sleep(random.uniform(0.3, 0.6))  # the user types
            await ws.send_str(f"hello {i}")
            await ws.receive()


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.gather(*(client(f"http://127.0.0.1:{port}/ws", 4) for _ in range(5)))
    await runner.cleanup()


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
