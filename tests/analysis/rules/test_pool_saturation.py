"""pool-saturation from the executors source's job events, on synthetic pools."""

from __future__ import annotations

from pyflight.analysis.model import build
from pyflight.analysis.rules import WARNING, Culprit, find
from pyflight.core.events import Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

#: a worker waiting for an external tool, in no call pyflight traces
CONVERT = (
    ("Popen._try_wait", "/py/lib/python3.12/subprocess.py", 2011),
    ("run", "/py/lib/python3.12/subprocess.py", 550),
    ("resize_image", "/app/images.py", 14),
    ("_worker", "/py/lib/python3.12/concurrent/futures/thread.py", 93),
)


def _pool_trace(
    jobs: int, workers: int, run_ms: int, gap_ms: float = 0.0, sampled: tuple[ThreadState, int] | None = None
) -> bytes:
    """One pool of ``workers`` threads fed ``jobs`` jobs of ``run_ms`` (``gap_ms`` apart):
    the events the executors source records, FIFO as the pool runs them; with
    ``sampled=(os_state, cpu_ms)``, the workers sampled in CONVERT every 10 ms."""
    ms = 1_000_000
    gen = Gen(seq=1, start_ns=0, end_ns=int((jobs * (run_ms + gap_ms) + 1000) * ms))
    gen.event(1, Kind.THREAD_INFO, 0, tid=1, name="MainThread", ident=1)
    for w in range(workers):
        gen.event(10 + w, Kind.THREAD_INFO, 0, tid=10 + w, name=f"images_{w}", ident=10 + w)
    free = [ms] * workers  # when each worker is next free
    begins: list[tuple[int, int, int, int]] = []
    for job in range(1, jobs + 1):
        queued = int(ms + (job - 1) * gap_ms * ms)
        gen.event(
            1,
            Kind.POOL_JOB_QUEUED,
            queued,
            pool=77,
            job=job,
            function="resize_image",
            file="/app/images.py",
            line=12,
            max_workers=workers,
            task=0,
        )
        w = min(range(workers), key=lambda i: free[i])
        begin = max(queued, free[w]) + 1000
        free[w] = begin + run_ms * ms
        begins.append((10 + w, begin, free[w], job))
    for tid, begin, end, job in sorted(begins, key=lambda b: (b[0], b[1])):
        gen.event(tid, Kind.POOL_JOB_BEGIN, begin, pool=77, job=job)
        gen.event(tid, Kind.POOL_JOB_END, end, pool=77, job=job)
    if sampled is not None:
        os_state, cpu_ms = sampled
        for k in range(1, int(jobs * run_ms / workers / 10)):
            for w in range(workers):
                gen.event(
                    9, Kind.SAMPLE, ms + k * 10 * ms + w, tid=10 + w, task=0, stack=CONVERT,
                    state=os_state, cpu=cpu_ms * ms, span=10 * ms,
                )  # fmt: skip
    return trace([gen])


def test_pool_saturation_from_jobs() -> None:
    """24 jobs of 80 ms on 2 workers, all at once: the exact rule, from the jobs alone."""
    model = build(loads(_pool_trace(24, 2, 80)))
    pool = model.pools[77]
    assert pool.name == "images" and pool.max_workers == 2 and len(pool.jobs) == 24
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert finding.score >= WARNING
    assert finding.culprit == Culprit("resize_image", "/app/images.py", 12)
    ev = finding.evidence
    assert ev["max_workers"] == 2 and ev["jobs"] == 24 and ev["jobs_waited"] == 22
    assert 800e6 <= ev["wait_max_ns"] <= 900e6 and ev["wait_p50_ns"] < ev["wait_p90_ns"] <= ev["wait_max_ns"]
    assert 900e6 <= ev["all_busy_ns"] <= 1000e6 and ev["backlog_ns"] <= ev["all_busy_ns"]
    assert ev["worst_waiting"] == 24 and ev["culprit_jobs"] == 24  # all queued at once
    assert "'images'" in finding.title and "2 workers" in finding.title
    assert "max_workers" in finding.hint


def test_pool_with_spare_capacity_is_no_finding() -> None:
    """Jobs that arrive slower than the workers finish them never wait: nothing to say."""
    model = build(loads(_pool_trace(40, 4, 20, gap_ms=10)))
    assert model.pools[77].all_busy(model.end) == []
    assert not [f for f in find(model, strict=True) if f.rule == "pool-saturation"]


def test_workers_waiting_in_an_untraced_call_are_not_called_running() -> None:
    """Workers the sampler found off the CPU inside ``subprocess.run`` (a wait no hook
    sees) were waiting, not computing: the hint says so and names the call."""
    model = build(loads(_pool_trace(24, 2, 80, sampled=(ThreadState.SLEEPING, 0))))
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert "off the CPU in a call pyflight does not trace (inside run)" in finding.hint, finding.hint
    model = build(loads(_pool_trace(24, 2, 80, sampled=(ThreadState.RUNNING, 10))))
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert "mostly running (CPU or C code)" in finding.hint, finding.hint
