"""Planted: a FastAPI service whose `def` endpoint makes a 100 ms blocking call; anyio's
thread limiter (which runs `def` endpoints) is at 8 threads, and clients come in bursts
of 32 requests with quiet spells between them: in each burst requests queue for a worker
thread (the time is in lookup_inventory's sleep, the wait in anyio's CapacityLimiter);
between bursts the workers sit idle in their loop, which is no work they were busy in."""

import asyncio
import threading
import time

import anyio.to_thread
import httpx
import uvicorn
from fastapi import FastAPI

app = FastAPI()


def lookup_inventory(item: int) -> dict[str, int]:
    time.sleep(0.1)  # a blocking driver call
    return {"item": item, "stock": 3}


@app.get("/item/{item}")
def get_item(item: int) -> dict[str, int]:
    return lookup_inventory(item)


async def clients(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(3):
            await asyncio.gather(*(client.get(f"/item/{i}") for i in range(32)))
            await asyncio.sleep(0.6)  # a quiet spell: the workers idle


def main() -> None:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="asyncio", lifespan="off")
    )
    limited = threading.Event()

    async def serve() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 8
        limited.set()
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="uvicorn")
    thread.start()
    while not server.started:
        time.sleep(0.01)
    limited.wait()
    port = server.servers[0].sockets[0].getsockname()[1]
    asyncio.run(clients(port))
    server.should_exit = True
    thread.join()
