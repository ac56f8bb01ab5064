"""ns per recorded event, C core and pure-Python core side by side in one run.

Each round times a loop of N ``record(kind, "metric", i)`` statements and the same loop
with an empty body, for both cores, recording and stopped, interleaved; the cost per
event is the difference: what a source pays per event. A third loop records a block's
BLOCK_BEGIN with the stack of a frame STACK_DEPTH calls deep (what a hook pays to walk and
intern a stack at a hot site): its difference with the plain event is what the CPU
budget's ``HOOK_NS_PER_STACK`` estimates.
"""

from __future__ import annotations

import statistics
import sys
import time

from _common import c_core_available, summary
from pyflight.core import _pycore
from pyflight.core.events import Kind, arg_counts

N = 200_000
ROUNDS = 7
STACK_DEPTH = 20


def _time_loop(fn: object, n: int) -> float:
    call = fn  # local for speed
    kind = int(Kind.COUNTER)
    start = time.perf_counter_ns()
    for i in range(n):
        call(kind, "metric", i)  # type: ignore[operator]
    return (time.perf_counter_ns() - start) / n


def _time_stack_loop(fn: object, n: int, depth: int = STACK_DEPTH) -> float:
    """The loop, run ``depth`` calls deep, recording a block with its stack each time."""
    if depth > 1:
        return _time_stack_loop(fn, n, depth - 1)
    call = fn
    kind, reason = int(Kind.BLOCK_BEGIN), 1
    frame = sys._getframe()
    start = time.perf_counter_ns()
    for i in range(n):
        call(kind, reason, i, frame)  # type: ignore[operator]
    return (time.perf_counter_ns() - start) / n


def _empty_loop(n: int) -> float:
    start = time.perf_counter_ns()
    for _i in range(n):
        pass
    return (time.perf_counter_ns() - start) / n


def _configure(core: object) -> None:
    core.configure(  # type: ignore[attr-defined]
        arg_counts(),
        max_bytes=64 * 2**20,
        min_age_ns=60 * 10**9,
        gen_max_bytes=4 * 2**20,
        gen_interval_ns=10**9,
    )


def main() -> int:
    cores = [("python", _pycore)]
    if c_core_available():
        import pyflight._core as c_core

        cores.insert(0, ("c", c_core))
    results: dict[str, list[float]] = {name: [] for name, _ in cores}
    disabled: dict[str, list[float]] = {name: [] for name, _ in cores}
    stacked: dict[str, list[float]] = {name: [] for name, _ in cores}
    for _ in range(ROUNDS):
        base = _empty_loop(N)
        for name, core in cores:
            _configure(core)
            disabled[name].append(_time_loop(core.record, N) - base)
            core.start()
            try:
                results[name].append(_time_loop(core.record, N) - base)
                stacked[name].append(_time_stack_loop(core.record, N) - base)
            finally:
                core.stop()
    print(f"python {sys.version.split()[0]}, {N} events x {ROUNDS} rounds, ns per event: median [min..max]")
    for name, _ in cores:
        print(f"  {name:6} core, recording : {summary(results[name])}")
        print(f"  {name:6} core, stopped   : {summary(disabled[name])}")
        extra = [with_stack - plain for with_stack, plain in zip(stacked[name], results[name], strict=True)]
        print(f"  {name:6} core, a block with a {STACK_DEPTH}-frame stack: {summary(stacked[name])}")
        print(f"  {name:6} core, the stack's share (paired): {summary(extra)}")
    if len(cores) == 2:
        ratio = statistics.median(results["python"]) / statistics.median(results["c"])
        print(f"  pure-Python / C: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
