"""Planted: on uvloop (uvicorn's loop when installed), coroutines call a synchronous
driver that blocks the loop 80 ms each time; a heartbeat task is held up meanwhile.
uvloop's steps cannot be recorded: the traced blocking calls inside them tell it."""

import asyncio
import time

import uvloop


def load_profile_sync(user: int) -> dict[str, int]:
    time.sleep(0.08)  # a synchronous database driver, called from a coroutine
    return {"user": user}


async def get_profile(user: int) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return load_profile_sync(user)


async def heartbeat() -> None:
    for _ in range(100):
        await asyncio.sleep(0.01)


async def serve() -> None:
    await asyncio.gather(heartbeat(), *(get_profile(u) for u in range(15)))


def main() -> None:
    uvloop.run(serve())


if __name__ == "__main__":
    main()
