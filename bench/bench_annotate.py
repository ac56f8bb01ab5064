"""What ``pyflight.task``, ``pyflight.region`` and ``pyflight.log`` cost, per call.

For each core (C and pure Python, each in its own process since the core is chosen at
import) and each round, a child process times loops of N:

- ``with task("x"): pass`` and ``with region("x"): pass`` against an empty loop,
- a call of a ``@region("x")``-decorated empty function against the same call undecorated,
- ``log("c", "m")`` against an empty loop,

with no recorder, then with a running recorder (no sources: only the annotations
record). Rounds alternate the cores; each line prints ns per annotation over its
baseline as median [min..max] over rounds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from _common import c_core_available, run_in_core, summary

N = 200_000
ROUNDS = 7
KINDS = ("with task", "with region", "decorated region call", "log")


def _empty(n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        pass
    return (time.perf_counter_ns() - start) / n


def _with(cm: Callable[[str], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        with cm("x"):  # type: ignore[attr-defined]
            pass
    return (time.perf_counter_ns() - start) / n


def _call(fn: Callable[[int], int], n: int) -> float:
    start = time.perf_counter_ns()
    for i in range(n):
        fn(i)
    return (time.perf_counter_ns() - start) / n


def _log(log: Callable[[str, str], None], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        log("c", "m")
    return (time.perf_counter_ns() - start) / n


def _one_round(n: int) -> dict[str, float]:
    """ns per annotation over its baseline, for each kind, stopped then recording."""
    import pyflight

    def plain(i: int) -> int:
        return i

    decorated = pyflight.region("x")(plain)
    out: dict[str, float] = {}
    for state in ("stopped", "recording"):
        rec = pyflight.FlightRecorder(sources=[], max_bytes=64 * 2**20) if state == "recording" else None
        if rec is not None:
            rec.start()
        try:
            base = _empty(n)
            out[f"with task/{state}"] = _with(pyflight.task, n) - base
            out[f"with region/{state}"] = _with(pyflight.region, n) - base
            out[f"decorated region call/{state}"] = _call(decorated, n) - _call(plain, n)
            out[f"log/{state}"] = _log(pyflight.log, n) - _empty(n)
        finally:
            if rec is not None:
                rec.stop()
    return out


def main() -> int:
    if "--child" in sys.argv:
        import pyflight.core

        result: dict[str, object] = {"backend": pyflight.core.BACKEND_NAME, **_one_round(int(sys.argv[-1]))}
        print(json.dumps(result))
        return 0
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    cores = ["c", "python"] if c_core_available() else ["python"]
    series: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for core in cores if r % 2 == 0 else cores[::-1]:
            result = run_in_core(__file__, core, str(n))
            assert result.pop("backend") == core, f"asked for the {core} core"
            for key, value in result.items():
                series.setdefault((core, key), []).append(float(value))  # type: ignore[arg-type]
    version = sys.version.split()[0]
    print(f"python {version}, {n} calls x {rounds} rounds, ns per call over baseline: median [min..max]")
    for core in cores:
        for state in ("stopped", "recording"):
            for kind in KINDS:
                print(f"  {core:6} core, {state:9}, {kind:22}: {summary(series[(core, f'{kind}/{state}')])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
