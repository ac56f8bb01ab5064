"""Cost of recording asyncio lock/queue waits (TASK_BLOCK, the ``sync_waits`` option).

Workloads (ns per operation, median [min..max] over interleaved rounds):

- ``lock-free``: ``async with lock: pass`` on an uncontended asyncio.Lock
- ``queue-free``: ``q.put_nowait(i); await q.get()`` (the get never blocks)
- ``ping-pong``: two tasks hand an item back and forth through two asyncio.Queues, so
  every ``get`` blocks (one TASK_BLOCK per hand-off): ns per hand-off

Configurations: ``none`` (no recorder), ``off`` (asyncio source, ``sync_waits=False``),
``on`` (asyncio source, default ``sync_waits=True``). The uncontended workloads must not
change from ``off`` to ``on``; ``ping-pong`` shows the cost of one record with a frame.

Usage: ``python bench/bench_asyncio_sync.py [--rounds N] [--n N]``; set
``PYFLIGHT_PURE_PYTHON=1`` for the Python core.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import pyflight
from _common import summary
from pyflight.core import BACKEND_NAME


async def lock_free(n: int) -> float:
    lock = asyncio.Lock()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        async with lock:
            pass
    return (time.perf_counter_ns() - t0) / n


async def queue_free(n: int) -> float:
    q: asyncio.Queue[int] = asyncio.Queue()
    t0 = time.perf_counter_ns()
    for i in range(n):
        q.put_nowait(i)
        await q.get()
    return (time.perf_counter_ns() - t0) / n


async def ping_pong(n: int) -> float:
    a: asyncio.Queue[int] = asyncio.Queue()
    b: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        for _ in range(n):
            b.put_nowait(await a.get())

    task = asyncio.create_task(echo())
    t0 = time.perf_counter_ns()
    for i in range(n):
        a.put_nowait(i)
        await b.get()
    elapsed = time.perf_counter_ns() - t0
    await task
    return elapsed / (2 * n)


WORKLOADS = {"lock-free": lock_free, "queue-free": queue_free, "ping-pong": ping_pong}
CONFIGS = ("none", "off", "on")


def run(config: str, workload: str, n: int) -> float:
    if config == "none":
        return asyncio.run(WORKLOADS[workload](n))
    opts = {"sync_waits": config == "on", "stall_threshold": 0}
    with pyflight.FlightRecorder(sources=["asyncio"], source_options={"asyncio": opts}):
        return asyncio.run(WORKLOADS[workload](n))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    print(f"core: {BACKEND_NAME}, ns per operation, median [min..max] of {args.rounds} rounds")
    for workload in WORKLOADS:
        results: dict[str, list[float]] = {c: [] for c in CONFIGS}
        run("on", workload, 1000)  # warm up
        for _ in range(args.rounds):
            for config in CONFIGS:
                results[config].append(run(config, workload, args.n))
        for config in CONFIGS:
            print(f"{workload:10s} {config:5s} {summary(results[config])}")


if __name__ == "__main__":
    main()
