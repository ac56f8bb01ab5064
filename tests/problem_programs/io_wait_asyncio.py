"""Planted: asyncio tasks fetch prices from a slow partner service over asyncio streams:
most of their time is spent awaiting its answers (a socket read no hook sees)."""

import asyncio
import socket
import threading
import time


def serve(listener: socket.socket) -> None:
    """The partner: a thread per connection, 120 ms per answer."""

    def answer(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as requests:
            for _line in requests:
                time.sleep(0.12)  # the partner is slow
                conn.sendall(b"42.0\n")

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


async def fetch_price(port: int, symbols: list[str]) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    prices = []
    for symbol in symbols:
        writer.write(symbol.encode() + b"\n")
        prices.append(float(await reader.readline()))  # the waiting line
    writer.close()
    await writer.wait_closed()
    return prices


async def amain(port: int) -> None:
    symbols = [f"SYM{i}" for i in range(8)]
    await asyncio.gather(*(fetch_price(port, symbols) for _ in range(6)))


def main() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    asyncio.run(amain(listener.getsockname()[1]))
    listener.close()
