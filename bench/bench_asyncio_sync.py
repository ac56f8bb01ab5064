"""Cost of recording asyncio lock/queue waits (TASK_BLOCK, the ``sync_waits`` option).

Workloads (ns per operation, median [min..max] over interleaved rounds):

- ``lock-free``: ``async with lock: pass`` on an uncontended asyncio.Lock
- ``queue-free``: ``q.put_nowait(i); await q.get()`` (the get never blocks)
- ``ping-pong``: two tasks hand an item back and forth through two asyncio.Queues, so
  every ``get`` blocks (one TASK_BLOCK per hand-off): ns per hand-off
- ``ping-pong-lib``: the same, each ``get`` made 15 frames down an installed-looking
  library (the waiting site then includes the library's callers)

Configurations: ``none`` (no recorder), ``off`` (asyncio source, ``sync_waits=False``),
``on`` (asyncio source, default ``sync_waits=True``). The uncontended workloads must not
change from ``off`` to ``on``; ``ping-pong`` shows the cost of one record with a frame.

Usage: ``python bench/bench_asyncio_sync.py [--rounds N] [--n N] [--workloads W...]
[--configs C...]``; set
``PYFLIGHT_PURE_PYTHON=1`` for the Python core.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

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


#: An installed-looking library (a ``site-packages`` directory of its own) whose coroutine
#: awaits the queue 15 frames down: the waiting line is a library's, so the hook walks its
#: callers up to the program's own frame (docs/performance.md, "What truer asyncio waits cost").
_LIBRARY = """
async def wait(q, depth):
    if depth:
        return await wait(q, depth - 1)
    return await q.get()
"""
LIBRARY_DEPTH = 15


def _library() -> Any:
    import importlib.util
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pyflight-bench-")) / "site-packages"
    root.mkdir()
    (root / "benchlib.py").write_text(_LIBRARY, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("benchlib", root / "benchlib.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def ping_pong_lib(n: int) -> float:
    """ping-pong with every get made inside a library, LIBRARY_DEPTH frames down."""
    lib = _library()
    a: asyncio.Queue[int] = asyncio.Queue()
    b: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        for _ in range(n):
            b.put_nowait(await lib.wait(a, LIBRARY_DEPTH))

    task = asyncio.create_task(echo())
    t0 = time.perf_counter_ns()
    for i in range(n):
        a.put_nowait(i)
        await lib.wait(b, LIBRARY_DEPTH)
    elapsed = time.perf_counter_ns() - t0
    await task
    return elapsed / (2 * n)


WORKLOADS = {
    "lock-free": lock_free,
    "queue-free": queue_free,
    "ping-pong": ping_pong,
    "ping-pong-lib": ping_pong_lib,
}
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
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    args = parser.parse_args()
    print(f"core: {BACKEND_NAME}, ns per operation, median [min..max] of {args.rounds} rounds")
    for workload in args.workloads:
        results: dict[str, list[float]] = {c: [] for c in args.configs}
        run("on", workload, 1000)  # warm up
        for _ in range(args.rounds):
            for config in args.configs:
                results[config].append(run(config, workload, args.n))
        for config in args.configs:
            print(f"{workload:13s} {config:5s} {summary(results[config])}")


if __name__ == "__main__":
    main()
