"""What the blocking source costs: locks and Condition-based hand-offs, with and without it.

1. Uncontended ``acquire(); release()`` and ``with lock:`` on a plain lock / RLock
   against the C wrappers (``TracedLock`` / ``TracedRLock``) while the source records:
   the fast path every uncontended acquire pays.
2. A ``queue.Queue`` ping-pong between two threads (every ``get`` blocks in
   ``Condition.wait`` and every ``put`` notifies): the hand-off with the source
   recording (BLOCK_BEGIN, WAKE, BLOCK_END per hand-off) against no recorder.

Rounds are interleaved (plain, traced, plain, ...); each line prints ns per operation
as median [min..max] over rounds and the ratio of the medians.
"""

from __future__ import annotations

import _thread
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable

import pyflight
from _common import c_core_available, summary

N_LOCK = 300_000
N_HANDOFF = 10_000
ROUNDS = 11


def _acquire_release(lock: object, n: int) -> float:
    acquire = lock.acquire  # type: ignore[attr-defined]
    release = lock.release  # type: ignore[attr-defined]
    start = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter_ns() - start) / n


def _with(lock: object, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        with lock:  # type: ignore[attr-defined]
            pass
    return (time.perf_counter_ns() - start) / n


def _handoff(n: int) -> tuple[float, float]:
    """(wall ns, process CPU ns) per one-way hand-off: n round trips between two threads
    through two queues. CPU time shows the work added without the scheduler's noise."""
    ping: queue.Queue[int] = queue.Queue()
    pong: queue.Queue[int] = queue.Queue()

    def echo() -> None:
        for _ in range(n):
            pong.put(ping.get())

    thread = threading.Thread(target=echo)
    thread.start()
    start, cpu = time.perf_counter_ns(), time.process_time_ns()
    for i in range(n):
        ping.put(i)
        pong.get()
    elapsed, cpu = time.perf_counter_ns() - start, time.process_time_ns() - cpu
    thread.join()
    return elapsed / (2 * n), cpu / (2 * n)


def main() -> int:
    if not c_core_available():
        print("the C core is not built: nothing to compare (locks are only traced by the C core)")
        return 0
    from pyflight import _core

    cases: list[tuple[str, Callable[[], object], Callable[[], object], Callable[[object, int], float]]] = [
        ("Lock acquire+release", _thread.allocate_lock, _core.traced_allocate_lock, _acquire_release),
        ("Lock with", _thread.allocate_lock, _core.traced_allocate_lock, _with),
        ("RLock acquire+release", _thread.RLock, _core.TracedRLock, _acquire_release),
        ("RLock with", _thread.RLock, _core.TracedRLock, _with),
    ]
    plain: dict[str, list[float]] = {name: [] for name, *_ in cases}
    traced: dict[str, list[float]] = {name: [] for name, *_ in cases}
    hand_plain: list[tuple[float, float]] = []
    hand_traced: list[tuple[float, float]] = []
    for _ in range(ROUNDS):
        for name, make_plain, make_traced, loop in cases:
            plain[name].append(loop(make_plain(), N_LOCK))
            with pyflight.FlightRecorder(sources=["blocking"], max_bytes=64 * 2**20):
                traced[name].append(loop(make_traced(), N_LOCK))
        hand_plain.append(_handoff(N_HANDOFF))
        with pyflight.FlightRecorder(sources=["blocking"], max_bytes=64 * 2**20):
            hand_traced.append(_handoff(N_HANDOFF))

    print(
        f"python {sys.version.split()[0]}, {ROUNDS} interleaved rounds, ns per operation: median [min..max]"
    )
    for name, *_ in cases:
        ratio = statistics.median(traced[name]) / statistics.median(plain[name])
        print(f"  {name:22} plain {summary(plain[name])}   traced {summary(traced[name])}   x{ratio:.2f}")
    for i, what in enumerate(("hand-off wall", "hand-off CPU")):
        plain_ns = [r[i] for r in hand_plain]
        traced_ns = [r[i] for r in hand_traced]
        ratio = statistics.median(traced_ns) / statistics.median(plain_ns)
        extra = statistics.median(traced_ns) - statistics.median(plain_ns)
        print(
            f"  Queue {what:16} plain {summary(plain_ns)}   recorded {summary(traced_ns)}"
            f"   x{ratio:.2f}  ({extra:+.0f} ns)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
