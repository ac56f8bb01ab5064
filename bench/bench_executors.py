"""What the executors source costs per thread-pool job (submit + run).

A ``ThreadPoolExecutor`` with one worker is given N no-op jobs (``submit`` of a function
that returns at once), then the last future is awaited: the time per job is the pool's
own hand-off (queue put, worker wake-up, future bookkeeping) plus, with the source,
POOL_JOB_QUEUED on submit and POOL_JOB_BEGIN/END in the worker around the job. Modes:
no recorder; a recorder with only the ``executors`` source; the same with the jobs
submitted inside a ``pyflight.task`` (the wrapper also sets the task id in the worker).
The worker is held while the jobs are submitted, then runs them back to back: submitting
and running are timed apart, undisturbed by each other (as in a busy pool, where the
worker never sleeps on an empty queue). Rounds are interleaved; each line prints ns per
job as median [min..max] over rounds and the difference of the medians to no recorder.

    python bench/bench_executors.py            # both cores
    python bench/bench_executors.py --child c  # one core (PYFLIGHT_PURE_PYTHON decides)
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

from _common import CORES, c_core_available, run_in_core, summary

N_JOBS = 2_000
ROUNDS = 25


def job() -> None:
    return None


def one_round(pool: ThreadPoolExecutor, in_task: bool) -> tuple[float, float]:
    """(submit ns per job, run ns per job) of N no-op jobs on a one-worker pool.

    The worker is held on a gate while the jobs are submitted (so submitting is not
    disturbed by the worker), then released: it runs the queued jobs back to back (so
    running is not disturbed by the submitter, and the worker never sleeps on an empty
    queue), as in a busy pool.
    """
    import pyflight

    gate = threading.Event()
    ctx: AbstractContextManager[object] = pyflight.task("bench") if in_task else nullcontext()
    held = pool.submit(gate.wait)
    with ctx:
        submit = pool.submit
        last = None
        t0 = time.perf_counter_ns()
        for _ in range(N_JOBS):
            last = submit(job)
        t1 = time.perf_counter_ns()
    assert last is not None
    t2 = time.perf_counter_ns()
    gate.set()
    held.result()
    last.result()
    t3 = time.perf_counter_ns()
    return (t1 - t0) / N_JOBS, (t3 - t2) / N_JOBS


def child() -> None:
    import pyflight
    from pyflight.core import BACKEND_NAME

    modes = ("off", "executors", "executors+task")
    submit: dict[str, list[float]] = {m: [] for m in modes}
    run: dict[str, list[float]] = {m: [] for m in modes}
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(job).result()  # the worker exists before timing
        for _ in range(ROUNDS):
            for mode in modes:
                if mode == "off":
                    sub, ran = one_round(pool, False)
                else:
                    rec = pyflight.FlightRecorder(sources=["executors"], max_bytes=64 * 2**20).start()
                    try:
                        sub, ran = one_round(pool, mode.endswith("task"))
                    finally:
                        rec.stop()
                submit[mode].append(sub)
                run[mode].append(ran)
    print(json.dumps({"core": BACKEND_NAME, "submit": submit, "run": run}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child()
        return
    cores = CORES if c_core_available() else ("python",)
    print(f"ns per job, {N_JOBS} no-op jobs per round, {ROUNDS} rounds, 1 worker")
    for core in cores:
        result = run_in_core(__file__, core)
        submit: dict[str, list[float]] = result["submit"]  # type: ignore[assignment]
        run: dict[str, list[float]] = result["run"]  # type: ignore[assignment]
        base_s, base_r = statistics.median(submit["off"]), statistics.median(run["off"])
        print(f"core {result['core']}:")
        for mode in submit:
            ds = statistics.median(submit[mode]) - base_s
            dr = statistics.median(run[mode]) - base_r
            print(
                f"  {mode:15s} submit {summary(submit[mode])} ({ds:+5.0f})   "
                f"run {summary(run[mode])} ({dr:+5.0f})   added per job {ds + dr:+5.0f}"
            )


if __name__ == "__main__":
    main()
