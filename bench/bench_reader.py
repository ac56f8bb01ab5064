"""Reader throughput: pyflight.load of a 1,000,000-event trace, events per second,
with the C decoder and with the pure-Python one (each in its own process)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from _common import CORES, c_core_available, run_in_core, summary

EVENTS = 1_000_000
ROUNDS = 3


def make_trace(path: str) -> None:
    """A realistic mix: logs, counters, blocks with stacks, samples; 1M events."""
    import pyflight
    from pyflight.core import backend
    from pyflight.core.events import Kind

    here = backend.HERE
    with pyflight.FlightRecorder(min_age=3600, max_bytes=512 * 2**20) as rec:
        for i in range(EVENTS // 4):
            backend.record(Kind.LOG, 0, "bench", "message")
            backend.record(Kind.COUNTER, "queue_depth", i & 1023)
            backend.record(Kind.BLOCK_BEGIN, 1, 42, here)
            backend.record(Kind.BLOCK_END, 1, 42, 0)
        rec.write_to(path)


def child(path: str) -> None:
    import pyflight

    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        trace = pyflight.load(path)
        times.append(time.perf_counter() - start)
    print(json.dumps({"events": len(trace.events), "seconds": times, "bytes": os.path.getsize(path)}))


def main() -> int:
    if "--child" in sys.argv:
        child(sys.argv[-1])
        return 0
    path = os.path.join(tempfile.mkdtemp(), "million.pyfl")
    make_trace(path)
    print(f"python {sys.version.split()[0]}: load() of a {EVENTS:,}-event trace, {ROUNDS} rounds")
    for core in CORES:
        if core == "c" and not c_core_available():
            print("  c decoder: not built, skipped")
            continue
        r = run_in_core(__file__, core, path)
        n = r["events"]
        rates = [n / s / 1e6 for s in r["seconds"]]  # type: ignore[attr-defined, operator]
        print(
            f"  {core:6} decoder: {summary(rates)} M events/s ({n:,} events, {r['bytes']:,} bytes,"
            f" {r['bytes'] / n:.2f} bytes/event)"
        )  # type: ignore[operator]
    os.unlink(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
