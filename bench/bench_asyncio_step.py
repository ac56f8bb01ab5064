"""Cost of the asyncio source on small-step asyncio code.

Many small tasks pass items through ``asyncio.Queue`` (pipelines of stages, each stage
a task doing ``await q_in.get()`` / ``q_out.put_nowait(item)``), so nearly all the time is
scheduler steps. Each configuration runs in its own child process, rounds interleaved;
the time per item-hop is summarised as median [min..max] and the medians as ratios to
no recorder:

- ``none``: no recorder
- ``c``: FlightRecorder(sources=["asyncio"]) with the C core (C ``Handle._run``)
- ``c-what``: the same with ``task_wait="what"`` (a TASK_WAIT after each step)
- ``c-stack``: the same with ``task_wait="stack"`` (TASK_WAIT carries the awaiting frame)
- ``c-default``: every default source (threads, gc, metrics, sampler, blocking, asyncio)
- ``python``: the pure-Python core (PYFLIGHT_PURE_PYTHON=1), Python ``Handle._run``

A second table, ``steps``, isolates the cost per scheduler step: tasks that only
``await asyncio.sleep(0)`` (one task step per iteration, nothing else), ns per step.

Usage: ``python bench/bench_asyncio_step.py [--rounds N] [--items N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from _common import c_core_available, summary

PIPELINES = 20
STAGES = 5
CONFIGS = ("none", "c", "c-what", "c-stack", "c-default", "python")


async def _stage(q_in: asyncio.Queue[int | None], q_out: asyncio.Queue[int | None]) -> None:
    while True:
        item = await q_in.get()
        q_out.put_nowait(item)
        if item is None:
            return


async def _workload(items: int) -> float:
    """Seconds per item-hop for PIPELINES pipelines of STAGES stages, items each."""
    heads: list[asyncio.Queue[int | None]] = []
    tails: list[asyncio.Queue[int | None]] = []
    tasks = []
    for _ in range(PIPELINES):
        queues: list[asyncio.Queue[int | None]] = [asyncio.Queue(maxsize=8) for _ in range(STAGES + 1)]
        heads.append(queues[0])
        tails.append(queues[-1])
        tasks += [asyncio.create_task(_stage(queues[i], queues[i + 1])) for i in range(STAGES)]

    async def feed(q: asyncio.Queue[int | None]) -> None:
        for i in range(items):
            await q.put(i)
        await q.put(None)

    async def drain(q: asyncio.Queue[int | None]) -> None:
        while await q.get() is not None:
            pass

    start = time.perf_counter()
    await asyncio.gather(*(feed(q) for q in heads), *(drain(q) for q in tails), *tasks)
    elapsed = time.perf_counter() - start
    return elapsed / (items * PIPELINES * STAGES)


async def _steps(items: int) -> float:
    """Seconds per step for PIPELINES * STAGES tasks each yielding `items` times."""

    async def yielder() -> None:
        for _ in range(items):
            await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(*(yielder() for _ in range(PIPELINES * STAGES)))
    return (time.perf_counter() - start) / (items * PIPELINES * STAGES)


def child(config: str, items: int, repeats: int) -> None:
    recorder = None
    if config != "none":
        import pyflight

        options: dict[str, dict[str, object]] = {}
        if config == "c-stack":
            options = {"asyncio": {"task_wait": "stack"}}
        elif config == "c-what":
            options = {"asyncio": {"task_wait": "what"}}
        sources = None if config == "c-default" else ["asyncio"]
        recorder = pyflight.FlightRecorder(
            max_bytes=64 * 2**20, sources=sources, source_options=options
        ).start()
    asyncio.run(_workload(items // 10))  # warm up
    events0 = recorder.stats()["events"] if recorder else 0
    per_hop = min(asyncio.run(_workload(items)) for _ in range(repeats))
    events = (recorder.stats()["events"] - events0) / repeats if recorder else 0
    per_step = min(asyncio.run(_steps(items)) for _ in range(repeats))
    if recorder is not None:
        core = recorder.stats()["core"]
        recorder.stop()
    else:
        core = "-"
    print(
        json.dumps(
            {
                "ns": per_hop * 1e9,
                "step_ns": per_step * 1e9,
                "events_per_hop": events / (items * PIPELINES * STAGES),
                "core": core,
            }
        )
    )


def run_child(config: str, items: int, repeats: int) -> dict[str, float]:
    env = dict(os.environ)
    env["PYFLIGHT_PURE_PYTHON"] = "1" if config == "python" else "0"
    argv = [sys.executable, __file__, "--child", config, "--items", str(items), "--repeats", str(repeats)]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.items, args.repeats)
        return 0
    if args.quick:
        args.rounds, args.items = 3, 500
    configs = [c for c in CONFIGS if c_core_available() or not c.startswith("c")]
    ns: dict[str, list[float]] = {c: [] for c in configs}
    step_ns: dict[str, list[float]] = {c: [] for c in configs}
    events: dict[str, float] = {}
    for _ in range(args.rounds):
        for config in configs:
            result = run_child(config, args.items, args.repeats)
            ns[config].append(result["ns"])
            step_ns[config].append(result["step_ns"])
            events[config] = result["events_per_hop"]
    print(
        f"asyncio small steps: {PIPELINES} pipelines x {STAGES} stages, {args.items} items, "
        f"{args.rounds} interleaved rounds, Python {sys.version.split()[0]}"
    )
    base = statistics.median(ns["none"])
    print(f"{'config':10} {'ns per item-hop':>30} {'ratio':>7} {'events/hop':>11}")
    for config in configs:
        ratio = statistics.median(ns[config]) / base
        print(f"{config:10} {summary(ns[config]):>30} {ratio:7.3f} {events.get(config, 0):11.2f}")
    base_step = statistics.median(step_ns["none"])
    print(f"\nsteps only ({PIPELINES * STAGES} tasks awaiting asyncio.sleep(0)):")
    print(f"{'config':10} {'ns per step':>30} {'ratio':>7} {'+ns/step':>9}")
    for config in configs:
        median = statistics.median(step_ns[config])
        print(
            f"{config:10} {summary(step_ns[config]):>30} {median / base_step:7.3f} {median - base_step:9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
