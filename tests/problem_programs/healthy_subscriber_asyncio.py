"""Healthy: an asyncio service keeps two background tasks subscribed to feeds (a broker's
line feed over asyncio streams, and an aiohttp WebSocket that pushes prices) while its
main task does the program's work. The listeners spend their lives waiting for the next
push: idle, not I/O the program asked for (after subscribing they send nothing)."""

import asyncio
import hashlib

from aiohttp import ClientSession, web


async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()  # the SUBSCRIBE line
    for n in range(14):
        await asyncio.sleep(0.15)
        writer.write(f"event {n}\n".encode())
    writer.write(b"bye\n")
    await writer.drain()
    writer.close()


async def prices(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.receive()  # the subscription
    for n in range(12):
        await asyncio.sleep(0.18)
        await ws.send_str(f"price {100 + n}")
    await ws.close()
    return ws


async def follow_feed(port: int, handled: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"SUBSCRIBE news\n")
    await writer.drain()
    while (line := await reader.readline()) not in (b"", b"bye\n"):
        handled.append(hashlib.sha1(line).hexdigest())
    writer.close()
    await writer.wait_closed()


async def follow_prices(url: str, handled: list[str]) -> None:
    async with ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str("SUBSCRIBE prices")
        async for msg in ws:
            handled.append(hashlib.sha1(msg.data.encode()).hexdigest())


async def work(seconds: float) -> None:
    data = b"x" * 4096
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        for _ in range(20):
            data = hashlib.sha256(data).digest() * 128
        await asyncio.sleep(0.005)


async def amain() -> None:
    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    app = web.Application()
    app.router.add_get("/prices", prices)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    handled: list[str] = []
    listeners = [
        asyncio.create_task(follow_feed(server.sockets[0].getsockname()[1], handled)),
        asyncio.create_task(follow_prices(f"http://127.0.0.1:{runner.addresses[0][1]}/prices", handled)),
    ]
    await work(2.0)
    await asyncio.gather(*listeners)
    await runner.cleanup()
    server.close()
    await server.wait_closed()


def main() -> None:
    asyncio.run(amain())


if __name__ == "__main__":
    main()
