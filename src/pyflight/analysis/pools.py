"""Executors (``ThreadPoolExecutor``, ``ProcessPoolExecutor``) seen through their POOL_JOB_* events."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from pyflight.analysis.model import PoolJob, ThreadPool, ThreadTimeline, _steps
from pyflight.core.events import Kind
from pyflight.format.reader import Event

_ODD_EVENT = (IndexError, TypeError, AttributeError, KeyError, ValueError)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def pools_of(
    events: Iterable[Event], threads: dict[int, ThreadTimeline], start: int, end: int
) -> dict[int, ThreadPool]:
    """Thread pools from their POOL_JOB_* events (see ``PoolJob`` for the states)."""
    jobs: dict[int, PoolJob] = {}
    sizes: dict[int, int] = {}
    processes: set[int] = set()
    for e in events:
        try:
            kind = e.kind
            if kind is Kind.POOL_PROCESSES:
                _kind, _t, _tid, process_pool = e
                processes.add(process_pool)
                continue
            if kind is Kind.POOL_JOB_QUEUED:
                _kind, t, tid, pool, number, fn, file, line, size, task = e
                if number in jobs:
                    continue  # a number seen before: odd input, keep the first
                jobs[number] = PoolJob(
                    pool, number, _text(fn), _text(file), line, task, tid, 0, t, None, None
                )
                if size:
                    sizes[pool] = max(sizes.get(pool, 0), size)
                continue
            _kind, t, tid, pool, number = e
            job = jobs.get(number)
            if kind is Kind.POOL_JOB_BEGIN:
                if job is None:  # queued before the window
                    jobs[number] = PoolJob(pool, number, "", "", 0, 0, 0, tid, None, t, None, "running")
                elif job.begin is None and job.state == "queued":
                    job.begin, job.worker, job.state = t, tid, "running"
            elif kind is Kind.POOL_JOB_END:
                if job is None:  # running since before the window
                    jobs[number] = PoolJob(pool, number, "", "", 0, 0, 0, tid, None, start, t, "done", True)
                elif job.state == "running":
                    job.end, job.state = t, "done"
                elif job.state == "queued" and job.begin is None:
                    job.state = "refused"
        except _ODD_EVENT:
            continue
    by_pool: dict[int, list[PoolJob]] = {}
    for job in jobs.values():
        by_pool.setdefault(job.pool, []).append(job)
    return {
        pool: _pool(pool, pool_jobs, sizes, threads, start, end, pool in processes)
        for pool, pool_jobs in by_pool.items()
    }


def _starts_in_workers(jobs: list[PoolJob], workers: int) -> None:
    """A process pool's BEGIN is when its manager thread put the job in the workers' call
    queue, which holds one job more than there are workers: a job began in a worker when
    it was handed over and a worker was free (the earliest end among the jobs before it,
    taken in hand-over order, as the workers take them from that queue)."""
    free = [0] * min(workers, len(jobs))  # when each worker is free next (a min-heap)
    for job in sorted((j for j in jobs if j.begin is not None), key=lambda j: (j.begin, j.job)):
        begin = max(int(job.begin or 0), heapq.heappop(free))
        if job.end is not None:
            begin = min(begin, job.end)
        job.begin = begin
        heapq.heappush(free, job.end if job.end is not None else 1 << 62)


def _pool(
    pool: int,
    pool_jobs: list[PoolJob],
    sizes: dict[int, int],
    threads: dict[int, ThreadTimeline],
    start: int,
    end: int,
    processes: bool = False,
) -> ThreadPool:
    pool_jobs.sort(key=lambda j: j.job)
    if processes and sizes.get(pool):
        _starts_in_workers(pool_jobs, sizes[pool])
    # FIFO: a job that never started although a later one of its pool did was cancelled
    later_began = False
    for job in reversed(pool_jobs):
        if job.state == "queued" and later_began:
            job.state = "cancelled"
        if job.begin is not None and job.queued is not None:
            later_began = True
    busy: list[tuple[int, int]] = []
    waiting: list[tuple[int, int]] = []
    workers: dict[int, None] = {}
    for job in pool_jobs:
        if job.worker and not processes:  # a process pool's BEGINs are its manager thread's
            workers[job.worker] = None
        if job.begin is not None:
            busy.append((job.begin, 1))
            busy.append((job.end if job.end is not None else end, -1))
        if job.state in ("cancelled", "refused"):
            continue
        if job.queued is not None or job.begin is not None:
            waiting.append((job.queued if job.queued is not None else start, 1))
            waiting.append((job.begin if job.begin is not None else end, -1))
    names = [threads[w].name for w in workers if w in threads and threads[w].name]
    prefixes = [n.rpartition("_")[0] if n.rpartition("_")[2].isdigit() else n for n in names]
    name = max(set(prefixes), key=lambda p: (prefixes.count(p), p)) if prefixes else ""
    return ThreadPool(
        pool=pool,
        name=name,
        max_workers=sizes.get(pool) or len(workers),
        workers=list(workers),
        jobs=pool_jobs,
        busy=_steps(busy, start),
        waiting=_steps(waiting, start),
        processes=processes,
    )
