"""CPU cost of the stack sampler at its default settings: per tick and as a share of one CPU.

The workload is N threads blocked in ``Event.wait`` 20 calls deep (a server's idle
workers), plus the main thread; with ``--busy``, one more thread runs Python code (CPU
bound, as deep): then the GIL is held at the tick and the native stack reader reads it.
Each measurement runs in its own process with the C core (``c``), the C core with the
native stack reader off (``c-gil``: the sampler takes the GIL to see every thread) or the
pure-Python core (``PYFLIGHT_PURE_PYTHON``); rounds interleave cores and thread counts.
A tick's cost is the sampling thread's whole CPU time per cycle (waking up
included), from its own accounting; the share of one CPU comes from the thread's CPU
clock read from outside, over a window that starts after a warm-up.

    python bench/bench_sampler.py [--rounds N] [--seconds S] [--threads 1,4,16] [--no-state] [--busy]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from _common import CORES, c_core_available, run_in_core

WARMUP_S = 0.5
HOT_TICKS = 200
DEPTH = 20


def _summary(values: list[float], digits: int = 1) -> str:
    """``median [min..max]``."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}..{max(values):.{digits}f}]"


def _blocked(depth: int, event: threading.Event) -> None:
    if depth:
        _blocked(depth - 1, event)
    else:
        event.wait()


def _busy(depth: int, stop: threading.Event) -> None:
    if depth:
        _busy(depth - 1, stop)
    else:
        n = 0
        while not stop.is_set():
            n += 1


def child(n_threads: int, seconds: float, thread_state: bool, native: bool, busy: bool) -> dict[str, object]:
    import pyflight
    from pyflight.core import BACKEND_NAME
    from pyflight.sources.sampler import THREAD_NAME, StackSampler

    release = threading.Event()
    threads = [threading.Thread(target=_blocked, args=(DEPTH, release)) for _ in range(n_threads)]
    if busy:
        threads.append(threading.Thread(target=_busy, args=(DEPTH, release)))
    for t in threads:
        t.start()
    options = {"sampler": {"thread_state": thread_state, "native_stacks": native}}
    rec = pyflight.FlightRecorder(sources=["sampler"], source_options=options)
    with rec:
        (sampler,) = [s for s in rec.sources if isinstance(s, StackSampler)]
        (thread,) = [t for t in threading.enumerate() if t.name == THREAD_NAME]
        clock = time.pthread_getcpuclockid(thread.ident or 0)
        time.sleep(WARMUP_S)
        before, cpu0, wall0 = sampler.stats(), time.clock_gettime_ns(clock), time.monotonic_ns()
        time.sleep(seconds)
        after, cpu1, wall1 = sampler.stats(), time.clock_gettime_ns(clock), time.monotonic_ns()
        # the tick body alone, back to back (warm caches, no wake-up): what the core changes
        probe = StackSampler(thread_state=thread_state)
        me = threading.get_ident()
        probe._tick(me)
        t0 = time.thread_time_ns()
        for _ in range(HOT_TICKS):
            probe._tick(me)
        hot_us = (time.thread_time_ns() - t0) / HOT_TICKS / 1e3
        probe._close_files()
    release.set()
    for t in threads:
        t.join()
    ticks = after["ticks"] - before["ticks"]
    return {
        "core": BACKEND_NAME if native or BACKEND_NAME != "c" else "c-gil",
        "tick_us": (after["cpu_ns"] - before["cpu_ns"]) / max(1, ticks) / 1e3,
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
        "hot_tick_us": hot_us,
        "interval_ms": (wall1 - wall0) / 1e6 / max(1, ticks),
        "samples_per_tick": (after["samples"] - before["samples"]) / max(1, ticks),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--no-state", action="store_true", help="thread_state=False")
    parser.add_argument("--busy", action="store_true", help="one more thread running Python code")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, seconds, state, native, busy = args.child
        print(json.dumps(child(int(n), float(seconds), state == "1", native == "1", busy == "1")))
        return 0

    counts = [int(n) for n in args.threads.split(",")]
    cores = [*CORES, "c-gil"] if c_core_available() else ["python"]
    state = "0" if args.no_state else "1"
    results: dict[tuple[str, int], list[dict[str, float]]] = {(c, n): [] for c in cores for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            for core in cores:
                native = "0" if core == "c-gil" else "1"
                busy = "1" if args.busy else "0"
                core_name = core.split("-")[0]
                out = run_in_core(__file__, core_name, str(n), str(args.seconds), state, native, busy)
                assert out["core"] == core, out
                results[(core, n)].append({k: float(v) for k, v in out.items() if k != "core"})  # type: ignore[arg-type]

    print(
        f"python {sys.version.split()[0]}, sampler defaults (interval 10 ms, cpu_budget 1%,"
        f" thread_state={not args.no_state}), {args.rounds} rounds x {args.seconds} s,"
        f" threads blocked {DEPTH} calls deep (+ main thread{', + one running' if args.busy else ''});"
        " median [min..max]"
    )
    print(
        f"  {'core':6} {'threads':>7}  {'CPU per tick, us':>22}  {'% of one CPU':>19}"
        f"  {'interval, ms':>19}  {'tick body alone, us':>22}"
    )
    for n in counts:
        for core in cores:
            rows = results[(core, n)]
            tick = [r["tick_us"] for r in rows]
            pct = [r["cpu_pct"] for r in rows]
            interval = [r["interval_ms"] for r in rows]
            hot = [r["hot_tick_us"] for r in rows]
            print(
                f"  {core:6} {n:7}  {_summary(tick):>22}  {_summary(pct, 2):>19}"
                f"  {_summary(interval):>19}  {_summary(hot):>22}"
            )
    if "python" in cores and "c" in cores:
        for n in counts:

            def median(core: str, key: str, n: int = n) -> float:
                return statistics.median(r[key] for r in results[(core, n)])

            per_tick = median("python", "tick_us") / median("c", "tick_us")
            body = median("python", "hot_tick_us") / median("c", "hot_tick_us")
            print(f"  {n:2} threads: pure-Python / C, per tick {per_tick:.1f}x, tick body alone {body:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
