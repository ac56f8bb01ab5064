"""Findings: scored rules that name a problem, its culprit, the evidence and what to do.

``find(model)`` runs every rule of ``RULES`` on an analysis ``Model`` and returns the
findings, highest score first. Scores are 0-100 as in JDK Mission Control: >= 75 is a
warning, >= 25 is information, below that the finding is only kept for ``--json``.
How each rule scores is documented in ``docs/report.md``.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyflight.analysis.model import State
from pyflight.core.events import BlockReason, Kind, ThreadState
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model

__all__ = ["INFO", "RULES", "WARNING", "Culprit", "Finding", "find", "severity", "user_frame"]

WARNING = 75
INFO = 25
#: Findings scoring below this are dropped altogether.
MIN_SCORE = 5
MS = 1_000_000
SECOND = 1_000_000_000


@dataclass(frozen=True)
class Culprit:
    function: str
    file: str
    line: int

    @classmethod
    def of(cls, frame: Frame | None) -> Culprit | None:
        return None if frame is None else cls(frame.function, frame.file, frame.line)

    def __str__(self) -> str:
        return f"{self.function} ({_short_file(self.file)}:{self.line})"

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "file": self.file, "line": self.line}


@dataclass
class Finding:
    rule: str
    score: int
    title: str
    culprit: Culprit | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    hint: str = ""

    @property
    def severity(self) -> str:
        return severity(self.score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "score": self.score,
            "severity": self.severity,
            "title": self.title,
            "culprit": None if self.culprit is None else self.culprit.to_dict(),
            "evidence": self.evidence,
            "hint": self.hint,
        }


def severity(score: int) -> str:
    return "warning" if score >= WARNING else "info" if score >= INFO else "ok"


# ---------------------------------------------------------------------------- helpers

_LIB_RE = re.compile(
    r"(^<)|([/\\]lib[/\\]python3\.\d+[/\\](?!site-packages))|([/\\]pyflight[/\\]"
    r"(sources|core|format|triggers|integrations|analysis|report|export)[/\\])"
    r"|([/\\]pyflight[/\\](annotate|recorder|__init__|run|cli)\.py$)"
)
_THIRD_PARTY_RE = re.compile(r"[/\\](site|dist)-packages[/\\]")
_PYFLIGHT_RE = re.compile(r"[/\\]pyflight[/\\]")


def is_library(frame: Frame) -> bool:
    """True for frames of the standard library or of pyflight itself."""
    return bool(_LIB_RE.search(frame.file))


def user_frame(stack: Sequence[Frame]) -> Frame | None:
    """The innermost frame of the program's own code in ``stack`` (innermost first), else
    of third-party code, else the innermost frame that is not pyflight's, else None."""
    for frame in stack:
        if not is_library(frame) and not _THIRD_PARTY_RE.search(frame.file):
            return frame
    for frame in stack:
        if not is_library(frame):
            return frame
    for frame in stack:
        if not (_PYFLIGHT_RE.search(frame.file) and is_library(frame)):
            return frame
    return stack[0] if stack else None


def _short_file(path: str) -> str:
    parts = re.split(r"[/\\]", path)
    return "/".join(parts[-2:]) if len(parts) > 2 else path


def ramp(x: float, points: Sequence[tuple[float, float]]) -> float:
    """Piecewise-linear interpolation through ``points`` (sorted by x), clamped at the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def _score(*values: float) -> int:
    return max(0, min(100, round(max(values, default=0.0))))


def fmt_ns(ns: float) -> str:
    """Human duration: 1.25 s, 340 ms, 12 us."""
    if ns >= SECOND:
        return f"{ns / SECOND:.2f} s"
    if ns >= MS:
        return f"{ns / MS:.0f} ms" if ns >= 10 * MS else f"{ns / MS:.1f} ms"
    return f"{ns / 1000:.0f} us"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.1f}%"


def _top(weights: Counter[Frame] | dict[Frame, float]) -> Frame | None:
    if not weights:
        return None
    return max(weights.items(), key=lambda kv: (kv[1], kv[0].function))[0]


def _thread_name(model: Model, tid: int) -> str:
    thread = model.threads.get(tid)
    return thread.name if thread is not None and thread.name else f"thread {tid}"


def _user_threads(model: Model) -> list[Any]:
    return [t for t in model.threads.values() if not t.is_pyflight]


def _lifetime(thread: Any) -> int:
    return max(0, int(thread.end) - int(thread.start))


def _rel(model: Model, t: int) -> float:
    """Seconds since the start of the trace."""
    return round((t - model.start) / SECOND, 3)


def _interval_ns(model: Model) -> int:
    interval = int(getattr(model, "sampling_interval_ns", 0) or 0)
    return interval if interval > 0 else 10 * MS


def _samples_in(model: Model, tid: int, start: int, end: int) -> list[Any]:
    samples = _samples_by_thread(model).get(tid)
    if not samples:
        return []
    times = _sample_times(model)[tid]
    return samples[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]


_CACHE: list[tuple[Any, dict[str, Any]]] = []


def _cache(model: Model) -> dict[str, Any]:
    """Derived data of the model the rules look at now (one model at a time)."""
    if _CACHE and _CACHE[0][0] is model:
        return _CACHE[0][1]
    _CACHE[:] = [(model, {})]
    return _CACHE[0][1]


def _samples_by_thread(model: Model) -> dict[int, list[Any]]:
    cache = _cache(model)
    by_thread: dict[int, list[Any]] | None = cache.get("by_thread")
    if by_thread is None:
        by_thread = defaultdict(list)
        for sample in model.samples:
            by_thread[sample.tid].append(sample)
        for samples in by_thread.values():
            samples.sort(key=lambda s: s.time)
        cache["by_thread"] = by_thread
    return by_thread


def _sample_times(model: Model) -> dict[int, list[int]]:
    cache = _cache(model)
    times: dict[int, list[int]] | None = cache.get("times")
    if times is None:
        times = {tid: [s.time for s in samples] for tid, samples in _samples_by_thread(model).items()}
        cache["times"] = times
    return times


class _Spans:
    """Sorted, merged time spans with a fast membership test."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def __contains__(self, t: int) -> bool:
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and t <= self.ends[i]

    def overlaps(self, a: int, b: int) -> bool:
        """True if some span shares a moment with [a, b]."""
        i = bisect.bisect_right(self.starts, b) - 1
        return i >= 0 and self.ends[i] >= a


def _hot_frame(samples: Iterable[Any], *, running_only: bool = False) -> tuple[Frame | None, int]:
    """The user frame seen most often in ``samples`` and how many samples it was in."""
    counts: Counter[Frame] = Counter()
    for sample in samples:
        if running_only and sample.os_state not in (ThreadState.RUNNING, ThreadState.UNKNOWN):
            continue
        frame = user_frame(sample.stack)
        if frame is not None:
            counts[frame] += 1
    top = _top(counts)
    return top, (counts[top] if top is not None else 0)


def _by_function(weights: dict[Frame, float]) -> tuple[Frame | None, float]:
    """Sum weights per function; return the heaviest line of the heaviest function."""
    per_function: dict[tuple[str, str], float] = defaultdict(float)
    for frame, weight in weights.items():
        per_function[(frame.function, frame.file)] += weight
    if not per_function:
        return None, 0.0
    key = max(per_function, key=lambda k: per_function[k])
    lines = {f: w for f, w in weights.items() if (f.function, f.file) == key}
    return _top(lines), per_function[key]


# ---------------------------------------------------------------------------- rules

Rule = Callable[["Model"], list[Finding]]


_LOOP_FRAMES = ("_run_once", "Handle._run", "run_forever", "_run")


def step_frame(stack: Sequence[Frame]) -> Frame | None:
    """The innermost user frame *inside* an event-loop step: frames outer to asyncio's
    ``_run_once`` / ``Handle._run`` (``main``, ``asyncio.run``) are not the step's."""
    fallback = None
    for frame in stack:
        if frame.function.endswith(_LOOP_FRAMES) and "asyncio" in frame.file:
            return fallback
        if not is_library(frame):
            if not _THIRD_PARTY_RE.search(frame.file):
                return frame
            fallback = fallback or frame
    return fallback


class _Window:
    """A stretch of time in which one loop ran one long step (or several overlapping)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.weights: dict[Frame, float] = defaultdict(float)
        self.samples = self.running = self.sleeping = 0
        self.stall_stacks = 0
        self.tasks: Counter[str] = Counter()


def _long_steps(model: Model, loop: Any) -> list[_Window]:
    """Windows of long steps/stalls of ``loop`` that ran user code (cached per loop).

    A window in which neither the stall stacks nor the loop thread's samples show user
    code inside the step is left out: the step was not slow by itself but waiting for
    the GIL (that is what ``loop-starved`` reports)."""
    cache = _cache(model).setdefault("long_steps", {})
    if loop.loop in cache:
        windows: list[_Window] = cache[loop.loop]
        return windows
    spans = [(iv.start, iv.end, str(iv.detail or "")) for iv in loop.busy if iv.end - iv.start >= LONG_STEP]
    spans += [(st.start, st.end, "") for st in loop.stalls]
    merged: list[_Window] = []
    for start, end, _ in sorted(spans):
        if merged and start <= merged[-1].end:
            merged[-1].end = max(merged[-1].end, end)
        else:
            merged.append(_Window(start, end))
    starts = [w.start for w in merged]

    def window_of(t: int) -> _Window | None:
        i = bisect.bisect_right(starts, t) - 1
        return merged[i] if i >= 0 and t <= merged[i].end else None

    for start, _, detail in spans:
        w = window_of(start)
        if w is not None and detail:
            w.tasks[detail] += 1
    for stall in loop.stalls:
        w = window_of(stall.start)
        if w is None:
            continue
        label = _task_label(model, stall.task) if stall.task else ""
        if label:
            w.tasks[label] += 1
        stacks = list(stall.stacks)
        for stack in stacks:
            w.stall_stacks += 1
            frame = step_frame(stack)
            if frame is not None:
                w.weights[frame] += stall.duration / len(stacks)
    interval = _interval_ns(model)
    for w in merged:
        for sample in _samples_in(model, loop.tid, w.start, w.end):
            w.samples += 1
            frame = step_frame(sample.stack)
            if frame is not None:
                w.weights[frame] += interval
            if sample.os_state == ThreadState.RUNNING:
                w.running += 1
            elif sample.os_state in (ThreadState.SLEEPING, ThreadState.DISK):
                w.sleeping += 1
    kept = [w for w in merged if w.weights or not (w.samples or w.stall_stacks)]
    cache[loop.loop] = kept
    return kept


LONG_STEP = 100 * MS


def rule_loop_blocked(model: Model) -> list[Finding]:
    """Event-loop steps that ran for long: a synchronous call blocked the loop."""
    out: list[Finding] = []
    for loop in model.loops.values():
        merged = _long_steps(model, loop)
        if not merged:
            continue
        blocked = sum(w.end - w.start for w in merged)
        worst_w = max(merged, key=lambda w: w.end - w.start)
        worst = worst_w.end - worst_w.start
        life = max(1, _loop_life(model, loop))
        share = blocked / life
        weights: dict[Frame, float] = defaultdict(float)
        tasks: Counter[str] = Counter()
        running = sleeping = 0
        for w in merged:
            for frame, weight in w.weights.items():
                weights[frame] += weight
            tasks.update(w.tasks)
            running += w.running
            sleeping += w.sleeping
        culprit, _ = _by_function(weights)
        worst_a = worst_w.start
        kind = "a CPU-heavy step" if running > sleeping else "a synchronous (blocking) call"
        where = f" in {culprit.function}" if culprit else ""
        score = _score(
            ramp(worst / MS, [(100, 35), (250, 60), (500, 78), (1000, 88), (5000, 95)]),
            ramp(share, [(0.01, 30), (0.05, 60), (0.2, 85), (0.5, 95)]),
        )
        out.append(
            Finding(
                rule="loop-blocked",
                score=score,
                title=f"Event loop blocked for up to {fmt_ns(worst)} by {kind}{where}",
                culprit=Culprit.of(culprit),
                evidence={
                    "loop": loop.loop,
                    "thread": _thread_name(model, loop.tid),
                    "long_steps": len(merged),
                    "blocked_ns": blocked,
                    "blocked_share": round(share, 4),
                    "worst_ns": worst,
                    "worst_at_s": _rel(model, worst_a),
                    "tasks": [name for name, _ in tasks.most_common(3)],
                },
                hint=(
                    "Nothing else runs on the loop while a step runs. Move the blocking call off "
                    "the loop (await an async equivalent, or `await loop.run_in_executor(None, ...)` "
                    "/ `asyncio.to_thread(...)`); split CPU-heavy work or run it in a process pool."
                ),
            )
        )
    return out


def _loop_life(model: Model, loop: Any) -> int:
    thread = model.threads.get(loop.tid)
    edges = [iv.start for iv in loop.busy[:1]] + [iv.start for iv in loop.idle[:1]]
    ends = [iv.end for iv in loop.busy[-1:]] + [iv.end for iv in loop.idle[-1:]]
    if edges and ends:
        return int(max(ends) - min(edges))
    return _lifetime(thread) if thread is not None else model.end - model.start


def _task_label(model: Model, task_id: int) -> str:
    task = model.tasks.get(task_id)
    if task is None:
        return ""
    return str(task.coro or task.name)


def rule_loop_starved(model: Model) -> list[Finding]:
    """The loop is late although its steps are short: it waits for the GIL or is overloaded."""
    out: list[Finding] = []
    interval = _interval_ns(model)
    ticks = _sampler_ticks(model) if model.loops else []
    for loop in model.loops.values():
        # only steps seen running user code are the loop's own doing; a long step with no
        # sample or stall stack in it may itself be a GIL wait (the sampler needs the GIL
        # too), which is what this rule is about
        excluded = _Spans((w.start, w.end + 200 * MS) for w in _long_steps(model, loop) if w.weights)

        # a wait that overlaps a long step is that step's doing (loop-blocked), not starvation
        def outside(a: int, b: int, excluded: _Spans = excluded) -> bool:
            return not excluded.overlaps(a, b)

        lags = [lag for t, lag in loop.lag if outside(t - lag, t)]
        delays = [
            d
            for task in model.all_tasks()
            if task.thread == loop.tid
            for iv, d in _ready_delays(task)
            if outside(iv, iv + d)
        ]
        lag_p90 = _quantile(lags, 0.9) if len(lags) >= 5 else 0
        delay_p90 = _quantile(delays, 0.9) if len(delays) >= 10 else 0
        gil_late = _lateness([(a, b) for a, b in itertools.pairwise(ticks) if outside(a, b)], interval)
        late = max(lag_p90, delay_p90, gil_late)
        if late < 5 * MS:
            continue
        # who has the CPU meanwhile (outside the long steps, like the lateness above):
        # other non-pyflight threads running Python code, or the loop's own short steps
        others: Counter[Frame] = Counter()
        loop_own: Counter[Frame] = Counter()
        for sample in model.samples:
            if sample.os_state != ThreadState.RUNNING or sample.state is not State.RUNNING:
                continue
            if sample.time in excluded:
                continue
            thread = model.threads.get(sample.tid)
            if thread is None or thread.is_pyflight:
                continue
            frame = user_frame(sample.stack)
            if frame is None:
                continue
            (loop_own if sample.tid == loop.tid else others)[frame] += 1
        other_frame, other_n = _by_function({f: float(n) for f, n in others.items()})
        own_frame, own_n = _by_function({f: float(n) for f, n in loop_own.items()})
        if other_frame is not None and other_n >= max(3.0, own_n * 0.5):
            culprit, cause = other_frame, "another thread holding the GIL"
            hint = (
                f"A CPU-bound thread ({other_frame.function}) competes with the loop for the GIL: "
                "each time the loop wakes up it waits up to the switch interval (5 ms) or more. "
                "Move CPU-bound work to a process (ProcessPoolExecutor) or a C extension that "
                "releases the GIL, or lower sys.setswitchinterval()."
            )
        elif max(lag_p90, delay_p90) < 5 * MS or own_frame is None:
            continue  # only the sampler was late: the loop thread itself held the GIL
        elif own_n * interval < 0.2 * _loop_life(model, loop):
            continue  # the loop is not busy: late for reasons we cannot name
        else:
            culprit, cause = own_frame, "too much work queued on the loop"
            hint = (
                "The loop has more ready work than it can run: every callback waits for the ones "
                "queued before it. Limit concurrency (a Semaphore), batch small callbacks, or move "
                "work to other processes."
            )
        score = _score(ramp(late / MS, [(5, 20), (20, 45), (50, 65), (100, 80), (500, 92)]))
        where = f" ({culprit.function})" if culprit else ""
        out.append(
            Finding(
                rule="loop-starved",
                score=score,
                title=(
                    f"Event loop starved: wake-ups late by {fmt_ns(late)} with no long step, {cause}{where}"
                ),
                culprit=Culprit.of(culprit),
                evidence={
                    "loop": loop.loop,
                    "thread": _thread_name(model, loop.tid),
                    "lag_p90_ns": lag_p90,
                    "lag_max_ns": max(lags, default=0),
                    "lag_samples": len(lags),
                    "scheduling_delay_p90_ns": delay_p90,
                    "scheduling_delays": len(delays),
                    "sampler_lateness_ns": gil_late,
                    "competing_cpu_ns": int(other_n * interval),
                    "loop_cpu_ns": int(own_n * interval),
                },
                hint=hint,
            )
        )
    return out


def _sampler_ticks(model: Model) -> list[int]:
    interval = _interval_ns(model)
    ticks: list[int] = []
    for t in sorted({s.time for s in model.samples}):
        if not ticks or t - ticks[-1] >= interval // 4:
            ticks.append(t)
    return ticks


def _lateness(pairs: list[tuple[int, int]], interval: int) -> int:
    """Median delay of the stack sampler's ticks past their due time: the sampler needs
    the GIL for each tick, so a late sampler means some thread holds the GIL for long."""
    if len(pairs) < 10:
        return 0
    gaps = sorted(b - a for a, b in pairs)
    return max(0, gaps[len(gaps) // 2] - interval)


def _ready_delays(task: Any) -> list[tuple[int, int]]:
    return [(iv.start, iv.end - iv.start) for iv in task.intervals if iv.state is State.READY]


def _quantile(values: Sequence[int], q: float) -> int:
    ordered = sorted(values)
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _blocked(model: Model, reason: BlockReason) -> list[tuple[Any, Any]]:
    """(thread, interval) for every interval of user threads blocked for ``reason``."""
    out = []
    for thread in _user_threads(model):
        for iv in thread.intervals:
            if iv.reason == reason and iv.state is State.BLOCKED:
                out.append((thread, iv))
    return out


def _wakers(model: Model, reason: BlockReason, objs: set[int]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for wake in model.wakes:
        if wake.reason == reason and wake.obj in objs and wake.waker:
            counts[wake.waker] += 1
    return counts


@dataclass
class _Contention:
    """The waits of threads (or tasks) on one object, when they add up to something."""

    obj: int
    waits: list[tuple[Any, Any]]  # (waiter, blocked interval)
    waiters: dict[int, Any]  # by thread or task id
    total: int
    share: float  # of the waiters' lifetime
    worst_waiter: Any
    worst: Any
    where: Frame | None  # the user function they waited in, by wait time


def _contentions(
    pairs: Iterable[tuple[Any, Any]],
    owner_id: Callable[[Any], int],
    owner_life: Callable[[Any], int],
    min_total: int = 10 * MS,
) -> Iterator[_Contention]:
    by_obj: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
    for owner, iv in pairs:
        by_obj[iv.obj].append((owner, iv))
    for obj, waits in by_obj.items():
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < min_total:
            continue
        waiters = {owner_id(t): t for t, _ in waits}
        life = sum(owner_life(t) for t in waiters.values()) or 1
        worst_waiter, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        yield _Contention(obj, waits, waiters, total, total / life, worst_waiter, worst, _where(waits))


#: Lock contention score by the waiters' share of life spent waiting.
_LOCK_RAMP = [(0.02, 15), (0.05, 30), (0.2, 60), (0.4, 80), (0.7, 95)]


def rule_lock_contention(model: Model) -> list[Finding]:
    out: list[Finding] = []
    for c in _contentions(_blocked(model, BlockReason.LOCK), lambda t: t.tid, _lifetime):
        obj, waits, waiters, total, share = c.obj, c.waits, c.waiters, c.total, c.share
        worst_t, worst, where = c.worst_waiter, c.worst, c.where
        holders = _wakers(model, BlockReason.LOCK, {obj})
        # where the holders were while others waited
        held: Counter[Frame] = Counter()
        for _, iv in waits:
            for tid in holders:
                for sample in _samples_in(model, tid, iv.start, iv.end):
                    frame = user_frame(sample.stack)
                    if frame is not None:
                        held[frame] += 1
        holder_frame = _top(held)
        score = _score(ramp(share, _LOCK_RAMP))
        title = f"Lock contention: {len(waiters)} thread(s) waited {fmt_ns(total)} for a lock"
        if where:
            title += f" in {where.function}"
        out.append(
            Finding(
                rule="lock-contention",
                score=score,
                title=title,
                culprit=Culprit.of(where),
                evidence={
                    "lock": obj,
                    "waits": len(waits),
                    "wait_ns": total,
                    "wait_share": round(share, 4),
                    "worst_ns": worst.end - worst.start,
                    "worst_at_s": _rel(model, worst.start),
                    "worst_waiter": worst_t.name,
                    "waiters": sorted(t.name for t in waiters.values()),
                    "holders": [_thread_name(model, tid) for tid, _ in holders.most_common(5)],
                    "held_at": str(Culprit.of(holder_frame)) if holder_frame else None,
                },
                hint=(
                    "Threads queue up on one lock. Hold it for less time (compute outside the "
                    "`with lock:` block, copy then release), split it into finer locks, or hand "
                    "work over with a queue instead of sharing state."
                ),
            )
        )
    out.extend(_asyncio_lock_contention(model))
    return out


# ---------------------------------------------------------------- asyncio locks and queues


def _task_blocked(model: Model, reason: BlockReason) -> list[tuple[Any, Any]]:
    """(task, interval) for every interval of asyncio tasks blocked for ``reason`` (recorded
    by TASK_BLOCK: asyncio locks, semaphores, events, conditions, queues)."""
    out = []
    for task in model.all_tasks():
        for iv in task.intervals:
            if iv.reason == reason and iv.state is State.BLOCKED:
                out.append((task, iv))
    return out


def _task_life(task: Any) -> int:
    return max(0, int(task.end) - int(task.created))


def _task_label_of(task: Any) -> str:
    return task.coro or task.name or str(task.id)


def _where(waits: Iterable[tuple[Any, Any]]) -> Frame | None:
    """The user function the waits happened in (by total wait time)."""
    weights: dict[Frame, float] = defaultdict(float)
    for _, iv in waits:
        frame = user_frame(iv.stack)
        if frame is not None:
            weights[frame] += iv.end - iv.start
    return _by_function(weights)[0]


def _overlap(spans: _Spans, start: int, end: int) -> int:
    """How much of [start, end] lies inside ``spans``."""
    total = 0
    i = max(0, bisect.bisect_right(spans.starts, start) - 1)
    while i < len(spans.starts) and spans.starts[i] < end:
        total += max(0, min(end, spans.ends[i]) - max(start, spans.starts[i]))
        i += 1
    return total


def _task_activity(
    model: Model, task_spans: Iterable[tuple[Any, list[tuple[int, int]]]], exclude_obj: int = 0
) -> tuple[Frame | None, int, int]:
    """Where each task was during its spans: the user frame of its samples (running) and
    of its blocked intervals that have a stack (not those on ``exclude_obj``), weighted
    by time. Returns (frame, ns running seen by samples, ns blocked)."""
    interval = _interval_ns(model)
    weights: dict[Frame, float] = defaultdict(float)
    running = waiting = 0
    for task, spans in task_spans:
        merged = _Spans(spans)
        for iv in task.intervals:
            if iv.state is not State.BLOCKED or (exclude_obj and iv.obj == exclude_obj):
                continue
            inside = _overlap(merged, iv.start, iv.end)
            if inside <= 0:
                continue
            waiting += inside
            frame = user_frame(iv.stack)
            if frame is not None and not is_library(frame):  # not just asyncio.sleep
                weights[frame] += inside
        for sample in _samples_by_thread(model).get(task.thread, ()):
            if sample.task == task.id and sample.time in merged:
                frame = user_frame(sample.stack)
                running += interval
                if frame is not None:
                    weights[frame] += interval
    frame, _ = _by_function(weights)
    return frame, running, waiting


def _asyncio_lock_contention(model: Model) -> list[Finding]:
    """asyncio tasks queueing on one asyncio.Lock / Semaphore.

    The holder is not recorded (that would cost on every release); it is inferred: an
    asyncio.Lock with waiters goes to them in FIFO order (no barging), so a task whose
    wait ended holds the lock until the next wait on it ends."""
    out: list[Finding] = []
    for c in _contentions(_task_blocked(model, BlockReason.LOCK), lambda t: t.id, _task_life):
        obj, waits, waiters, total, share = c.obj, c.waits, c.waiters, c.total, c.share
        worst_t, worst, where = c.worst_waiter, c.worst, c.where
        what = Counter(iv.detail for _, iv in waits).most_common(1)[0][0] or "asyncio.Lock.acquire"
        kind = what.rsplit(".", 1)[0]  # asyncio.Lock, asyncio.Semaphore
        # inferred holds: from the end of one wait to the end of the next
        ends = sorted((iv.end, t.id) for t, iv in waits)
        holds: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for (a, tid), (b, _next) in itertools.pairwise(ends):
            if b > a:
                holds[tid].append((a, b))
        held_by: Counter[str] = Counter()
        for tid, spans in holds.items():
            held_by[_task_label_of(waiters[tid])] += sum(b - a for a, b in spans)
        holder_frame, holder_running, holder_waiting = _task_activity(
            model, [(waiters[tid], spans) for tid, spans in holds.items()]
        )
        score = _score(ramp(share, _LOCK_RAMP))
        title = f"asyncio lock contention: {len(waiters)} task(s) waited {fmt_ns(total)} for an {kind}"
        if where:
            title += f" in {where.function}"
        held_ns = sum(held_by.values())
        if holder_frame is not None:
            title += f"; holders busy in {holder_frame.function}"
        elif held_by:
            title += f"; held by {held_by.most_common(1)[0][0]} tasks"
            if held_ns and holder_waiting >= 0.5 * held_ns:
                title += f", awaiting while holding it ({_pct(holder_waiting / held_ns)} of the time)"
        out.append(
            Finding(
                rule="lock-contention",
                score=score,
                title=title,
                culprit=Culprit.of(where),
                evidence={
                    "lock": obj,
                    "kind": kind,
                    "waits": len(waits),
                    "wait_ns": total,
                    "wait_share": round(share, 4),
                    "worst_ns": worst.end - worst.start,
                    "worst_at_s": _rel(model, worst.start),
                    "worst_waiter": worst_t.name or _task_label_of(worst_t),
                    "waiting_tasks": len(waiters),
                    "waiting_in": sorted({_task_label_of(t) for t in waiters.values()})[:10],
                    "holders": [name for name, _ in held_by.most_common(5)],
                    "held_at": str(Culprit.of(holder_frame)) if holder_frame else None,
                    "held_ns": held_ns,
                    "holders_running_ns": holder_running,
                    "holders_awaiting_ns": holder_waiting,
                },
                hint=(
                    f"Tasks queue up on one {kind}. A task holding it across an `await` (I/O, "
                    "sleep, another lock) makes every other task wait that long: do the slow "
                    "await outside the `async with` block, shorten the critical section, use a "
                    "finer-grained lock per key, or a Semaphore if a few may run at once. "
                    "Recording with task_wait='stack' shows where holders await."
                ),
            )
        )
    return out


def _in_function(stack: Sequence[Frame], names: set[str], file_part: str) -> bool:
    return any(f.function in names and file_part in f.file.replace("\\", "/") for f in stack[:6])


#: Queue scores (threads and asyncio alike) by the producers' share of life blocked on a
#: full queue, and by the consumers' share idle on an empty one (info at most: often fine).
_BACKLOG_RAMP = [(0.05, 25), (0.2, 50), (0.5, 78), (0.8, 90)]
_STARVED_RAMP = [(0.3, 20), (0.6, 35), (0.9, 55)]


def rule_queue(model: Model) -> list[Finding]:
    """Producers blocked on a full queue (slow consumers) / consumers idle (slow producer)."""
    out: list[Finding] = []
    puts: list[tuple[Any, Any]] = []
    gets: list[tuple[Any, Any]] = []
    for thread, iv in _blocked(model, BlockReason.CONDITION):
        if _in_function(iv.stack, {"put", "Queue.put"}, "queue.py"):
            puts.append((thread, iv))
        elif _in_function(iv.stack, {"get", "Queue.get"}, "queue.py"):
            gets.append((thread, iv))
    interval = _interval_ns(model)
    for side, waits in (("put", puts), ("get", gets)):
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < 20 * MS:
            continue
        waiting = {t.tid: t for t, _ in waits}
        life = sum(_lifetime(t) for t in waiting.values()) or 1
        share = total / life
        weights: dict[Frame, float] = defaultdict(float)
        for _, iv in waits:
            frame = user_frame(iv.stack)
            if frame is not None:
                weights[frame] += iv.end - iv.start
        where, _ = _by_function(weights)
        # the other side: threads that woke the waiters; what they were busy with
        others = _wakers(model, BlockReason.CONDITION, {iv.obj for _, iv in waits})
        other_tids = [tid for tid in others if tid not in waiting] or list(others)
        busy: Counter[Frame] = Counter()
        for tid in other_tids:
            for sample in _samples_by_thread(model).get(tid, ()):
                if _in_function(sample.stack, {"get", "put"}, "queue.py"):
                    continue
                frame = user_frame(sample.stack)
                if frame is not None:
                    busy[frame] += 1
        other_frame, _ = _by_function({f: float(n) for f, n in busy.items()})
        _, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        evidence = {
            "waits": len(waits),
            "wait_ns": total,
            "wait_share": round(share, 4),
            "worst_ns": worst.end - worst.start,
            "worst_at_s": _rel(model, worst.start),
            "waiting_threads": sorted(t.name for t in waiting.values()),
            "waiting_at": str(Culprit.of(where)) if where else None,
            "other_side": [_thread_name(model, tid) for tid in other_tids[:5]],
            "other_side_busy_in": str(Culprit.of(other_frame)) if other_frame else None,
            "other_side_busy_ns": sum(busy.values()) * interval,
        }
        if side == "put":
            culprit = other_frame or where
            score = _score(ramp(share, _BACKLOG_RAMP))
            slow = f": consumers busy in {other_frame.function}" if other_frame else ""
            out.append(
                Finding(
                    rule="queue-backlog",
                    score=score,
                    title=f"Producers blocked on a full queue for {fmt_ns(total)} ({_pct(share)}){slow}",
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    hint=(
                        "The queue is full: consumers do not keep up. Make the consumer faster "
                        "(see the culprit), add consumers, or accept a bigger maxsize if bursts "
                        "are short."
                    ),
                )
            )
        else:
            if share < 0.3 or len(waiting) < 1:
                continue
            culprit = other_frame or where
            score = _score(ramp(share, _STARVED_RAMP))
            slow = f": producer busy in {other_frame.function}" if other_frame else ""
            out.append(
                Finding(
                    rule="queue-starved",
                    score=score,
                    title=(
                        f"{len(waiting)} consumer thread(s) idle on an empty queue "
                        f"{_pct(share)} of their time{slow}"
                    ),
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    hint=(
                        "Consumers wait for work most of the time: the producer side is the "
                        "bottleneck (see the culprit), or there are more consumers than needed."
                    ),
                )
            )
    out.extend(_asyncio_queue(model))
    return out


def _previous_steps(model: Model, waits: Iterable[tuple[Any, Any]], exclude: set[int]) -> Counter[int]:
    """For each wait, the task whose step ran last on the loop before the waiter's next
    step (not a task in ``exclude``): most often the one that woke it (put into / took
    from the queue), as asyncio runs a woken task right after the callbacks ready before it."""
    cache = _cache(model).setdefault("loop_steps", {})
    counts: Counter[int] = Counter()
    for task, iv in waits:
        entry = cache.get(task.thread)
        if entry is None:
            items = sorted(
                (b.end, b.start, b.obj)
                for loop in model.loops.values()
                if loop.tid == task.thread
                for b in loop.busy
                if b.obj
            )
            entry = cache[task.thread] = (items, [it[0] for it in items])
        items, ends = entry
        starts = [st.start for st in task.steps]
        k = bisect.bisect_left(starts, iv.end)
        resumed = starts[k] if k < len(starts) else iv.end
        i = bisect.bisect_right(ends, resumed) - 1
        for j in range(i, max(i - 8, -1), -1):
            step_end, _step_start, tid = items[j]
            if step_end < iv.start:
                break
            if tid != task.id and tid not in exclude:
                counts[tid] += 1
                break
    return counts


def _asyncio_queue(model: Model) -> list[Finding]:
    """asyncio.Queue: producers blocked on put (a full queue: slow consumers) and consumers
    idle on get (an empty queue: a slow producer), per queue."""
    out: list[Finding] = []
    sides: dict[tuple[str, int], list[tuple[Any, Any]]] = defaultdict(list)
    for task, iv in _task_blocked(model, BlockReason.CONDITION):
        if iv.detail == "asyncio.Queue.put":
            sides[("put", iv.obj)].append((task, iv))
        elif iv.detail == "asyncio.Queue.get":
            sides[("get", iv.obj)].append((task, iv))
    tasks_by_id = {t.id: t for t in model.all_tasks()}
    for (side, obj), waits in sides.items():
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < 20 * MS:
            continue
        waiting = {t.id: t for t, _ in waits}
        life = sum(_task_life(t) for t in waiting.values()) or 1
        share = total / life
        if side == "get" and share < 0.3:
            continue
        where = _where(waits)
        # the other side: tasks seen waiting on the other end of this queue, else the tasks
        # whose steps ran right before the waiters resumed
        other_side = "get" if side == "put" else "put"
        others = {t.id: t for t, _ in sides.get((other_side, obj), ()) if t.id not in waiting}
        if not others:
            guessed = _previous_steps(model, waits, set(waiting))
            others = {
                tid: tasks_by_id[tid]
                for tid, n in guessed.most_common(3)
                if tid in tasks_by_id and n >= max(2, len(waits) // 10)
            }
        spans = [(iv.start, iv.end) for _, iv in waits]
        other_frame, busy_ns, other_waiting_ns = _task_activity(
            model, [(t, spans) for t in others.values()], exclude_obj=obj
        )
        if other_frame is None:  # nothing seen while they worked: where they wait on the queue
            other_frame = _where(
                (t, iv) for t, iv in _task_blocked(model, BlockReason.CONDITION) if t.id in others
            )
        _, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        evidence = {
            "queue": obj,
            "waits": len(waits),
            "wait_ns": total,
            "wait_share": round(share, 4),
            "worst_ns": worst.end - worst.start,
            "worst_at_s": _rel(model, worst.start),
            "waiting_tasks": len(waiting),
            "waiting_in": sorted({_task_label_of(t) for t in waiting.values()})[:10],
            "waiting_at": str(Culprit.of(where)) if where else None,
            "other_side": sorted({_task_label_of(t) for t in others.values()})[:5],
            "other_side_busy_in": str(Culprit.of(other_frame)) if other_frame else None,
            "other_side_busy_ns": busy_ns,
            "other_side_awaiting_ns": other_waiting_ns,
        }
        culprit = other_frame or where
        if side == "put":
            score = _score(ramp(share, _BACKLOG_RAMP))
            slow = f": consumers busy in {other_frame.function}" if other_frame else ""
            out.append(
                Finding(
                    rule="queue-backlog",
                    score=score,
                    title=(
                        f"{len(waiting)} asyncio task(s) blocked on a full asyncio.Queue for "
                        f"{fmt_ns(total)} ({_pct(share)}){slow}"
                    ),
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    hint=(
                        "The asyncio.Queue is full: its consumer tasks do not keep up. Make the "
                        "consumer faster (see the culprit), start more consumer tasks, or accept a "
                        "bigger maxsize if bursts are short. Recording with task_wait='stack' shows "
                        "where consumers await."
                    ),
                )
            )
        else:
            score = _score(ramp(share, _STARVED_RAMP))
            if busy_ns < 0.1 * (max(iv.end for _, iv in waits) - min(iv.start for _, iv in waits)):
                # producers not seen running: they wait for input themselves (a request, a
                # timer), which is how a background consumer task normally spends its life
                score = min(score, INFO - 1)
            slow = f": producer busy in {other_frame.function}" if other_frame else ""
            out.append(
                Finding(
                    rule="queue-starved",
                    score=score,
                    title=(
                        f"{len(waiting)} asyncio consumer task(s) idle on an empty asyncio.Queue "
                        f"{_pct(share)} of their time{slow}"
                    ),
                    culprit=Culprit.of(culprit),
                    evidence=evidence,
                    hint=(
                        "Consumer tasks wait for work most of the time: the producer side is the "
                        "bottleneck (see the culprit), or there are more consumers than needed."
                    ),
                )
            )
    return out


def rule_gc(model: Model) -> list[Finding]:
    pauses = list(model.gc_pauses)
    if not pauses:
        return []
    durations = [p.end - p.start for p in pauses]
    total = sum(durations)
    span = max(1, model.end - model.start)
    ratio = total / span
    worst_i = max(range(len(pauses)), key=lambda i: durations[i])
    worst = pauses[worst_i]
    if total < 50 * MS:
        return []
    per_gen: Counter[int] = Counter()
    per_gen_ns: Counter[int] = Counter()
    for p, d in zip(pauses, durations, strict=True):
        per_gen[p.generation] += 1
        per_gen_ns[p.generation] += d
    # who triggered the collections: samples of the collecting thread during pauses
    weights: dict[Frame, float] = defaultdict(float)
    for p, d in zip(pauses, durations, strict=True):
        for sample in _samples_in(model, p.tid, p.start, p.end):
            frame = user_frame(sample.stack)
            if frame is not None:
                weights[frame] += d
    culprit, _ = _by_function(weights)
    score = _score(
        ramp(ratio, [(0.03, 10), (0.08, 30), (0.15, 60), (0.25, 80), (0.4, 92)]),
        ramp(worst.end - worst.start, [(50 * MS, 10), (100 * MS, 30), (300 * MS, 60), (1 * SECOND, 85)]),
    )
    where = f", triggered in {culprit.function}" if culprit else ""
    return [
        Finding(
            rule="gc-pauses",
            score=score,
            title=(
                f"Garbage collection paused threads for {fmt_ns(total)} ({_pct(ratio)} of the trace), "
                f"worst {fmt_ns(worst.end - worst.start)}{where}"
            ),
            culprit=Culprit.of(culprit),
            evidence={
                "pauses": len(pauses),
                "pause_ns": total,
                "ratio": round(ratio, 4),
                "worst_ns": worst.end - worst.start,
                "worst_generation": worst.generation,
                "worst_at_s": _rel(model, worst.start),
                "collections_by_generation": {str(g): n for g, n in sorted(per_gen.items())},
                "pause_ns_by_generation": {str(g): n for g, n in sorted(per_gen_ns.items())},
            },
            hint=(
                "Many container objects are allocated and kept alive. Create fewer cyclic "
                "structures, call gc.freeze() after start-up, or raise gc.set_threshold() for "
                "generation 0; use weakref to break cycles."
            ),
        )
    ]


def rule_cpu_hotspot(model: Model) -> list[Finding]:
    from pyflight.analysis.cpu import cpu_samples

    total = 0
    self_w: dict[Frame, float] = defaultdict(float)
    for sample, ns in cpu_samples(model):  # measured CPU, charged where the thread ran
        total += ns
        frame = next((f for f in sample.stack if not is_library(f)), None)
        if frame is not None:
            self_w[frame] += ns
    if total <= 0:
        return []
    frame, weight = _by_function(self_w)
    if frame is None:
        return []
    span = max(1, model.end - model.start)
    wall_share = weight / span  # in CPUs: 1.0 = one core busy all the time
    cpu_share = weight / total
    if weight < 50 * MS:
        return []
    lines = sorted(
        ((f.line, w) for f, w in self_w.items() if (f.function, f.file) == (frame.function, frame.file)),
        key=lambda lw: -lw[1],
    )
    score = _score(
        min(
            ramp(wall_share, [(0.05, 10), (0.2, 35), (0.5, 55), (0.9, 70)]),
            ramp(cpu_share, [(0.1, 10), (0.3, 40), (0.6, 70)]),
        )
    )
    return [
        Finding(
            rule="cpu-hotspot",
            score=score,
            title=(
                f"CPU hotspot: {frame.function} used {fmt_ns(weight)} of CPU ({_pct(cpu_share)} of all CPU)"
            ),
            culprit=Culprit.of(frame),
            evidence={
                "cpu_ns": int(weight),
                "cpu_share": round(cpu_share, 4),
                "cores_busy": round(wall_share, 3),
                "total_cpu_ns": total,
                "hot_lines": [{"line": ln, "cpu_ns": int(w)} for ln, w in lines[:5]],
            },
            hint=(
                f"Most CPU time is spent in {frame.function}. Optimise it (a better algorithm, "
                "caching, vectorised libraries), or run it in a process pool so it does not hold "
                "the GIL for the other threads."
            ),
        )
    ]


def rule_io_wait(model: Model) -> list[Finding]:
    waits = [
        (t, iv)
        for t, iv in _blocked(model, BlockReason.IO)
        if not _in_function(iv.stack, {"accept", "socket.accept"}, "socket.py")
    ]
    total = sum(iv.end - iv.start for _, iv in waits)
    if total < 50 * MS:
        return []
    threads = {t.tid: t for t, _ in waits}
    life = sum(_lifetime(t) for t in threads.values()) or 1
    share = total / life
    weights: dict[Frame, float] = defaultdict(float)
    for _, iv in waits:
        frame = user_frame(iv.stack)
        if frame is not None:
            weights[frame] += iv.end - iv.start
    where, where_ns = _by_function(weights)
    worst_t, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
    score = _score(ramp(share, [(0.1, 15), (0.3, 35), (0.6, 55), (0.9, 70)]))
    return [
        Finding(
            rule="io-wait",
            score=score,
            title=(
                f"Threads waited {fmt_ns(total)} on blocking I/O ({_pct(share)} of their time)"
                + (f", mostly in {where.function}" if where else "")
            ),
            culprit=Culprit.of(where),
            evidence={
                "waits": len(waits),
                "wait_ns": total,
                "wait_share": round(share, 4),
                "culprit_wait_ns": int(where_ns),
                "worst_ns": worst.end - worst.start,
                "worst_at_s": _rel(model, worst.start),
                "worst_thread": worst_t.name,
                "threads": sorted(t.name for t in threads.values()),
            },
            hint=(
                "Time goes to waiting for the network or disk. Issue requests concurrently "
                "(a pool, asyncio), reuse connections, add timeouts, cache answers, or batch calls."
            ),
        )
    ]


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


def _span_ns(spans: Iterable[tuple[int, int]]) -> int:
    return sum(b - a for a, b in spans)


def _job_line(model: Model, workers: set[int], function: str, file: str, default: int) -> int:
    """The line of ``function`` seen most in the workers' samples, else ``default``."""
    lines: Counter[int] = Counter()
    for tid in workers:
        for sample in _samples_by_thread(model).get(tid, []):
            for frame in sample.stack:
                if frame.function == function and frame.file == file:
                    lines[frame.line] += 1
                    break
    if not lines:
        return default
    return max(lines.items(), key=lambda kv: (kv[1], -kv[0]))[0]


def _worker_states(model: Model, workers: set[int], spans: _Spans) -> dict[str, float]:
    """Share of the workers' time in ``spans`` per state (BLOCKED split by reason)."""
    per: dict[str, int] = defaultdict(int)
    for tid in workers:
        thread = model.threads.get(tid)
        if thread is None:
            continue
        for iv in thread.intervals:
            ns = _overlap(spans, iv.start, iv.end)
            if ns <= 0:
                continue
            if iv.state is State.BLOCKED and iv.reason is not None:
                per[f"blocked:{iv.reason.name.lower()}"] += ns
            else:
                per[iv.state.value] += ns
    total = sum(per.values())
    if total <= 0:
        return {}
    return {
        k: round(v / total, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v / total >= 0.001
    }


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
        spans = _Spans(all_busy)
        run_by_fn: dict[tuple[str, str, int], int] = defaultdict(int)
        jobs_by_fn: Counter[tuple[str, str, int]] = Counter()
        for job in jobs:
            if job.begin is None:
                continue
            ns = _overlap(spans, job.begin, job.end if job.end is not None else model.end)
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
        p50, p90, worst = _quantile(all_waits, 0.5), _quantile(all_waits, 0.9), all_waits[-1]
        worst_job = max(
            (j for j in jobs if j.queued is not None and (j.begin is not None or j.state == "queued")),
            key=lambda j: (j.begin if j.begin is not None else model.end) - int(j.queued or 0),
            default=None,
        )
        longest_at = _rel(model, worst_job.queued) if worst_job and worst_job.queued else None
        peak_t, peak_waiting = max(pool.waiting, key=lambda tc: (tc[1], -tc[0]))
        median_run = statistics.median(runs) if runs else 0
        score = _score(
            min(
                ramp(backlog_share, [(0.1, 20), (0.3, 45), (0.6, 70), (0.9, 85)]),
                max(
                    ramp(p90, [(10 * MS, 15), (100 * MS, 50), (500 * MS, 80), (2 * SECOND, 92)]),
                    ramp(p90 / median_run if median_run else 0, [(0.5, 30), (2, 60), (5, 80), (10, 90)]),
                ),
            )
        )
        states = _worker_states(model, workers, spans)
        name = pool.name or f"pool {pool.pool:#x}"
        label = function or "their jobs"
        top_state = next(iter(states), "")
        if top_state.startswith("blocked:lock"):
            doing = " The jobs mostly waited for a lock: more workers will not help; see lock-contention."
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
                    f"Thread pool {name!r}: all {pool.max_workers} workers busy for {fmt_ns(all_busy_ns)} "
                    f"running {label}; jobs waited up to {fmt_ns(worst)} in the queue (p90 {fmt_ns(p90)})"
                ),
                culprit=culprit,
                evidence={
                    "pool": name,
                    "pool_id": pool.pool,
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
                    "worst_at_s": _rel(model, peak_t),
                    "worst_waiting": peak_waiting,
                    "longest_wait_at_s": longest_at,
                    "worker_states": states,
                },
                hint=(
                    f"Every worker was busy running {label}, so new jobs queued behind them "
                    f"(p90 wait {fmt_ns(p90)}, median run {fmt_ns(median_run)}).{doing} " + _POOL_HINT
                ),
            )
        )
    return out


def _pool_saturation_sampled(model: Model) -> list[Finding]:
    """No pool events (an older trace, or the executors source off): infer from samples."""
    by_thread = _samples_by_thread(model)
    pools: dict[str, list[Any]] = defaultdict(list)
    for thread in _user_threads(model):
        samples = by_thread.get(thread.tid, [])
        if not samples or not _is_pool_worker(s.stack for s in samples[:50]):
            continue
        m = _POOL_NAME.match(thread.name or "")
        pools[m.group(1) if m else thread.name].append(thread)
    interval = _interval_ns(model)
    out: list[Finding] = []
    for name, workers in pools.items():
        tids = {t.tid for t in workers}
        samples = sorted((s for tid in tids for s in by_thread.get(tid, [])), key=lambda s: s.time)
        # ticks: samples of one sampler tick are taken within microseconds of each other
        ticks: list[list[Any]] = []
        for sample in samples:
            if ticks and sample.time - ticks[-1][0].time < interval // 4:
                ticks[-1].append(sample)
            else:
                ticks.append([sample])
        full = [tick for tick in ticks if len(tick) == len(workers)]
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
        culprit, culprit_ns = _by_function(busy)
        # submitters waiting meanwhile: threads blocked on futures, tasks awaiting
        waiting = 0
        sat_spans = _Spans((t[0].time - interval, t[0].time + interval) for t in saturated)
        for thread, iv in _blocked(model, BlockReason.CONDITION):
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
        score = _score(
            ramp(sat_share, [(0.3, 25), (0.6, 50), (0.9, 70)]) + (15 if waiting >= len(workers) else 0)
        )
        where = f" running {culprit.function}" if culprit else ""
        out.append(
            Finding(
                rule="pool-saturation",
                score=score,
                title=(
                    f"Thread pool {name!r}: all {len(workers)} workers busy {_pct(sat_share)} of the "
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


def _culprit_in_window(model: Model, tid: int, start: int, end: int, task: int = 0) -> Frame | None:
    weights: dict[Frame, float] = defaultdict(float)
    interval = _interval_ns(model)
    thread = model.threads.get(tid)
    if thread is not None:
        for iv in thread.intervals:
            if iv.end < start or iv.start > end or iv.state is not State.BLOCKED:
                continue
            frame = user_frame(iv.stack)
            if frame is not None:
                weights[frame] += min(end, iv.end) - max(start, iv.start)
    for sample in _samples_in(model, tid, start, end):
        if task and sample.task and sample.task != task:
            continue
        frame = user_frame(sample.stack)
        if frame is not None:
            weights[frame] += interval
    frame, _ = _by_function(weights)
    return frame


def _asyncio_task_at(model: Model, tid: int, start: int, end: int) -> Any:
    """The asyncio task whose life best matches [start, end] on thread ``tid``."""
    best, best_d = None, float("inf")
    for task in model.all_tasks():
        if task.thread != tid:
            continue
        done = task.done if task.done is not None else model.end
        if task.created <= start + 5 * MS and done >= end - 5 * MS:
            d = (start - task.created) + (done - end)
            if d < best_d:
                best, best_d = task, d
    return best


def _task_culprit(model: Model, task: Any, start: int, end: int) -> Frame | None:
    weights: dict[Frame, float] = defaultdict(float)
    for iv in task.intervals:
        if iv.end < start or iv.start > end:
            continue
        frame = user_frame(iv.stack)
        if frame is not None and iv.state is State.BLOCKED:
            weights[frame] += min(end, iv.end) - max(start, iv.start)
    interval = _interval_ns(model)
    for sample in _samples_in(model, task.thread, start, end):
        if sample.task == task.id:
            frame = user_frame(sample.stack)
            if frame is not None:
                weights[frame] += interval
    frame, _ = _by_function(weights)
    return frame


def rule_slow_user_tasks(model: Model) -> list[Finding]:
    out: list[Finding] = []
    groups: dict[tuple[str, str], list[tuple[int, int, int, int]]] = defaultdict(list)  # start,end,tid,id
    for ut in model.user_tasks.values():
        end = ut.end if ut.end is not None else model.end
        groups[("task", ut.name)].append((ut.start, end, ut.thread, ut.id))
    for region in model.regions:
        end = region.end if region.end is not None else model.end
        groups[("region", region.name)].append((region.start, end, region.thread, region.task))
    window = max(model.end - model.start, 1)
    for (what, name), items in groups.items():
        if len(items) < 5:
            # too few to know what is usual: only long ones count, and not those that
            # last the whole window (a worker's or a session's lifetime, not a latency)
            items = [it for it in items if it[1] - it[0] < 0.8 * window]
            if not items:
                continue
        durations = sorted(b - a for a, b, _, _ in items)
        median = statistics.median(durations)
        worst = max(items, key=lambda it: it[1] - it[0])
        worst_d = worst[1] - worst[0]
        if len(items) >= 5:
            limit = max(3 * median, median + 100 * MS)
            outliers = [d for d in durations if d > limit]
            if not outliers:
                continue
            ratio = worst_d / max(median, 1)
            score = _score(
                min(
                    ramp(ratio, [(3, 30), (10, 60), (30, 80), (100, 90)]),
                    ramp(worst_d / MS, [(100, 25), (250, 50), (1000, 85), (5000, 95)]),
                )
            )
        else:
            if worst_d < SECOND:
                continue
            outliers = [d for d in durations if d >= SECOND]
            score = _score(ramp(worst_d / SECOND, [(1, 25), (5, 45), (30, 60)]))
        start, end, tid, _ = worst
        task = _asyncio_task_at(model, tid, start, end)
        frame = _task_culprit(model, task, start, end) if task is not None else None
        if frame is None:
            frame = _culprit_in_window(model, tid, start, end)
        label = "User task" if what == "task" else "Region"
        if len(items) >= 5:
            headline = (
                f"{label} {name!r}: {len(outliers)} of {len(items)} took much longer than usual "
                f"(worst {fmt_ns(worst_d)}, median {fmt_ns(median)})"
            )
        else:
            headline = f"{label} {name!r} took {fmt_ns(worst_d)}" + (
                f" (the longest of {len(items)})" if len(items) > 1 else ""
            )
        out.append(
            Finding(
                rule="slow-" + ("tasks" if what == "task" else "regions"),
                score=score,
                title=headline + (f"; worst spent in {frame.function}" if frame else ""),
                culprit=Culprit.of(frame),
                evidence={
                    "kind": what,
                    "name": name,
                    "count": len(items),
                    "outliers": len(outliers),
                    "median_ns": int(median),
                    "p99_ns": _quantile(durations, 0.99),
                    "worst_ns": worst_d,
                    "worst_at_s": _rel(model, start),
                    "worst_thread": _thread_name(model, tid),
                },
                hint=(
                    "Open the worst instance in the HTML report (`pyflight report FILE --html OUT`): "
                    "the culprit is where it spent its time. Add a timeout, cache, or make that step "
                    "concurrent."
                ),
            )
        )
    return out


def rule_data_loss(model: Model) -> list[Finding]:
    trace = model.trace
    lost_events = 0
    sources: Counter[str] = Counter()
    disabled: list[str] = []
    reasons: list[str] = []
    for event in model.data_loss:
        if event.kind == Kind.DATA_LOSS:
            n = int(event.arg("events", 0) or 0)
            lost_events += n
            sources[str(event.arg("source", "?"))] += n
            reason = str(event.arg("reason", "") or "")
            if reason and reason not in reasons:
                reasons.append(reason)
        elif event.kind == Kind.SOURCE_DISABLED:
            disabled.append(f"{event.arg('source', '?')}: {event.arg('reason', '')}")
    bytes_lost = int(getattr(trace, "bytes_lost", 0) or 0)
    warnings = list(getattr(trace, "warnings", []) or [])
    if not (lost_events or disabled or bytes_lost or warnings or sources):
        return []
    n_events = max(1, len(getattr(trace, "events", [])))
    lost_share = lost_events / (lost_events + n_events)
    score = _score(
        ramp(lost_share, [(0.0, 30), (0.01, 45), (0.1, 75), (0.3, 90)]) if lost_events else 0,
        60 if disabled else 0,
        75 if bytes_lost else 0,
        40 if warnings else 0,
        30 if sources else 0,
    )
    parts = []
    if lost_events:
        parts.append(f"{lost_events} events lost")
    if disabled:
        parts.append(f"{len(disabled)} source(s) disabled")
    if bytes_lost:
        parts.append(f"{bytes_lost} bytes of the file damaged")
    if warnings and not bytes_lost:
        parts.append(f"{len(warnings)} reader warning(s)")
    if not parts:
        parts.append("reduced coverage: " + ", ".join(sorted(sources)))
    return [
        Finding(
            rule="data-loss",
            score=score,
            title="Recording incomplete: " + ", ".join(parts),
            culprit=None,
            evidence={
                "lost_events": lost_events,
                "lost_share": round(lost_share, 4),
                "by_source": dict(sources),
                "reasons": reasons[:5],
                "disabled_sources": disabled,
                "bytes_lost": bytes_lost,
                "reader_warnings": warnings[:5],
            },
            hint=(
                "Parts of the trace are missing, so other findings may understate problems. "
                "Raise max_bytes or lower min_age if events were dropped, and check the warnings "
                "printed by the program for disabled sources."
            ),
        )
    ]


def rule_untraced_wait(model: Model) -> list[Finding]:
    """Threads often found off-CPU inside user code that no hook saw block: an untraced
    lock (e.g. without the C core), the GIL, or a C extension waiting."""
    interval = _interval_ns(model)
    off_cpu = (ThreadState.SLEEPING, ThreadState.DISK)
    weights: dict[Frame, float] = defaultdict(float)
    per_thread: Counter[int] = Counter()
    for thread in _user_threads(model):
        for sample in _samples_by_thread(model).get(thread.tid, ()):
            if sample.os_state not in off_cpu or sample.state is not State.RUNNING or not sample.stack:
                continue
            frame = sample.stack[0]
            if is_library(frame):
                continue
            weights[frame] += interval
            per_thread[thread.tid] += 1
    frame, frame_ns = _by_function(weights)
    if frame is None or frame_ns < 100 * MS:
        return []
    threads = [model.threads[tid] for tid in per_thread]
    life = sum(_lifetime(t) for t in threads) or 1
    share = sum(weights.values()) / life
    score = _score(ramp(share, [(0.1, 10), (0.2, 25), (0.5, 45), (0.8, 60)]))
    return [
        Finding(
            rule="untraced-wait",
            score=score,
            title=(
                f"Threads spent {fmt_ns(frame_ns)} off-CPU inside {frame.function} in no traced call "
                "(an untraced lock, the GIL or a C call)"
            ),
            culprit=Culprit.of(frame),
            evidence={
                "wait_ns": int(frame_ns),
                "wait_share": round(share, 4),
                "threads": sorted(t.name for t in threads),
                "samples": sum(per_thread.values()),
            },
            hint=(
                "The sampler found these threads waiting on the line named, outside any call "
                "pyflight hooks. If it takes a lock created before the recorder started (or "
                "without the C core), the lock is not traced; if it calls a C extension, that "
                "call blocks. Start the recorder earlier or look at what the line waits for."
            ),
        )
    ]


RULES: dict[str, Rule] = {
    "loop-blocked": rule_loop_blocked,
    "loop-starved": rule_loop_starved,
    "lock-contention": rule_lock_contention,
    "queue": rule_queue,
    "gc-pauses": rule_gc,
    "cpu-hotspot": rule_cpu_hotspot,
    "io-wait": rule_io_wait,
    "pool-saturation": rule_pool_saturation,
    "slow-tasks": rule_slow_user_tasks,
    "untraced-wait": rule_untraced_wait,
    "data-loss": rule_data_loss,
}


def find(model: Model, *, rules: Iterable[str] | None = None, strict: bool = False) -> list[Finding]:
    """Run the rules on ``model``; findings sorted by score, highest first.

    A rule that fails is reported as a ``rule-error`` finding (score 0) unless ``strict``.
    """
    findings: list[Finding] = []
    # the model holds millions of objects: full collections while the rules allocate
    # would cost more than the rules themselves
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in RULES if rules is None else rules:
            findings.extend(_run_rule(model, name, strict))
    finally:
        if gc_was_enabled:
            gc.enable()
        _CACHE.clear()
    findings = [f for f in findings if f.score >= MIN_SCORE or f.rule == "rule-error"]
    findings.sort(key=lambda f: (-f.score, f.rule, f.title))
    return findings


def _run_rule(model: Model, name: str, strict: bool) -> list[Finding]:
    try:
        return RULES[name](model)
    except Exception as exc:
        if strict:
            raise
        return [
            Finding(
                rule="rule-error",
                score=0,
                title=f"Rule {name} failed: {type(exc).__name__}: {exc}",
                evidence={"rule": name},
            )
        ]
