"""Planted: many writer tasks serialise on one connection's asyncio.Lock, taken with an
explicit acquire()/release(), while each write awaits a slow drain."""

import asyncio

# asyncio lock and queue waits are opt-in (they cost ~1 us per wait that blocks)
PYFLIGHT_SOURCE_OPTIONS = {"asyncio": {"sync_waits": True}}


class Connection:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.sent = 0

    async def drain(self) -> None:
        await asyncio.sleep(0.012)  # the peer reads slowly

    async def send_frame(self, payload: bytes) -> None:
        await self.lock.acquire()  # writers wait here for the previous write
        try:
            self.sent += len(payload)
            await self.drain()
        finally:
            self.lock.release()


async def publisher(conn: Connection, n: int) -> None:
    for i in range(n):
        await conn.send_frame(b"x" * (i + 1))


async def amain() -> None:
    conn = Connection()
    await asyncio.gather(*(publisher(conn, 4) for _ in range(12)))


def main() -> None:
    asyncio.run(amain())
