"""Healthy: an asyncio line server (``asyncio.start_server``) with six keep-alive
clients, each sending a command every 0.3-0.6 s and getting a quick answer. The
server's connection handlers spend their lives waiting for their clients' next
commands: idle connections, not I/O the server waits on."""

import asyncio
import hashlib
import random


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():  # the client's next command
        writer.write(hashlib.sha1(line).hexdigest().encode() + b"\n")
        await writer.drain()
    writer.close()


async def client(port: int, commands: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(commands):
        await asyncio.sleep(random.uniform(0.3, 0.6))  # the user thinks
        writer.write(f"GET key{i}\n".encode())
        await writer.drain()
        await reader.readline()
    writer.close()
    await writer.wait_closed()


async def serve() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await asyncio.gather(*(client(port, 4) for _ in range(6)))


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
