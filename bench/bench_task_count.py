"""What the metrics source's ``asyncio_tasks`` counter costs its thread (sources/metrics.py).

With the asyncio source on, the counter is the size of that source's live-task table;
without it, ``asyncio.all_tasks`` per loop, which visits every task ten times a second.
This runs the default recorder over N tasks waiting on an asyncio.Event and measures
the CPU clock of the thread the counters are sampled on ("pyflight-ticker", shared with
the recorder's tick, which costs the same both ways) over ``--seconds``, alternating the
two ways of counting in one process (``metrics.count_tasks_with(None)`` forces the fallback),
and prints the median and spread of ``--rounds`` periods each, in ms of CPU a second.

    taskset -c 1 python bench/bench_task_count.py              # 1,000 and 10,000 tasks
    taskset -c 1 python bench/bench_task_count.py --tasks 100 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

from _common import summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import pyflight
from pyflight.sources import metrics


def _metrics_cpu_ns() -> int:
    (thread,) = [t for t in threading.enumerate() if t.name == metrics.THREAD_NAME]
    assert thread.ident is not None
    return time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))


async def _measure(n_tasks: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    event = asyncio.Event()
    tasks = [asyncio.create_task(event.wait()) for _ in range(n_tasks)]
    await asyncio.sleep(0.5)  # the recorder and the tasks settled
    counter = metrics._task_counter
    assert counter is not None, "the asyncio source did not hand the metrics source its counter"
    out: dict[str, list[float]] = {"live-task table": [], "asyncio.all_tasks": []}
    for _ in range(rounds):
        for way, count_with in (("live-task table", counter), ("asyncio.all_tasks", None)):
            metrics.count_tasks_with(count_with)
            before = _metrics_cpu_ns()
            await asyncio.sleep(seconds)
            out[way].append((_metrics_cpu_ns() - before) / seconds / 1e6)
    metrics.count_tasks_with(counter)
    event.set()
    await asyncio.gather(*tasks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="*", default=[1_000, 10_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}: the metrics thread's CPU, ms a second, median [min..max]")
    for n in args.tasks:
        with pyflight.FlightRecorder():
            result = asyncio.run(_measure(n, args.rounds, args.seconds))
        cells = "   ".join(f"{way}: {summary(values)}" for way, values in result.items())
        print(f"  {n:>7,} tasks   {cells}")


if __name__ == "__main__":
    main()
