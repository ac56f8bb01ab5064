"""Analysis throughput: pyflight.analysis.build (plus breakdowns and profiles) of a
~1,000,000-event trace recorded from a busy program with all default sources: asyncio
tasks stepping and awaiting queues, threads contending a lock and a queue.Queue, user
tasks and regions, GC, the sampler. Prints events/s and seconds, median [min..max]."""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import tempfile
import threading
import time

from _common import summary

TARGET_EVENTS = 1_000_000
ROUNDS = 3


def _workload(stop: threading.Event) -> None:
    """Threads and an event loop keeping every source busy until ``stop`` is set."""
    import pyflight

    lock = threading.Lock()
    jobs: queue.Queue[int] = queue.Queue(maxsize=8)

    def contender() -> None:
        while not stop.is_set():
            with lock:
                sum(range(200))

    def producer() -> None:
        i = 0
        while not stop.is_set():
            try:
                jobs.put(i, timeout=0.05)
            except queue.Full:
                pass
            i += 1

    def consumer() -> None:
        while not stop.is_set():
            try:
                jobs.get(timeout=0.05)
            except queue.Empty:
                continue
            with pyflight.task("job"), pyflight.region("work"):
                sum(range(100))

    async def stepper(q: asyncio.Queue[int]) -> None:
        while not stop.is_set():
            await asyncio.sleep(0)
            await q.put(1)

    async def drainer(q: asyncio.Queue[int]) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(q.get(), 0.05)
            except TimeoutError:
                pass

    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=16)
        tasks = [asyncio.create_task(stepper(q)) for _ in range(20)]
        tasks += [asyncio.create_task(drainer(q)) for _ in range(10)]
        while not stop.is_set():
            await asyncio.sleep(0.01)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    threads = [
        threading.Thread(target=f, name=f.__name__, daemon=True)
        for f in (contender, contender, producer, consumer, consumer)
    ]
    threads.append(threading.Thread(target=lambda: asyncio.run(main()), name="loop", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def make_trace(path: str) -> int:
    """Record the workload until the window holds about TARGET_EVENTS events."""
    import pyflight

    stop = threading.Event()
    with pyflight.FlightRecorder(min_age=3600, max_bytes=1024 * 2**20) as rec:
        runner = threading.Thread(target=_workload, args=(stop,), name="workload")
        runner.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            stats = rec.stats()
            if int(stats.get("events", 0)) >= TARGET_EVENTS:
                break
        stop.set()
        runner.join()
        rec.write_to(path)
    return len(pyflight.load(path).events)


def main() -> int:
    import pyflight
    from pyflight.analysis import (
        blocking_profile,
        build,
        cpu_profile,
        stall_profile,
        task_breakdown,
        thread_breakdown,
        wall_profile,
    )
    from pyflight.core import BACKEND_NAME
    from pyflight.core.events import BlockReason

    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "busy.pyfl")
    if not os.path.exists(path):
        make_trace(path)
    trace = pyflight.load(path)
    n = len(trace.events)
    kinds = ", ".join(f"{k.name} {c:,}" for k, c in trace.count_by_kind().most_common(6))
    print(f"python {sys.version.split()[0]} ({BACKEND_NAME} core): {n:,} events ({kinds}, ...)")
    build_s, all_s, cpu_s = [], [], []
    for _ in range(ROUNDS):
        c0 = time.process_time()
        t0 = time.perf_counter()
        model = build(trace)
        t1 = time.perf_counter()
        cpu_s.append(time.process_time() - c0)
        thread_breakdown(model)
        task_breakdown(model)
        cpu_profile(model)
        wall_profile(model)
        stall_profile(model)
        for reason in BlockReason:
            blocking_profile(model, reason)
        t2 = time.perf_counter()
        build_s.append(t1 - t0)
        all_s.append(t2 - t0)
    for label, secs in (
        ("build():                    ", build_s),
        ("build(), CPU time:          ", cpu_s),
        ("build + breakdowns/profiles:", all_s),
    ):
        print(f"  {label} {summary(secs)} s, {summary([n / s / 1e3 for s in secs])} k events/s")
    print(
        f"  model: {len(model.threads)} threads, {len(model.all_tasks()):,} tasks, "
        f"{sum(len(t.intervals) for t in model.threads.values()):,} thread intervals, "
        f"{len(model.samples):,} samples, {len(model.user_tasks):,} user tasks"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
