"""write_to of a full 64 MiB window: wall time, and the longest pause it causes to a
thread that keeps recording meanwhile (compared with the same thread's longest gap
over the same time without a snapshot running). C and pure-Python cores, each in its
own process; rounds interleave baseline and snapshot."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

from _common import CORES, c_core_available, run_in_core, summary

WINDOW = 64 * 2**20
ROUNDS = 3


def _recording_thread(stop: threading.Event, gaps: list[int]) -> None:
    import pyflight

    worst = 0
    last = time.perf_counter_ns()
    while not stop.is_set():
        pyflight.log("bench", "tick")
        now = time.perf_counter_ns()
        worst = max(worst, now - last)
        last = now
    gaps.append(worst)


def _worst_gap_during(action: object) -> tuple[float, float]:
    """(seconds the action took, longest gap in ms of a recording thread meanwhile)."""
    stop, gaps = threading.Event(), []  # type: ignore[var-annotated]
    thread = threading.Thread(target=_recording_thread, args=(stop, gaps))
    thread.start()
    time.sleep(0.05)
    start = time.perf_counter()
    action()  # type: ignore[operator]
    took = time.perf_counter() - start
    stop.set()
    thread.join()
    return took, gaps[0] / 1e6


def child() -> None:
    import pyflight
    from pyflight.core import backend

    rec = pyflight.FlightRecorder(min_age=3600, max_bytes=WINDOW)
    rec.start()
    i = 0
    while backend.stats()["ring_bytes"] < WINDOW * 0.9:
        for _ in range(10_000):
            pyflight.log("fill", "x")
        i += 1
    path = os.path.join(tempfile.mkdtemp(), "big.pyfl")
    result: dict[str, list[float]] = {"write_s": [], "pause_ms": [], "baseline_pause_ms": [], "bytes": []}
    for _ in range(ROUNDS):
        took, gap = _worst_gap_during(lambda: time.sleep(result["write_s"][-1] if result["write_s"] else 0.3))
        result["baseline_pause_ms"].append(gap)
        size: list[int] = []
        took, gap = _worst_gap_during(lambda size=size: size.append(rec.write_to(path)))
        result["write_s"].append(took)
        result["pause_ms"].append(gap)
        result["bytes"].append(size[0])
    rec.stop()
    os.unlink(path)
    print(json.dumps(result))


def main() -> int:
    if "--child" in sys.argv:
        child()
        return 0
    print(f"python {sys.version.split()[0]}: write_to of a full {WINDOW >> 20} MiB window, {ROUNDS} rounds")
    for core in CORES:
        if core == "c" and not c_core_available():
            print("  c core: not built, skipped")
            continue
        r = run_in_core(__file__, core)
        mib = [b / 2**20 for b in r["bytes"]]  # type: ignore[attr-defined]
        print(f"  {core:6} core: snapshot {summary(mib)} MiB")
        print(f"         write_to wall time ms         : {summary([s * 1000 for s in r['write_s']])}")  # type: ignore[attr-defined]
        print(f"         longest recording pause ms    : {summary(r['pause_ms'])}")  # type: ignore[arg-type]
        print(f"         same, no snapshot running, ms : {summary(r['baseline_pause_ms'])}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
