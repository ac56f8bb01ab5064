"""Healthy: asyncio workers take jobs from a queue with ``asyncio.timeout(0.05)`` around
``queue.get()`` so that they look at a stop flag between jobs: the timeout runs out every
50 ms while the queue is empty, which is the design, not a failure. Meanwhile other tasks
download from a slow but answering server (I/O waits of their own, with no timeout)."""

import asyncio


async def slow_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    for _ in range(10):
        await asyncio.sleep(0.1)
        writer.write(b"chunk\n")
        await writer.drain()
    writer.close()


async def download(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET\n")
    received = 0
    while await reader.readline():  # the slow server's next chunk
        received += 1
    writer.close()
    return received


async def worker(jobs: asyncio.Queue[int], stop: asyncio.Event) -> int:
    done = 0
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.05):  # runs out while idle: looks at the stop flag
                await jobs.get()
        except TimeoutError:
            continue
        done += 1
    return done


async def amain() -> None:
    server = await asyncio.start_server(slow_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    jobs: asyncio.Queue[int] = asyncio.Queue()
    stop = asyncio.Event()
    workers = [asyncio.create_task(worker(jobs, stop)) for _ in range(2)]
    for i in range(3):
        jobs.put_nowait(i)
    assert all(await asyncio.gather(*(download(port) for _ in range(3))))
    stop.set()
    await asyncio.gather(*workers)
    server.close()
    await server.wait_closed()


def main() -> None:
    asyncio.run(amain())
