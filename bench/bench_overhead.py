"""Overhead of the full default recorder on four workloads, side by side with VizTracer
and yappi, in one run.

Each measurement is a fresh child process (so no tool's hooks leak into another
measurement) that times only the workload. Rounds interleave every workload and tool;
the figure is the median time with the tool over the median time without, with the
spread of the per-round ratios. Tools that are not installed are skipped.

    python bench/bench_overhead.py [--rounds 5] [--tools none,pyflight,...]

Ablation: a tool ``pyflight:gc+threads`` runs the recorder with only those sources,
``pyflight:blocking/locks=0`` with a source option, ``pyflight:`` with none (the cost
of the core and the recorder's own threads). ``pyflight@DIR`` imports pyflight from
DIR (e.g. an older build's ``src``), to compare two builds in one interleaved run.
Scale rows (not run by default): ``--workloads handoffs_1,handoffs_8,handoffs_64,
tasks_100,tasks_10000``; database queries (the ``dbapi`` source): ``--workloads sqlite_queries``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

# ---------------------------------------------------------------- workloads


def asyncio_queue() -> None:
    """Many small asyncio tasks passing items through asyncio.Queue."""

    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=64)
        items, producers, consumers = 100_000, 50, 50

        async def produce(n: int) -> None:
            for i in range(n):
                await q.put(i)

        async def consume() -> None:
            while True:
                item = await q.get()
                q.task_done()
                if item < 0:
                    return

        workers = [asyncio.create_task(consume()) for _ in range(consumers)]
        await asyncio.gather(*(produce(items // producers) for _ in range(producers)))
        for _ in workers:
            await q.put(-1)
        await asyncio.gather(*workers)

    asyncio.run(main())


def thread_pipeline() -> None:
    """A threaded queue.Queue pipeline: producer -> 2 workers -> collector."""
    first: queue.Queue[int | None] = queue.Queue(maxsize=100)
    second: queue.Queue[int | None] = queue.Queue(maxsize=100)
    items = 80_000

    def produce() -> None:
        for i in range(items):
            first.put(i)
        first.put(None)
        first.put(None)

    def work() -> None:
        while (item := first.get()) is not None:
            second.put(item * 2)
        second.put(None)

    def collect() -> None:
        done = 0
        while done < 2:
            if second.get() is None:
                done += 1

    threads = [threading.Thread(target=f) for f in (produce, work, work, collect)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def cpu_bound() -> None:
    """A CPU-bound pure-Python function (call-heavy: the worst case for tracers)."""

    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    fib(29)


def gc_heavy() -> None:
    """Allocation-heavy code that makes the cyclic GC run often."""
    keep = []
    for i in range(1_000_000):
        node: dict[str, object] = {"i": i}
        node["self"] = node  # a cycle: only the GC frees it
        if i % 1000 == 0:
            keep.append(node)
    gc.collect()


def thread_handoffs(n_threads: int) -> Callable[[], None]:
    """n_threads threads (at least 2) passing one token round a ring of queue.Queue
    (every hand-off blocks one thread and wakes another), 40,000 hand-offs in all."""

    def run() -> None:
        handoffs = 40_000
        queues: list[queue.Queue[int]] = [queue.Queue() for _ in range(max(2, n_threads))]
        n = len(queues)

        def member(i: int) -> None:
            inbox, outbox = queues[i], queues[(i + 1) % n]
            while True:
                token = inbox.get()
                if token >= handoffs:
                    outbox.put(token)
                    return
                outbox.put(token + 1)

        threads = [threading.Thread(target=member, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        queues[0].put(0)
        for t in threads:
            t.join()

    return run


def live_tasks(n_idle: int) -> Callable[[], None]:
    """The same 200,000 asyncio steps (ten tasks yielding to the loop) with n_idle
    other tasks alive and waiting all along: the cost must not grow with live tasks."""

    def run() -> None:
        async def main() -> None:
            forever = asyncio.Event()
            idle = [asyncio.create_task(forever.wait()) for _ in range(n_idle)]
            await asyncio.sleep(0)

            async def pinger(rounds: int) -> None:
                for _ in range(rounds):
                    await asyncio.sleep(0)

            await asyncio.gather(*(pinger(20_000) for _ in range(10)))
            forever.set()
            await asyncio.gather(*idle)

        asyncio.run(main())

    return run


def sqlite_queries() -> None:
    """A page of 20 orders and each order's customer looked up one query at a time (an
    N+1, as a lazy ORM does), 1,000 pages on an in-memory sqlite3: 21,000 small
    queries, each recorded by the ``dbapi`` source."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, total REAL)")
    db.executemany("INSERT INTO customer VALUES (?, ?)", [(i, f"c{i}") for i in range(1000)])
    db.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, i % 1000, i * 0.5) for i in range(20_000)])
    for page in range(1000):
        rows = db.execute("SELECT id, customer, total FROM orders LIMIT 20 OFFSET ?", (page * 20,)).fetchall()
        for _order, customer, _total in rows:
            db.execute("SELECT name FROM customer WHERE id = ?", (customer,)).fetchone()
    db.close()


WORKLOADS: dict[str, Callable[[], None]] = {
    "asyncio_queue": asyncio_queue,
    "thread_pipeline": thread_pipeline,
    "cpu_bound": cpu_bound,
    "gc_heavy": gc_heavy,
    "handoffs_1": thread_handoffs(1),
    "handoffs_8": thread_handoffs(8),
    "handoffs_64": thread_handoffs(64),
    "tasks_100": live_tasks(100),
    "tasks_10000": live_tasks(10_000),
    "sqlite_queries": sqlite_queries,
}
DEFAULT_WORKLOADS = ("asyncio_queue", "thread_pipeline", "cpu_bound", "gc_heavy")

# ---------------------------------------------------------------- tools


def recorder_args(tool: str) -> dict[str, object]:
    """FlightRecorder arguments for a tool name: "pyflight" is the default recorder;
    "pyflight:gc+blocking/locks=0" runs only the sources named (an ablation), with
    options after "/" (0/1 become booleans); "pyflight:" runs none."""
    if ":" not in tool:
        return {}
    names, options = [], {}
    for spec in filter(None, tool.split(":", 1)[1].split("+")):
        name, *opts = spec.split("/")
        names.append(name)
        for opt in opts:
            key, _, value = opt.partition("=")
            options.setdefault(name, {})[key] = {"0": False, "1": True}.get(value, value)
    return {"sources": names, "source_options": options}


def run_with(tool: str, workload: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU seconds the workload takes under ``tool`` (setup and teardown not
    counted). CPU time is the whole process's, the tool's own threads included: on a
    shared machine it moves much less than wall time with other jobs' load."""
    stop: Callable[[], None] = lambda: None  # noqa: E731
    if tool.startswith("pyflight"):
        import pyflight

        recorder = pyflight.FlightRecorder(**recorder_args(tool))
        recorder.start()
        stop = recorder.stop
    elif tool == "viztracer":
        from viztracer import VizTracer

        tracer = VizTracer(tracer_entries=2_000_000, verbose=0)
        tracer.start()
        stop = tracer.stop
    elif tool == "yappi":
        import yappi

        yappi.set_clock_type("wall")
        yappi.start()
        stop = yappi.stop
    start, cpu_start = time.perf_counter(), time.process_time()
    workload()
    took, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stop()
    return took, cpu


def available(tool: str) -> bool:
    module = {"viztracer": "viztracer", "yappi": "yappi"}.get(tool.partition("@")[0])
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def child(workload: str, tool: str) -> None:
    wall, cpu = run_with(tool, WORKLOADS[workload])
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu}))


def measure(workload: str, tool: str) -> tuple[float, float]:
    env = dict(os.environ)
    env["PYFLIGHT_PURE_PYTHON"] = "1" if tool == "pyflight-pure" else "0"
    tool, _, build = tool.partition("@")
    if build:  # "pyflight@/tmp/old/src": another build of pyflight, side by side
        env["PYTHONPATH"] = build
    out = subprocess.run(
        [sys.executable, __file__, "--child", workload, tool],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), float(result["cpu_seconds"])


def _cells(times: dict[tuple[str, str], list[float]], workload: str, tools: list[str]) -> list[str]:
    base = times[(workload, "none")]
    cells = []
    for t in tools:
        if t == "none":
            cells.append(f"{statistics.median(base) * 1000:19.0f} ms")
            continue
        ratios = [x / b for x, b in zip(times[(workload, t)], base, strict=True)]
        ratio = statistics.median(times[(workload, t)]) / statistics.median(base)
        low, high = (min(ratios) - 1) * 100, (max(ratios) - 1) * 100
        cells.append(f"{(ratio - 1) * 100:+7.1f}% [{low:+.0f}..{high:+.0f}]")
    return cells


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tools", default="none,pyflight,pyflight-pure,viztracer,yappi")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS), help=f"of {','.join(WORKLOADS)}")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    tools = [t for t in args.tools.split(",") if available(t)]
    workloads = args.workloads.split(",")
    walls: dict[tuple[str, str], list[float]] = {(w, t): [] for w in workloads for t in tools}
    cpus: dict[tuple[str, str], list[float]] = {(w, t): [] for w in workloads for t in tools}
    for _ in range(args.rounds):
        for w in workloads:
            for t in tools:
                wall, cpu = measure(w, t)
                walls[(w, t)].append(wall)
                cpus[(w, t)].append(cpu)
    for title, times in (("wall clock", walls), ("CPU time (whole process)", cpus)):
        print(f"{title}: python {sys.version.split()[0]}, {args.rounds} rounds, interleaved; each cell:")
        print("  median time with the tool / median time without, [min..max] of per-round ratios")
        print(f"  {'workload':16}" + "".join(f"{t:>24}" for t in tools))
        for w in workloads:
            print(f"  {w:16}" + "".join(f"{c:>24}" for c in _cells(times, w, tools)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
