"""Planted: an asyncio client calls a partner API through aiohttp with a connection limit
of 2; twenty requests at once queue for a connection (a future aiohttp's connector awaits,
which no hook sees: the asyncio source's look at waiting tasks finds it)."""

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp


class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(0.05)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def fetch_quote(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        return await response.read()


async def amain(url: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as session:
        await asyncio.gather(*(fetch_quote(session, url) for _ in range(20)))


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    asyncio.run(amain(f"http://127.0.0.1:{server.server_port}/"))
    server.shutdown()
