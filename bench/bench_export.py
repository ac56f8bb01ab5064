"""Export throughput: ``pyflight export`` of a ~1,000,000-event trace to each format
(the trace recorded once, as bench_analysis.py does, from a busy program with all default
sources). The formats are timed in turn, round after round, so that a noisy neighbour
weighs on all of them alike. Prints seconds (wall and CPU) and events/s, median
[min..max], and the size of each output.

    python bench/bench_export.py [TRACE] [--rounds N] [--format F ...]

TRACE is recorded if it does not exist (default: a fresh temporary file).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _common import summary
from bench_analysis import make_trace

ROUNDS = 3


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def main() -> int:
    import pyflight
    from pyflight.core import BACKEND_NAME
    from pyflight.export import FORMATS, export

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("trace", nargs="?", default=os.path.join(tempfile.mkdtemp(), "busy.pyfl"))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--format", action="append", choices=FORMATS, dest="formats")
    args = parser.parse_args()
    formats: list[str] = args.formats or list(FORMATS)

    if not os.path.exists(args.trace):
        make_trace(args.trace)
    trace = pyflight.load(args.trace)
    n = len(trace.events)
    kinds = ", ".join(f"{k.name} {c:,}" for k, c in trace.count_by_kind().most_common(4))
    print(f"python {sys.version.split()[0]} ({BACKEND_NAME} core): {n:,} events ({kinds}, ...)")
    wall: dict[str, list[float]] = {fmt: [] for fmt in formats}
    cpu: dict[str, list[float]] = {fmt: [] for fmt in formats}
    size: dict[str, int] = {}
    for _ in range(args.rounds):
        for fmt in formats:
            c0 = time.process_time()
            t0 = time.perf_counter()
            data = export(trace, fmt)
            wall[fmt].append(time.perf_counter() - t0)
            cpu[fmt].append(time.process_time() - c0)
            size[fmt] = len(data)
            del data
    for fmt in formats:
        print(
            f"  {fmt:10} {summary(wall[fmt])} s (CPU {summary(cpu[fmt])} s), "
            f"{summary([n / s / 1e3 for s in wall[fmt]])} k events/s, {_size(size[fmt])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
