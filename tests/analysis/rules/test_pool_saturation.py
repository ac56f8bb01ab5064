"""pool-saturation from the executors source's job events, on synthetic pools."""

from __future__ import annotations

from pathlib import Path

from programs import PROGRAMS, marked_line, record_named
from pyflight.analysis.model import build
from pyflight.analysis.rules import WARNING, Culprit, find
from pyflight.core.events import BlockReason, Kind, ThreadState
from pyflight.format.reader import loads
from tracegen import Gen, trace

#: a worker waiting for an external tool, in no call pyflight traces
CONVERT = (
    ("Popen._try_wait", "/py/lib/python3.12/subprocess.py", 2011),
    ("run", "/py/lib/python3.12/subprocess.py", 550),
    ("resize_image", "/app/images.py", 14),
    ("_worker", "/py/lib/python3.12/concurrent/futures/thread.py", 93),
)


#: a worker reading an external tool's output: ``subprocess.run(capture_output=True)``
#: blocks in a ``selectors`` select on the child's pipes (what the blocking source records)
COMMUNICATE = (
    ("Popen._communicate", "/py/lib/python3.12/subprocess.py", 2115),
    ("Popen.communicate", "/py/lib/python3.12/subprocess.py", 1209),
    ("run", "/py/lib/python3.12/subprocess.py", 550),
    ("resize_image", "/app/images.py", 14),
    ("_WorkItem.run", "/py/lib/python3.12/concurrent/futures/thread.py", 58),
    ("_worker", "/py/lib/python3.12/concurrent/futures/thread.py", 93),
)


def _pool_trace(
    jobs: int,
    workers: int,
    run_ms: int,
    gap_ms: float = 0.0,
    sampled: tuple[ThreadState, int] | None = None,
    blocked: tuple[BlockReason, tuple[tuple[str, str, int], ...]] | None = None,
) -> bytes:
    """One pool of ``workers`` threads fed ``jobs`` jobs of ``run_ms`` (``gap_ms`` apart):
    the events the executors source records, FIFO as the pool runs them; with
    ``sampled=(os_state, cpu_ms)``, the workers sampled in CONVERT every 10 ms; with
    ``blocked=(reason, stack)``, each job blocked so through all but its first and last ms."""
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
        if blocked is not None:
            reason, stack = blocked
            obj = end - begin - 2 * ms if reason is BlockReason.SLEEP else 5  # a sleep's: the time asked
            gen.event(tid, Kind.BLOCK_BEGIN, begin + ms, reason=int(reason), obj=obj, stack=stack)
            gen.event(tid, Kind.BLOCK_END, end - ms, reason=int(reason), obj=obj, waker=0)
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


def test_workers_waiting_for_a_subprocess_are_said_to_wait_for_it_not_for_select() -> None:
    """``subprocess.run(capture_output=True)`` blocks in select on the child's pipes: the
    hint names what the user called (a subprocess, its communicate) and where, not the
    ``select`` the blocking source recorded; other selects keep their reason."""
    model = build(loads(_pool_trace(24, 2, 80, blocked=(BlockReason.SELECT, COMMUNICATE))))
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert (
        "The busy workers were mostly waiting for a subprocess (communicate) "
        "(called at resize_image, line 14)." in finding.hint
    ), finding.hint
    assert "select" not in finding.hint and "select" not in finding.title
    states = finding.evidence["worker_states"]
    assert next(iter(states)) == "waiting for a subprocess (communicate)", states
    plain = (("Server.poll", "/app/server.py", 40), *COMMUNICATE[4:])
    model = build(loads(_pool_trace(24, 2, 80, blocked=(BlockReason.SELECT, plain))))
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert "mostly blocked on select" in finding.hint, finding.hint


def test_workers_backing_off_between_retries_are_said_to_retry() -> None:
    """Jobs sleeping in urllib3's Retry between attempts wait for a failing partner: the
    hint says so, and that more workers would only retry more."""
    backoff = (
        ("Retry._sleep_backoff", "/venv/lib/python3.12/site-packages/urllib3/util/retry.py", 357),
        ("Retry.sleep", "/venv/lib/python3.12/site-packages/urllib3/util/retry.py", 374),
        ("resize_image", "/app/images.py", 15),
        *COMMUNICATE[-2:],
    )
    model = build(loads(_pool_trace(24, 2, 80, blocked=(BlockReason.SLEEP, backoff))))
    (finding,) = [f for f in find(model, strict=True) if f.rule == "pool-saturation"]
    assert (
        "The busy workers were mostly waiting to retry a failing call (urllib3's Retry backing off) "
        "(called at resize_image, line 15). More workers would retry more" in finding.hint
    ), finding.hint


def test_a_pool_running_subprocesses_is_said_to_wait_for_them(tmp_path: Path) -> None:
    """A real pool whose jobs run ``subprocess.run(..., capture_output=True)``: the report
    says the workers waited for a subprocess (communicate) at the job's line, not in select."""
    from pyflight.report import analyze
    from pyflight.report.text import render

    report = analyze(loads(record_named("subprocess_pool", tmp_path).read_bytes()))
    line = marked_line(PROGRAMS / "subprocess_pool.py", "# THE TOOL")
    (finding,) = [f for f in report.findings if f.rule == "pool-saturation"]
    assert finding.culprit is not None and finding.culprit.function == "render_thumbnail"
    states = finding.evidence["worker_states"]
    assert next(iter(states)) == "waiting for a subprocess (communicate)", states
    said = (
        "The busy workers were mostly waiting for a subprocess (communicate) "
        f"(called at render_thumbnail, line {line})."
    )
    assert said in finding.hint, finding.hint
    assert "select" not in finding.hint and "select" not in finding.title
    assert said in render(report)
