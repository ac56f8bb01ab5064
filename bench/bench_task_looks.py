"""What the asyncio source's look at waiting tasks costs (sources/asyncio_loop.py).

The "pyflight-stalls" thread looks at the waiting tasks every ``TASK_LOOK_INTERVAL`` and
records the await chain of up to ``TASKS_PER_LOOK`` of them. This measures one look (the
CPU of the thread that runs it) with N live tasks waiting two coroutines deep on an
asyncio.Event, for several N, in one process each, and prints the median and spread of
``--rounds`` looks and the CPU share at the look rate the source uses for that N.

    taskset -c 1 python bench/bench_task_looks.py            # 10, 100, 1,000, 10,000 tasks
    taskset -c 1 python bench/bench_task_looks.py --tasks 500 --rounds 15
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _child(n_tasks: int, rounds: int) -> None:
    sys.path.insert(0, str(SRC))
    import pyflight
    from pyflight.sources import asyncio_loop

    async def leaf(event: asyncio.Event) -> None:
        await event.wait()

    async def middle(event: asyncio.Event) -> None:
        await leaf(event)

    async def main(recorder: pyflight.FlightRecorder) -> None:
        event = asyncio.Event()
        tasks = [asyncio.create_task(middle(event)) for _ in range(n_tasks)]
        await asyncio.sleep(0.05)
        (source,) = [s for s in recorder.sources if s.name == "asyncio"]
        hooks = source._hooks
        times = []
        for _ in range(rounds):
            hooks.looked_at.clear()  # every task is new to each look, as in a busy service
            started = time.thread_time_ns()
            hooks.look_at_waiting_tasks()
            times.append(time.thread_time_ns() - started)
        event.set()
        await asyncio.gather(*tasks)
        interval = max(asyncio_loop.TASK_LOOK_INTERVAL, n_tasks / asyncio_loop.TASK_SCAN_RATE)
        median = statistics.median(times)
        print(
            f"{n_tasks:>7,} tasks: a look {median / 1e3:7.0f} us "
            f"[{min(times) / 1e3:.0f}..{max(times) / 1e3:.0f}]  every {interval:.2f} s: "
            f"{100 * median / 1e9 / interval:.3f}% of a CPU",
            flush=True,
        )

    recorder = pyflight.FlightRecorder(sources=["asyncio"]).start()
    try:
        asyncio.run(main(recorder))
    finally:
        recorder.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10,100,1000,10000", help="comma-separated live task counts")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    print(
        f"Python {sys.version.split()[0]}: one look at the waiting tasks (median [min..max] of {args.rounds})"
    )
    for n in (int(x) for x in args.tasks.split(",")):
        subprocess.run([sys.executable, __file__, "--child", str(n), str(args.rounds)], check=True)


if __name__ == "__main__":
    main()
