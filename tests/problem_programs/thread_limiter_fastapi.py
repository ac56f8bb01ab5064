"""Planted: a FastAPI service whose `def` endpoint makes a 50 ms blocking call; anyio's
thread limiter (which runs `def` endpoints) is down to 3 threads while 12 clients call
it at once, so requests queue for a worker thread (the time is in lookup_inventory's
sleep, the wait in anyio's CapacityLimiter), not in the endpoint."""

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread
import httpx
import uvicorn
from fastapi import FastAPI

app = FastAPI()


def lookup_inventory(item: int) -> dict[str, int]:
    time.sleep(0.05)  # a blocking driver call
    return {"item": item, "stock": 3}


@app.get("/item/{item}")
def get_item(item: int) -> dict[str, int]:
    return lookup_inventory(item)


async def clients(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(4):
            await asyncio.gather(*(client.get(f"/item/{i}") for i in range(12)))


def main() -> None:
    serve_and_call(clients, threads=3)


def serve_and_call(call: Callable[[int], Coroutine[Any, Any, None]], threads: int) -> None:
    """The service on loopback, its limiter at ``threads``, while ``call(port)`` runs."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="asyncio", lifespan="off")
    )
    limited = threading.Event()

    async def serve() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        limited.set()
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="uvicorn")
    thread.start()
    while not server.started:
        time.sleep(0.01)
    limited.wait()
    port = server.servers[0].sockets[0].getsockname()[1]
    asyncio.run(call(port))
    server.should_exit = True
    thread.join()
