"""How CPU is attributed: each thread's *measured* CPU charged to where it ran, and the
time it was ready to run but not on a CPU (waiting for the GIL) told apart from running.

The sampler takes the GIL to read stacks, so it finds the other threads only where they
let go of it: at a ``with lock:`` line, a socket call, or parked waiting to take the GIL
back. Counting every sample there as CPU (as a plain sampler does) charges the CPU of
hashing to the ``with lock:`` line and adds the GIL waits of four threads up into four
CPUs' worth of "CPU" on one core. Each SAMPLE carries instead the CPU the thread used
since its previous sample (its kernel CPU clock), so:

* a thread's CPU is the sum of its measured deltas: totals match the kernel's;
* a delta is charged to the sample's stack if the thread was not blocked in a traced
  call then, else to its sample nearest in time that found it running (a thread seen
  blocked at ``with lock:`` used its CPU elsewhere: where it was seen running); a thread
  never found running (in a lock convoy on one CPU the sampler may only ever catch it
  waiting) is charged where another thread in the same function was found running at
  the nearest time: a worker pool's threads run the same code;
* the part of the time between two samples that a thread neither blocked nor spent on a
  CPU, while other threads of the process were on one, is a wait for the GIL: READY in
  the thread's timeline (the ``ready`` column of the thread table);
* the rest of it, when the OS had the thread asleep at the sample and nobody else ran,
  was a wait in a call no source hooks (``subprocess.run``'s waitpid, a pipe read):
  BLOCKED (OTHER, "off-CPU in a call pyflight does not trace") up to the sample, one
  interval for a wait seen at several samples in a row (IDLE for a library's own thread).
  Samples keep the state they were taken in (``untraced-wait`` reads them).

Samples from older traces (no CPU measure) keep the old rule: a sample the OS saw on a
CPU weighs one sampling interval.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable

from pyflight.analysis.frames import untraced_wait_site
from pyflight.analysis.model import Interval, Model, Sample, State
from pyflight.core.events import BlockReason, ThreadState
from pyflight.format.reader import Frame

__all__ = ["WAITING_FOR_JOB", "cpu_samples", "mark_gil_waits", "mark_job_waits", "program_samples"]

DEFAULT_INTERVAL_NS = 10_000_000
#: Samples of one tick are recorded within this of each other; ticks are >= 9 ms apart.
TICK_GAP_NS = 2_000_000
#: Waits shorter than this share of a span are noise (clock granularity, the GIL hand-off).
MIN_READY_SHARE = 0.05

#: A thread asleep (S/D) at a sample for more than this share of the time since its
#: previous one (and at least UNTRACED_MIN_NS), with nobody else on a CPU meanwhile, was
#: in a wait no source traces: BLOCKED (OTHER) in the model, UNTRACED in its detail.
UNTRACED_MIN_SHARE = 0.5
UNTRACED_MIN_NS = 2_000_000
#: Detail of a BLOCKED (OTHER) interval found from samples (``off_cpu_waits``).
UNTRACED = "off-CPU in a call pyflight does not trace"
#: OS states of a thread asleep: off the CPU, not runnable.
ASLEEP = (ThreadState.SLEEPING, ThreadState.DISK)

#: A READY thread (woken or between samples, waiting for the GIL) is not on a CPU either.
_OFF_CPU = (State.BLOCKED, State.IDLE, State.READY)
#: Detail of a READY interval: woken by another thread, not yet running again.
WOKEN = "woken, waiting for the GIL"
#: Detail of a READY interval: a sleep that had ended, its thread not yet running again.
OVERSLEPT = "slept, waiting for the GIL"
#: A sleep this much longer than the time asked for waited (for the GIL or a CPU) after
#: it: the OS's timer slack and the wake-up itself take tens of microseconds.
OVERSLEEP_NS = 200_000
#: Detail of an IDLE interval: a pool worker between two jobs, in the pool's queue.
WAITING_FOR_JOB = "waiting for a job"


def program_samples(model: Model) -> dict[int, list[Sample]]:
    """Samples of the program's threads (not the recorder's), per thread, in time order;
    samples taken in pyflight's own code (an empty stack once its frames are cut) left out."""
    ours = {tid for tid, tl in model.threads.items() if tl.is_pyflight}
    out: dict[int, list[Sample]] = {}
    for s in model.samples:
        if s.tid in ours:
            continue
        out.setdefault(s.tid, []).append(s)
    for samples in out.values():
        samples.sort(key=lambda s: s.time)
    return out


def _on_cpu_unmeasured(s: Sample) -> bool:
    return s.os_state is ThreadState.RUNNING or (
        s.os_state is ThreadState.UNKNOWN and s.state is State.RUNNING
    )


def cpu_samples(model: Model) -> list[tuple[Sample, int]]:
    """Each program sample that CPU is charged to, with the CPU ns charged (> 0)."""
    interval = model.sampling_interval_ns or DEFAULT_INTERVAL_NS
    handoffs = _lock_sites(model)
    threads: list[tuple[list[Sample], list[int], list[Sample]]] = []
    for samples in program_samples(model).values():
        charged: list[Sample] = []
        ns: list[int] = []
        off: list[Sample] = []  # measured samples taken while the thread was blocked
        # extra samples taken on demand (a loop-stall watchdog) carry no CPU measure: on
        # a measured thread their CPU is in the next tick's delta already
        measured = any(s.span for s in samples)
        for s in samples:
            if not s.span:
                if not measured and s.stack and _on_cpu_unmeasured(s):
                    charged.append(s)
                    ns.append(interval)
            elif not s.stack:
                continue  # pyflight's own code on this thread: not the program's CPU
            elif s.state in _OFF_CPU or s.os_state is ThreadState.ZOMBIE:
                off.append(s)  # blocked, or the thread's exit (its last CPU delta)
            elif (s.stack[0].file, s.stack[0].line) in handoffs:
                off.append(s)  # stopped where it takes a traced lock: a GIL hand-off point
            else:
                charged.append(s)
                ns.append(s.cpu)
        threads.append((charged, ns, off))
    never_running = [
        s for charged, ns, off in threads if not _charge_where_running(off, charged, ns) for s in off if s.cpu
    ]
    found = [(s, n) for charged, ns, _ in threads for s, n in zip(charged, ns, strict=True)]
    out = [(s, n) for s, n in found if n > 0]
    # siblings' running samples without CPU of their own count as where CPU goes (the
    # native read of a holder that ended before the sampler's tick: its CPU is elsewhere)
    out.extend(_charge_like_siblings(never_running, found, _families(model)))
    return out


def _families(model: Model) -> dict[int, str]:
    """Thread -> its name with the numbers taken out: the threads of one pool or server
    (``Thread-569 (process_request_thread)``, ``ThreadPoolExecutor-0_3``, ``worker-2``)
    share it, and run the same code."""
    return {tid: _DIGITS.sub("#", tl.name) for tid, tl in model.threads.items() if tl.name}


_DIGITS = re.compile(r"\d+")


def _lock_sites(model: Model) -> set[tuple[str, int]]:
    """Lines where the program's threads blocked on a traced lock (``with lock:``). A
    thread releasing such a lock wakes a waiter that at once asks for the GIL, so the
    releaser lets go of the GIL right there, at the same line, and the sampler (which
    needs the GIL) finds it there far more often than the few hundred nanoseconds the
    line costs: on a loaded CPU, most of a lock convoy's CPU. A sample there is charged
    like a blocked one, to where the thread was seen running."""
    sites: set[tuple[str, int]] = set()
    for tl in model.threads.values():
        for iv in tl.intervals:
            if iv.reason is BlockReason.LOCK and iv.stack:
                sites.add((iv.stack[0].file, iv.stack[0].line))
    return sites


def _is_running(s: Sample) -> bool:
    return bool(s.span) and s.state not in _OFF_CPU


def _nearest(times: list[int], t: int) -> int:
    j = bisect_left(times, t)
    if j == len(times) or (j > 0 and t - times[j - 1] <= times[j] - t):
        j -= 1
    return j


def _charge_where_running(off: list[Sample], charged: list[Sample], ns: list[int]) -> bool:
    """Charge the CPU of samples taken while the thread was blocked (a lock, the GIL after
    a wake-up) to its sample nearest in time that found it running: the stack a blocked
    thread shows is where it waits, not where it used the CPU. False (nothing charged)
    if the thread was never found running."""
    running = [i for i, s in enumerate(charged) if _is_running(s)]
    if not running:
        return False
    times = [charged[i].time for i in running]
    for s in off:
        ns[running[_nearest(times, s.time)]] += s.cpu
    return True


def _charge_like_siblings(
    blocked: list[Sample], charged: list[tuple[Sample, int]], families: dict[int, str]
) -> list[tuple[Sample, int]]:
    """The CPU of threads never found running, each delta charged (still to its own
    thread) to the stack of the running sample nearest in time of a sibling: a thread of
    the same family (``_families``; its stacks read without the GIL first, where the CPU
    really went: the others were caught where they let go of the GIL, a socket write,
    a lock), else a thread whose innermost frame is in the same function (a worker
    caught waiting at ``with lock:`` ran that function's other lines); with neither,
    where the thread was seen."""
    groups: dict[object, list[Sample]] = {}
    for s, _ in charged:
        if s.stack and _is_running(s):
            groups.setdefault((s.stack[0].file, s.stack[0].function), []).append(s)
            family = families.get(s.tid)
            if family is not None:
                groups.setdefault((family, s.native), []).append(s)
    times: dict[object, list[int]] = {}
    for key, found in groups.items():
        found.sort(key=lambda s: s.time)
        times[key] = [x.time for x in found]
    out = []
    for s in blocked:
        family = families.get(s.tid)
        keys: list[object] = [(family, True), (family, False)] if family is not None else []
        keys.append((s.stack[0].file, s.stack[0].function) if s.stack else ("", ""))
        key = next((k for k in keys if k in groups), None)
        if key is None:
            out.append((s, s.cpu))
            continue
        like = groups[key][_nearest(times[key], s.time)]
        out.append((s._replace(stack=like.stack, state=like.state, reason=like.reason), s.cpu))
    return out


def _ticks(samples: Iterable[Sample]) -> list[list[Sample]]:
    """Measured samples grouped by the sampler tick that took them."""
    ticks: list[list[Sample]] = []
    previous = None
    for s in sorted((s for s in samples if s.span), key=lambda s: s.time):
        if previous is None or s.time - previous > TICK_GAP_NS:
            ticks.append([])
        ticks[-1].append(s)
        previous = s.time
    return ticks


def _running_pieces(intervals: list[Interval], starts: list[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """The RUNNING parts of ``intervals`` inside ``[lo, hi)``, latest first."""
    out: list[tuple[int, int]] = []
    i = bisect_left(starts, hi) - 1
    while i >= 0 and intervals[i].end > lo:
        iv = intervals[i]
        if iv.state is State.RUNNING:
            a, b = max(iv.start, lo), min(iv.end, hi)
            if b > a:
                out.append((a, b))
        i -= 1
    return out


def off_cpu_waits(
    model: Model,
) -> tuple[dict[int, list[tuple[int, int]]], dict[int, list[tuple[int, int, Sample]]]]:
    """Where the program's threads were neither running nor in a traced wait: windows
    of waiting for the GIL (or a CPU), per thread; and windows of waiting in a call no
    source traces, per thread, each with the sample that found the thread there.

    Between two samples a thread was RUNNING (not blocked in a traced call) for some
    time and on a CPU for ``cpu`` of it. The rest it was ready but not running: all of it
    if the OS had it runnable (waiting for a CPU), else as much as the process's other
    threads were on a CPU meanwhile (the GIL). Counted from the sample backwards. When
    the OS had it asleep at the sample (S/D) and more than ``UNTRACED_MIN_SHARE`` of the
    span is neither CPU nor a possible GIL wait (nobody else ran), the thread was in a
    wait nobody hooks (``subprocess.run``'s waitpid, a pipe read, a C extension, a lock
    the recorder does not trace): that part, up to the sample, is the second kind."""
    ours = {tid for tid, tl in model.threads.items() if tl.is_pyflight}
    starts = {tid: [iv.start for iv in tl.intervals] for tid, tl in model.threads.items() if tid not in ours}
    waits: dict[int, list[tuple[int, int]]] = {}
    untraced: dict[int, list[tuple[int, int, Sample]]] = {}
    for tick in _ticks(model.samples):
        busy = sum(s.cpu for s in tick)
        for s in tick:
            tl = model.threads.get(s.tid)
            if tl is None or s.tid in ours or s.os_state is ThreadState.ZOMBIE:
                continue
            pieces = _running_pieces(tl.intervals, starts[s.tid], s.time - s.span, s.time)
            idle = sum(b - a for a, b in pieces) - s.cpu
            cap = s.span if s.os_state is ThreadState.RUNNING else busy - s.cpu
            ready = min(idle, cap)
            rest = idle - max(0, ready)
            if (
                s.os_state in ASLEEP
                and s.state is State.RUNNING
                and s.stack
                and rest >= max(UNTRACED_MIN_SHARE * s.span, UNTRACED_MIN_NS)
            ):
                taken, pieces = _take(pieces, rest)  # in the wait at the sample: up to it
                untraced.setdefault(s.tid, []).extend((a, b, s) for a, b in taken)
            if ready <= MIN_READY_SHARE * s.span:
                continue
            waits.setdefault(s.tid, []).extend(_take(pieces, ready)[0])
    # an estimate must not overrule what a sample saw: no window holds a sample's instant
    # (a sample stays as taken; gil-hog reads the holder's line from its RUNNING samples)
    sampled: dict[int, list[int]] = {}
    for s in model.samples:
        if s.tid in waits:
            sampled.setdefault(s.tid, []).append(s.time)
    for tid, found in waits.items():
        found.sort()
        waits[tid] = _around(found, sorted(sampled.get(tid, ())))
    for windows in untraced.values():
        windows.sort(key=lambda w: w[0])
    return waits, untraced


def _take(pieces: list[tuple[int, int]], amount: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``amount`` ns from the latest of ``pieces`` (latest first): (taken, what is left),
    both latest first."""
    taken: list[tuple[int, int]] = []
    left: list[tuple[int, int]] = []
    for a, b in pieces:
        if amount <= 0:
            left.append((a, b))
            continue
        take = min(amount, b - a)
        taken.append((b - take, b))
        if b - take > a:
            left.append((a, b - take))
        amount -= take
    return taken, left


def _around(windows: list[tuple[int, int]], instants: list[int]) -> list[tuple[int, int]]:
    """``windows`` (sorted, disjoint) with each of the sorted ``instants`` cut out."""
    out: list[tuple[int, int]] = []
    for a, b in windows:
        j = bisect_left(instants, a)
        while j < len(instants) and instants[j] < b:
            if instants[j] > a:
                out.append((a, instants[j]))
            a = instants[j] + 1
            j += 1
        if b > a:
            out.append((a, b))
    return out


def _carve(
    intervals: list[Interval],
    windows: list[tuple[int, int]],
    state: State = State.READY,
    detail: str = "waiting for the GIL",
    obj: int = 0,
) -> list[Interval]:
    """``intervals`` with the RUNNING time inside ``windows`` (sorted, disjoint) turned
    into ``state`` (READY: a wait for the GIL)."""
    return _carve_with(
        intervals,
        [(a, b, None) for a, b in windows],
        lambda iv, a, b, _: Interval(a, b, state, None, obj, iv.stack, detail),
    )


def _carve_with(
    intervals: list[Interval],
    windows: list[tuple[int, int, Interval | None]],
    make: Callable[[Interval, int, int, Interval | None], Interval],
) -> list[Interval]:
    """``intervals`` with the RUNNING time inside each of ``windows`` (sorted, disjoint;
    each with what it stands for) replaced by ``make(running interval, start, end, it)``."""
    starts = [w[0] for w in windows]
    out: list[Interval] = []
    for iv in intervals:
        if iv.state is not State.RUNNING:
            out.append(iv)
            continue
        cursor = iv.start
        i = max(0, bisect_left(starts, iv.start) - 1)
        while i < len(windows) and windows[i][0] < iv.end:
            w0, w1, like = windows[i]
            a, b = max(w0, cursor), min(w1, iv.end)
            if b > a:
                if a > cursor:
                    out.append(iv.cut(cursor, a))
                out.append(make(iv, a, b, like))
                cursor = b
            i += 1
        if iv.end > cursor:
            out.append(iv.cut(cursor, iv.end))
    return out


def _merged_untraced(waits: list[tuple[int, int, Sample]]) -> list[tuple[int, int, Interval]]:
    """Sorted untraced windows -> disjoint ones, each with the interval it stands for: a
    wait found at several samples in a row (same place) is one interval, not one a tick.
    The stack is the program's part of the first sample's; the state BLOCKED (OTHER), or
    IDLE when no frame of it is the program's or a third-party library's (a library's
    own thread waiting for work)."""
    out: list[tuple[int, int, Interval]] = []
    for a, b, s in waits:
        where, callee = untraced_wait_site(s.stack)
        detail = _untraced_detail(where, callee)
        if out and a <= out[-1][1] + TICK_GAP_NS and out[-1][2].detail == detail:
            pa, _, iv = out[-1]
            out[-1] = (pa, max(b, out[-1][1]), iv)
            continue
        if out and a < out[-1][1]:
            a = out[-1][1]
            if a >= b:
                continue
        state = State.IDLE if where is None else State.BLOCKED
        reason = None if where is None else BlockReason.OTHER
        out.append((a, b, Interval(a, b, state, reason, 0, s.stack, detail)))
    return out


def _untraced_detail(where: Frame | None, callee: Frame | None) -> str:
    if callee is not None:
        return f"{UNTRACED}: in {callee.function}"
    if where is not None:
        return f"{UNTRACED}: at {where.function}"
    return UNTRACED


def _carve_untraced(intervals: list[Interval], windows: list[tuple[int, int, Interval]]) -> list[Interval]:
    """``intervals`` with the RUNNING time inside each of ``windows`` (sorted, disjoint)
    replaced by its interval's state, reason, stack and detail."""

    def found(running: Interval, a: int, b: int, like: Interval | None) -> Interval:
        return like.cut(a, b) if like is not None else running.cut(a, b)

    return _carve_with(intervals, list(windows), found)


def _split_woken(intervals: list[Interval], wake_times: list[int]) -> list[Interval]:
    """Each blocked interval another thread ended (released the lock, notified) split at
    the last wake-up in it: from there on the thread could go on, but had to take the
    GIL (or a CPU) back first."""
    out: list[Interval] = []
    for iv in intervals:
        if iv.state is State.BLOCKED:
            j = bisect_left(wake_times, iv.end) - 1
            if j >= 0 and iv.start < wake_times[j] < iv.end:
                woke = wake_times[j]
                out.append(iv.cut(iv.start, woke))
                out.append(Interval(woke, iv.end, State.READY, None, 0, iv.stack, WOKEN))
                continue
        out.append(iv)
    return out


def _split_overslept(intervals: list[Interval]) -> list[Interval] | None:
    """Each sleep that lasted past the time asked for (its obj, in ns) split there: the
    rest was a wait for the GIL (a thread holding it through the sleep's end keeps the
    sleeper out), not sleep. None if no sleep overslept (or the trace has no such time)."""
    out: list[Interval] | None = None
    for i, iv in enumerate(intervals):
        if (
            iv.state is State.BLOCKED
            and iv.reason == BlockReason.SLEEP
            and iv.obj > 0
            and iv.end - iv.start - iv.obj > OVERSLEEP_NS
        ):
            if out is None:
                out = intervals[:i]
            woke = iv.start + iv.obj
            out.append(iv.cut(iv.start, woke))
            out.append(Interval(woke, iv.end, State.READY, None, 0, iv.stack, OVERSLEPT))
        elif out is not None:
            out.append(iv)
    return out


def _wake_times(model: Model) -> dict[int, list[int]]:
    """Thread -> times another thread let it go on (sorted).

    A notify is recorded when it happens (WAKE). A contended lock's release is not: the
    waiter names its releaser when it gets the lock. In a convoy the releaser asks for
    the lock again right away and blocks, so its new wait's start is the release time;
    a releaser that did not come back leaves the waiter's whole wait BLOCKED."""
    lock_waits: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for tid, tl in model.threads.items():
        for iv in tl.intervals:
            if iv.state is State.BLOCKED and iv.reason == BlockReason.LOCK:
                lock_waits.setdefault((tid, iv.obj), []).append((iv.start, iv.end))
    out: dict[int, list[int]] = {}
    for w in model.wakes:
        if not w.target or w.task:
            continue
        t = w.time
        if w.reason == BlockReason.LOCK:
            waits = lock_waits.get((w.waker, w.obj))
            j = bisect_left(waits, (w.time,)) - 1 if waits else -1
            if j < 0 or waits is None or waits[j][1] <= w.time:
                continue  # the releaser was not waiting for the lock again: unknown
            t = waits[j][0]
        out.setdefault(w.target, []).append(t)
    for times in out.values():
        times.sort()
    return out


def mark_job_waits(model: Model) -> set[int]:
    """Turn the time a ``ThreadPoolExecutor`` worker spent between two of its jobs (and
    after its last) into IDLE: it waits in the pool's queue, a ``SimpleQueue`` whose wait
    is C code no source sees, so it was RUNNING in the timeline; its samples there (most
    of a busy server's worker samples: each tick finds all but one worker waiting) were
    charged the CPU the worker had used running jobs, at the queue's line. The threads
    changed."""
    runs: dict[int, list[tuple[int, int | None, int]]] = {}
    for pool in model.pools.values():
        if pool.processes:
            continue  # its jobs ran in other processes; their BEGINs are its manager thread's
        for job in pool.jobs:
            if job.worker and job.begin is not None:
                runs.setdefault(job.worker, []).append((job.begin, job.end, pool.pool))
    changed: set[int] = set()
    for tid, jobs in runs.items():
        tl = model.threads.get(tid)
        if tl is None:
            continue
        jobs.sort(key=lambda run: run[0])
        windows: list[tuple[int, int]] = []
        for (_, end, _), (begin, _, _) in itertools.pairwise(jobs):
            if end is not None and begin > end:
                windows.append((end, begin))
        last_end = jobs[-1][1]
        if last_end is not None and tl.end > last_end:
            windows.append((last_end, tl.end))
        if windows:
            tl.intervals = _carve(tl.intervals, windows, State.IDLE, WAITING_FOR_JOB, jobs[-1][2])
            changed.add(tid)
    return changed


def mark_gil_waits(model: Model) -> None:
    """Turn the time each program thread waited for the GIL (or a CPU) into READY: after
    another thread woke it, after a sleep's asked time, and between samples where it
    neither blocked nor ran; pool workers' waits for jobs (IDLE) first
    (``mark_job_waits``). A sample taken in such time says so too (it was taken BLOCKED
    or RUNNING)."""
    changed = mark_job_waits(model)
    for tid, thread in model.threads.items():
        split = None if thread.is_pyflight else _split_overslept(thread.intervals)
        if split is not None:
            thread.intervals = split
            changed.add(tid)
    for tid, times in _wake_times(model).items():
        tl = model.threads.get(tid)
        if tl is not None and not tl.is_pyflight:
            tl.intervals = _split_woken(tl.intervals, times)
            changed.add(tid)
    ready, untraced = off_cpu_waits(model)
    for tid, windows in ready.items():
        found = model.threads.get(tid)
        if found is not None:
            found.intervals = _carve(found.intervals, windows)
            changed.add(tid)
    for tid, waits in untraced.items():
        found = model.threads.get(tid)
        if found is not None:
            found.intervals = _carve_untraced(found.intervals, _merged_untraced(waits))
    marked = {tid: _marked_spans(model.threads[tid].intervals) for tid in changed}
    marked = {tid: spans for tid, spans in marked.items() if spans}
    if marked:
        model.samples = [_restated(s, marked.get(s.tid)) for s in model.samples]


def _marked_spans(intervals: list[Interval]) -> list[tuple[int, int, State]]:
    """The READY and job-wait IDLE intervals, as ``(start, end, state)``."""
    return [
        (iv.start, iv.end, iv.state)
        for iv in intervals
        if iv.state is State.READY or (iv.state is State.IDLE and iv.detail == WAITING_FOR_JOB)
    ]


def _restated(s: Sample, spans: list[tuple[int, int, State]] | None) -> Sample:
    """``s`` in the state of the (sorted, disjoint) span it was taken in, if any."""
    if not spans:
        return s
    j = bisect_left(spans, (s.time + 1,)) - 1
    if j >= 0 and spans[j][0] <= s.time < spans[j][1] and s.state is not spans[j][2]:
        return s._replace(state=spans[j][2], reason=None)
    return s
