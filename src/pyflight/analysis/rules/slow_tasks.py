"""Rule ``slow-tasks`` (docs/report.md explains its score)."""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model, TaskTimeline
from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.queries import (
    Spans,
    interval_ns,
    samples_in,
    seconds_since_start,
    thread_name,
    user_threads,
)
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, SECOND, fmt_ns, quantile

#: The dbapi source's region name for one query (sources/dbapi.py; not imported: the
#: analysis side does not import the recording side's sources).
DB_REGION = "db"


def _user_task_name(model: Model, task: int) -> str:
    ut = model.user_tasks.get(task) if task else None
    return ut.name if ut is not None else ""


def _culprit_in_window(model: Model, tid: int, start: int, end: int, task: int = 0) -> Frame | None:
    weights: dict[Frame, float] = defaultdict(float)
    interval = interval_ns(model)
    thread = model.threads.get(tid)
    if thread is not None:
        for iv in thread.intervals:
            if iv.end < start or iv.start > end or iv.state is not State.BLOCKED:
                continue
            frame = user_frame(iv.stack)
            if frame is not None:
                weights[frame] += min(end, iv.end) - max(start, iv.start)
    for sample in samples_in(model, tid, start, end):
        if task and sample.task and sample.task != task:
            continue
        frame = user_frame(sample.stack)
        if frame is not None:
            weights[frame] += interval
    frame, _ = by_function(weights)
    return frame


def _asyncio_task_at(model: Model, tid: int, start: int, end: int) -> TaskTimeline | None:
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


def _task_culprit(model: Model, task: TaskTimeline, start: int, end: int) -> Frame | None:
    weights: dict[Frame, float] = defaultdict(float)
    for iv in task.intervals:
        if iv.end < start or iv.start > end:
            continue
        frame = user_frame(iv.stack)
        if frame is not None and iv.state is State.BLOCKED:
            weights[frame] += min(end, iv.end) - max(start, iv.start)
    interval = interval_ns(model)
    for sample in samples_in(model, task.thread, start, end):
        if sample.task == task.id:
            frame = user_frame(sample.stack)
            if frame is not None:
                weights[frame] += interval
    frame, _ = by_function(weights)
    return frame


class _CpuWaits:
    """The time in a window during which some program thread was READY (woken or runnable
    but waiting for the GIL or a CPU): an instance slowed by a machine that gave the
    program too little CPU, or by another thread's hold of the GIL, was not slow by its
    own doing (the CPU rules tell those). Merged once, queried by bisection."""

    def __init__(self, model: Model) -> None:
        ready = Spans(
            (iv.start, iv.end)
            for thread in user_threads(model)
            for iv in thread.intervals
            if iv.state is State.READY and iv.end > iv.start
        )
        self.starts, self.ends = ready.starts, ready.ends
        self.before = list(itertools.accumulate((b - a for a, b in ready.pairs()), initial=0))

    def within(self, start: int, end: int) -> int:
        """READY time of the program inside ``[start, end)``."""
        i = bisect.bisect_right(self.ends, start)  # first span ending after start
        j = bisect.bisect_left(self.starts, end)  # spans from i to j-1 overlap
        if j <= i:
            return 0
        total = self.before[j] - self.before[i]
        total -= max(0, start - self.starts[i])  # cut the first at start
        total -= max(0, self.ends[j - 1] - end)  # and the last at end
        return max(0, total)


def rule_slow_user_tasks(model: Model) -> list[Finding]:
    out: list[Finding] = []
    cpu_waits = _CpuWaits(model)
    groups: dict[tuple[str, str], list[tuple[int, int, int, int]]] = defaultdict(list)  # start,end,tid,id
    for ut in model.user_tasks.values():
        end = ut.end if ut.end is not None else model.end
        groups[("task", ut.name)].append((ut.start, end, ut.thread, ut.id))
    for region in model.regions:
        if region.name == DB_REGION:
            continue  # each query of the dbapi source: n-plus-one and library-wait judge those
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
        own = {it: it[1] - it[0] for it in items}
        if len(items) >= 5:
            # judged on their own time: without what the program waited for the GIL or a CPU
            own = {it: it[1] - it[0] - cpu_waits.within(it[0], it[1]) for it in items}
            own_median = statistics.median(own.values())
            limit = max(3 * own_median, own_median + 100 * MS)
            outliers = [own[it] for it in items if own[it] > limit]
            if not outliers:
                continue
            worst = max(items, key=own.__getitem__)
            worst_d = worst[1] - worst[0]
            ratio = own[worst] / max(own_median, 1)
            score = clamp_score(
                min(
                    ramp(ratio, [(3, 30), (10, 60), (30, 80), (100, 90)]),
                    ramp(own[worst] / MS, [(100, 25), (250, 50), (1000, 85), (5000, 95)]),
                )
            )
            cutoff = limit
        else:
            if worst_d < SECOND:
                continue
            outliers = [d for d in durations if d >= SECOND]
            cutoff = SECOND
            score = clamp_score(ramp(worst_d / SECOND, [(1, 25), (5, 45), (30, 60)]))
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
                    "p99_ns": quantile(durations, 0.99),
                    "worst_ns": worst_d,
                    "worst_at_s": seconds_since_start(model, start),
                    "worst_thread": thread_name(model, tid),
                    # of the worst's time, what the program waited for the GIL or a CPU
                    "worst_cpu_wait_ns": worst_d - own[worst],
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, a),
                            b - a,
                            thread_name(model, t),
                            name if what == "task" else _user_task_name(model, i),
                            "slower than usual",
                        )
                        for a, b, t, i in items
                        if own[(a, b, t, i)] > cutoff or (len(items) < 5 and b - a >= cutoff)
                    ]
                ),
                hint=(
                    "Open the worst instance in the HTML report (`pyflight report FILE --html OUT`): "
                    "the culprit is where it spent its time. Add a timeout, cache, or make that step "
                    "concurrent."
                ),
            )
        )
    return out


RULE = Rule("slow-tasks", ("slow-tasks", "slow-regions"), rule_slow_user_tasks)
