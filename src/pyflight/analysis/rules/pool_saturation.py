"""Rule ``pool-saturation`` (docs/report.md explains its score)."""

from __future__ import annotations

import re
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pyflight.analysis.cpu import ASLEEP
from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
from pyflight.analysis.frames import by_function, library_wait, untraced_wait_site, user_frame
from pyflight.analysis.queries import (
    Spans,
    gil_busy_share,
    interval_ns,
    sampler_ticks,
    samples_by_thread,
    seconds_since_start,
    thread_name,
    user_threads,
)
from pyflight.analysis.rules._waits import blocked_waits, busy_gil, overlap_ns
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.library_waits import retry_backoff
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, SECOND, fmt_ns, pct, quantile

_POOL_NAME = re.compile(r"^(.*?)_(\d+)$")


def _is_pool_idle(stack: Sequence[Frame]) -> bool:
    return bool(stack) and stack[0].function == "_worker" and "thread.py" in stack[0].file


def _is_pool_worker(stacks: Iterable[Sequence[Frame]]) -> bool:
    return any(any(f.function == "_worker" and "concurrent" in f.file for f in stack) for stack in stacks)


def rule_pool_saturation(model: Model) -> list[Finding]:
    """From the pools' jobs (executors source) when the trace has them, else from samples."""
    if model.pools:
        return _pool_saturation_jobs(model)
    return _pool_saturation_sampled(model)


_POOL_HINT = (
    "Raise max_workers if the jobs mostly wait (I/O, sleep, a remote call); move blocking or "
    "CPU-heavy work elsewhere (a process pool for CPU-bound jobs; keep slow jobs out of "
    "asyncio's default executor); or bound submissions (a semaphore, a bounded queue) so "
    "callers feel back-pressure instead of a growing queue."
)


_PROCESS_POOL_HINT = (
    "Raise max_workers while the machine has idle CPUs (a process per core is the usual "
    "ceiling for CPU-bound jobs); make each job cheaper or send less data to it (arguments "
    "and results are pickled); or bound submissions (a semaphore, a bounded queue) so "
    "callers feel back-pressure instead of a growing queue."
)


def _span_ns(spans: Iterable[tuple[int, int]]) -> int:
    return sum(b - a for a, b in spans)


def _job_line(model: Model, workers: set[int], function: str, file: str, default: int) -> int:
    """The line of ``function`` seen most in the workers' samples, else ``default``."""
    lines: Counter[int] = Counter()
    for tid in workers:
        for sample in samples_by_thread(model).get(tid, []):
            for frame in sample.stack:
                if frame.function == function and frame.file == file:
                    lines[frame.line] += 1
                    break
    if not lines:
        return default
    return max(lines.items(), key=lambda kv: (kv[1], -kv[0]))[0]


def _worker_states(
    model: Model, workers: set[int], spans: Spans
) -> tuple[dict[str, float], dict[str, Frame | None]]:
    """Share of the workers' time in ``spans`` per state (BLOCKED split by reason, or
    named by the library call it waited in: "waiting for a subprocess (communicate)",
    not the ``select`` it blocked in), and for each such call the program's line that
    made it (the one with the most time)."""
    per: dict[str, int] = defaultdict(int)
    sites: dict[str, dict[Frame, float]] = defaultdict(lambda: defaultdict(float))
    for tid in workers:
        thread = model.threads.get(tid)
        if thread is None:
            continue
        for iv in thread.intervals:
            ns = overlap_ns(spans, iv.start, iv.end)
            if ns <= 0:
                continue
            if iv.state is State.BLOCKED and iv.reason is not None:
                waited = library_wait(iv.stack)
                if waited is not None:
                    per[waited.what] += ns
                    if waited.site is not None:
                        sites[waited.what][waited.site] += ns
                elif iv.reason is BlockReason.SLEEP and (backoff := retry_backoff(iv.stack)) is not None:
                    # a retry helper's pause (library_waits.RETRY_WAITS)
                    per[backoff] += ns
                    site = user_frame(iv.stack)
                    if site is not None:
                        sites[backoff][site] += ns
                else:
                    per[f"blocked:{iv.reason.name.lower()}"] += ns
            else:
                per[iv.state.value] += ns
    total = sum(per.values())
    if total <= 0:
        return {}, {}
    states = {
        k: round(v / total, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v / total >= 0.001
    }
    return states, {what: by_function(weights)[0] for what, weights in sites.items()}


def _untraced_call(model: Model, workers: set[int], spans: Spans) -> str | None:
    """When most of the busy workers' samples found them off the CPU (OS state S/D)
    while the model says RUNNING, in no traced call: " (inside <call>)" naming the
    standard-library call they were in if one dominates, else ""; None otherwise."""
    off, seen = 0, 0
    calls: Counter[str] = Counter()
    for tid in workers:
        for s in samples_by_thread(model).get(tid, ()):
            if s.state is not State.RUNNING or s.time not in spans:
                continue
            seen += 1
            if s.os_state in ASLEEP:
                off += 1
                _, callee = untraced_wait_site(s.stack)
                if callee is not None:
                    calls[callee.function] += 1
    if seen < 5 or 2 * off < seen:
        return None
    top = calls.most_common(1)
    return f" (inside {top[0][0]})" if top and 2 * top[0][1] >= off else ""


def _pool_saturation_jobs(model: Model) -> list[Finding]:
    out: list[Finding] = []
    for pool in model.pools.values():
        jobs = pool.jobs
        waits = sorted(w for w in (j.wait for j in jobs) if w is not None)
        # still waiting at the end of the trace: their wait so far (a lower bound)
        pending = [model.end - j.queued for j in jobs if j.state == "queued" and j.queued is not None]
        all_waits = sorted(waits + pending)
        if not all_waits:
            continue
        total_wait = sum(all_waits)
        all_busy = pool.all_busy(model.end)
        backlog = pool.backlog(model.end)
        all_busy_ns, backlog_ns = _span_ns(all_busy), _span_ns(backlog)
        if backlog_ns < 50 * MS or total_wait < 200 * MS:
            continue
        first = min((t for j in jobs for t in (j.queued, j.begin) if t is not None), default=model.start)
        last = max((t if t is not None else model.end for j in jobs for t in (j.end,)), default=model.end)
        life = max(1, last - first)
        backlog_share = min(1.0, backlog_ns / life)
        # the jobs that kept the workers busy: run time inside the all-busy spans
        spans = Spans(all_busy)
        run_by_fn: dict[tuple[str, str, int], int] = defaultdict(int)
        jobs_by_fn: Counter[tuple[str, str, int]] = Counter()
        for job in jobs:
            if job.begin is None:
                continue
            ns = overlap_ns(spans, job.begin, job.end if job.end is not None else model.end)
            if ns > 0:
                key = (job.function, job.file, job.line)
                run_by_fn[key] += ns
                jobs_by_fn[key] += 1
        if not run_by_fn:
            continue
        fn_key = max(run_by_fn, key=lambda k: (run_by_fn[k], k[0]))
        function, file, first_line = fn_key
        workers = set(pool.workers)
        culprit = None
        if function:
            line = _job_line(model, workers, function, file, first_line) if file else first_line
            culprit = Culprit(function, file, line)
        runs = sorted(r for r in (j.run for j in jobs) if r is not None)
        p50, p90, worst = quantile(all_waits, 0.5), quantile(all_waits, 0.9), all_waits[-1]
        worst_job = max(
            (j for j in jobs if j.queued is not None and (j.begin is not None or j.state == "queued")),
            key=lambda j: (j.begin if j.begin is not None else model.end) - int(j.queued or 0),
            default=None,
        )
        longest_at = seconds_since_start(model, worst_job.queued) if worst_job and worst_job.queued else None
        peak_t, peak_waiting = max(pool.waiting, key=lambda tc: (tc[1], -tc[0]))
        median_run = statistics.median(runs) if runs else 0
        score = clamp_score(
            min(
                ramp(backlog_share, [(0.1, 20), (0.3, 45), (0.6, 70), (0.9, 85)]),
                max(
                    ramp(p90, [(10 * MS, 15), (100 * MS, 50), (500 * MS, 80), (2 * SECOND, 92)]),
                    ramp(p90 / median_run if median_run else 0, [(0.5, 30), (2, 60), (5, 80), (10, 90)]),
                ),
            )
        )
        states, sites = _worker_states(model, workers, spans)
        name = pool.name or ("ProcessPoolExecutor" if pool.processes else f"pool {pool.pool:#x}")
        label = function or "their jobs"
        top_state = next(iter(states), "")
        gil = None if pool.processes else busy_gil(gil_busy_share(model, spans.pairs()))
        if pool.processes:
            doing = (
                " The jobs ran in the pool's worker processes (their own traces, if recorded, "
                "show what each did)."
            )
        elif gil is not None:
            doing = (
                f" The workers were CPU-bound, taking turns on the GIL (busy {100 * gil:.0f}% of "
                "that time): more workers will not help; a process pool (or less CPU work per job) will."
            )
        elif (
            top_state in ("blocked:other", "running")
            and (untraced := _untraced_call(model, workers, spans)) is not None
        ):
            doing = (
                " The busy workers were mostly off the CPU in a call pyflight does not trace"
                f"{untraced}: a wait, so more workers help if what they wait for can take more."
            )
        elif top_state.startswith("blocked:lock"):
            doing = " The jobs mostly waited for a lock: more workers will not help; see lock-contention."
        elif top_state.startswith(("waiting for ", "waiting to retry")):  # a library call
            site = sites.get(top_state)
            at = f" (called at {site.function}, line {site.line})" if site is not None else ""
            doing = f" The busy workers were mostly {top_state}{at}."
            if top_state.startswith("waiting to retry"):
                doing += " More workers would retry more, not sooner: see library-wait."
        elif top_state.startswith("blocked:"):
            doing = f" The busy workers were mostly {top_state.replace(':', ' on ')}."
        elif top_state == "running":
            doing = " The busy workers were mostly running (CPU or C code)."
        else:
            doing = ""
        out.append(
            Finding(
                rule="pool-saturation",
                score=score,
                title=(
                    f"{'Process' if pool.processes else 'Thread'} pool {name!r}: all {pool.max_workers} "
                    f"workers busy for {fmt_ns(all_busy_ns)} "
                    f"running {label}; jobs waited up to {fmt_ns(worst)} in the queue (p90 {fmt_ns(p90)})"
                ),
                culprit=culprit,
                evidence={
                    "pool": name,
                    "pool_id": pool.pool,
                    "processes": pool.processes,
                    "max_workers": pool.max_workers,
                    "workers_seen": len(workers),
                    "jobs": len(jobs),
                    "jobs_waited": sum(1 for w in all_waits if w >= MS),
                    "still_queued": len(pending),
                    "cancelled": sum(1 for j in jobs if j.state == "cancelled"),
                    "wait_p50_ns": p50,
                    "wait_p90_ns": p90,
                    "wait_max_ns": worst,
                    "wait_total_ns": total_wait,
                    "run_p50_ns": int(median_run),
                    "all_busy_ns": all_busy_ns,
                    "backlog_ns": backlog_ns,
                    "backlog_share": round(backlog_share, 4),
                    "culprit_run_ns": run_by_fn[fn_key],
                    "culprit_jobs": jobs_by_fn[fn_key],
                    "functions": [
                        {"function": k[0], "file": k[1], "jobs": jobs_by_fn[k], "run_ns": v}
                        for k, v in sorted(run_by_fn.items(), key=lambda kv: -kv[1])[:5]
                    ],
                    "worst_at_s": seconds_since_start(model, peak_t),
                    "worst_waiting": peak_waiting,
                    "longest_wait_at_s": longest_at,
                    "worker_states": states,
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, job.queued),
                            (job.begin if job.begin is not None else model.end) - job.queued,
                            thread_name(model, job.submitter) if job.submitter else "",
                            model.user_tasks[job.task].name if job.task in model.user_tasks else "",
                            f"{job.function or 'a job'} waited in the pool's queue"
                            + ("" if job.begin is not None else " (still at the end)"),
                        )
                        for job in jobs
                        if job.queued is not None
                        and not job.clipped
                        and (job.begin is not None or job.state == "queued")
                    ]
                ),
                hint=(
                    f"Every worker was busy running {label}, so new jobs queued behind them "
                    f"(p90 wait {fmt_ns(p90)}, median run {fmt_ns(median_run)}).{doing} "
                    + (_PROCESS_POOL_HINT if pool.processes else _POOL_HINT)
                ),
            )
        )
    return out


def _full_ticks(model: Model, samples: list[Any], tids: set[int]) -> list[list[Any]]:
    """The sampler's ticks at which every thread of ``tids`` has a sample (each tick's
    samples of them, one per thread). A sample belongs to the tick it was taken at (the
    last tick at or before it); one read natively, dated before the sampler got the GIL
    (a loaded machine makes that wait long), to the tick that followed it."""
    ticks = sampler_ticks(model)
    if not ticks:
        return []
    by_tick: dict[int, dict[int, Any]] = defaultdict(dict)
    for sample in samples:
        i = bisect_left(ticks, sample.time) if sample.native else bisect_right(ticks, sample.time) - 1
        if 0 <= i < len(ticks):
            by_tick[i].setdefault(sample.tid, sample)
    return [list(got.values()) for _, got in sorted(by_tick.items()) if len(got) == len(tids)]


def _pool_saturation_sampled(model: Model) -> list[Finding]:
    """No pool events (an older trace, or the executors source off): infer from samples."""
    by_thread = samples_by_thread(model)
    pools: dict[str, list[Any]] = defaultdict(list)
    for thread in user_threads(model):
        samples = by_thread.get(thread.tid, [])
        if not samples or not _is_pool_worker(s.stack for s in samples[:50]):
            continue
        m = _POOL_NAME.match(thread.name or "")
        pools[m.group(1) if m else thread.name].append(thread)
    interval = interval_ns(model)
    out: list[Finding] = []
    for name, workers in pools.items():
        tids = {t.tid for t in workers}
        full = _full_ticks(model, [s for tid in tids for s in by_thread.get(tid, [])], tids)
        if len(full) < 5:
            continue
        saturated = [tick for tick in full if not any(_is_pool_idle(s.stack) for s in tick)]
        sat_share = len(saturated) / len(full)
        busy: dict[Frame, float] = defaultdict(float)
        for tick in saturated:
            for sample in tick:
                frame = user_frame(sample.stack)
                if frame is not None:
                    busy[frame] += interval
        culprit, culprit_ns = by_function(busy)
        # submitters waiting meanwhile: threads blocked on futures, tasks awaiting
        waiting = 0
        sat_spans = Spans((t[0].time - interval, t[0].time + interval) for t in saturated)
        for thread, iv in blocked_waits(model, BlockReason.CONDITION):
            if thread.tid in tids or not any("concurrent" in f.file for f in iv.stack[:4]):
                continue
            if iv.start in sat_spans:
                waiting += 1
        for task in model.all_tasks():
            for iv in task.intervals:
                if iv.reason == BlockReason.AWAIT and "uture" in str(iv.detail or ""):
                    if iv.start in sat_spans:
                        waiting += 1
        saturated_ns = len(saturated) * interval
        if saturated_ns < 200 * MS or sat_share < 0.3:
            continue
        score = clamp_score(
            ramp(sat_share, [(0.3, 25), (0.6, 50), (0.9, 70)]) + (15 if waiting >= len(workers) else 0)
        )
        where = f" running {culprit.function}" if culprit else ""
        out.append(
            Finding(
                rule="pool-saturation",
                score=score,
                title=(
                    f"Thread pool {name!r}: all {len(workers)} workers busy {pct(sat_share)} of the "
                    f"time{where}"
                ),
                culprit=Culprit.of(culprit),
                evidence={
                    "pool": name,
                    "workers": len(workers),
                    "saturated_share": round(sat_share, 4),
                    "saturated_ns": saturated_ns,
                    "waiting_submitters": waiting,
                    "culprit_busy_ns": int(culprit_ns),
                },
                hint=(
                    "Every worker is occupied, so new submissions queue up. Raise max_workers if "
                    "the jobs wait on I/O, make the jobs shorter, or use a process pool for CPU-bound "
                    "jobs; keep slow jobs out of asyncio's default executor."
                ),
            )
        )
    return out


RULE = Rule("pool-saturation", ("pool-saturation",), rule_pool_saturation)
