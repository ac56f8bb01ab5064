"""Planted: worker tasks download reports with aiohttp from a slow partner that streams
each body in chunks 100 ms apart: the tasks spend their time waiting for the bodies to
trickle in (aiohttp's body read waits in ``StreamReader._wait``; nothing is sent between
the chunks, yet the program asked for them)."""

import asyncio

from aiohttp import ClientSession, web


async def report(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(6):
        await resp.write(b"x" * 2000 + b"\n")
        await asyncio.sleep(0.1)
    await resp.write_eof()
    return resp


async def download(session: ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        body = await resp.read()  # the waiting line
    return len(body)


async def worker(session: ClientSession, url: str, n: int) -> int:
    total = 0
    for _ in range(n):
        total += await download(session, url)
    return total


async def amain() -> None:
    app = web.Application()
    app.router.add_get("/report", report)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/report"
    async with ClientSession() as session:
        await asyncio.gather(*(worker(session, url, 3) for _ in range(4)))
    await runner.cleanup()


def main() -> None:
    asyncio.run(amain())


if __name__ == "__main__":
    main()
