"""Rule ``loop-starved`` (docs/report.md explains its score)."""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.core.events import ThreadState
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import LoopTimeline, Model, TaskTimeline
from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.queries import (
    Spans,
    gil_busy_share,
    interval_ns,
    sampler_ticks,
    seconds_since_start,
    thread_name,
)
from pyflight.analysis.rules._loop import long_steps, loop_life, loop_span
from pyflight.analysis.rules._waits import task_label_of
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns, quantile


def rule_loop_starved(model: Model) -> list[Finding]:
    """The loop is late although its steps are short: it waits for the GIL or is overloaded."""
    out: list[Finding] = []
    interval = interval_ns(model)
    ticks = sampler_ticks(model) if model.loops else []
    for loop in model.loops.values():
        span = loop_span(loop)
        if span is None:
            continue
        # lateness and CPU only while the loop runs: before its first step the program
        # imports and sets up, and the first task is ready before run_until_complete runs
        begun, ended = span
        # only steps seen running user code are the loop's own doing; a long step with no
        # sample or stall stack in it may itself be a GIL wait (the sampler needs the GIL
        # too), which is what this rule is about
        excluded = Spans(
            [(w.start, w.end + 200 * MS) for w in long_steps(model, loop) if w.weights]
            + [(start, end + 200 * MS) for start, end in _blocking_steps(model, loop)]
        )

        # a wait that overlaps a long step is that step's doing (loop-blocked), not starvation
        def outside(a: int, b: int, excluded: Spans = excluded, begun: int = begun) -> bool:
            return a >= begun and not excluded.overlaps(a, b)

        lags = [lag for t, lag in loop.lag if outside(t - lag, t)]
        ready = [
            (task, start, d)
            for task in model.all_tasks()
            if task.thread == loop.tid
            for start, d in _ready_delays(task)
            if outside(start, start + d)
        ]
        delays = [d for _, _, d in ready]
        lag_p90 = quantile(lags, 0.9) if len(lags) >= 5 else 0
        delay_p90 = quantile(delays, 0.9) if len(delays) >= 10 else 0
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
            if sample.time in excluded or not begun <= sample.time <= ended:
                continue
            thread = model.threads.get(sample.tid)
            if thread is None or thread.is_pyflight:
                continue
            frame = user_frame(sample.stack)
            if frame is None:
                continue
            (loop_own if sample.tid == loop.tid else others)[frame] += 1
        other_frame, other_n = by_function({f: float(n) for f, n in others.items()})
        own_frame, own_n = by_function({f: float(n) for f, n in loop_own.items()})
        if other_frame is not None and other_n >= max(3.0, own_n * 0.5):
            if _gil_mostly_free(model, loop, ready, outside):
                continue  # the loop waited for a CPU (a loaded machine), not for another thread
            culprit, cause = other_frame, "another thread holding the GIL"
            hint = (
                f"A CPU-bound thread ({other_frame.function}) competes with the loop for the GIL: "
                "each time the loop wakes up it waits up to the switch interval (5 ms) or more. "
                "Move CPU-bound work to a process (ProcessPoolExecutor) or a C extension that "
                "releases the GIL, or lower sys.setswitchinterval()."
            )
        elif max(lag_p90, delay_p90) < 5 * MS or own_frame is None:
            continue  # only the sampler was late: the loop thread itself held the GIL
        elif own_n * interval < 0.2 * loop_life(model, loop):
            continue  # the loop is not busy: late for reasons we cannot name
        else:
            culprit, cause = own_frame, "too much work queued on the loop"
            hint = (
                "The loop has more ready work than it can run: every callback waits for the ones "
                "queued before it. Limit concurrency (a Semaphore), batch small callbacks, or move "
                "work to other processes."
            )
        score = clamp_score(ramp(late / MS, [(5, 20), (20, 45), (50, 65), (100, 80), (500, 92)]))
        loop_thread = thread_name(model, loop.tid)
        late_ones = [
            Moment(
                seconds_since_start(model, t - lag),
                lag,
                loop_thread,
                "",
                f"the loop woke up {fmt_ns(lag)} late",
            )
            for t, lag in loop.lag
            if lag >= 5 * MS and outside(t - lag, t)
        ] + [
            Moment(
                seconds_since_start(model, start),
                d,
                loop_thread,
                task_label_of(task),
                f"ready, waited {fmt_ns(d)} for the loop",
            )
            for task, start, d in ready
            if d >= 5 * MS
        ]
        if not late_ones:  # late by the sampler's ticks alone (it needs the GIL too)
            late_ones = [
                Moment(
                    seconds_since_start(model, a),
                    b - a,
                    loop_thread,
                    "",
                    f"no thread let go of the GIL for {fmt_ns(b - a)} (the stack sampler waited)",
                )
                for a, b in itertools.pairwise(ticks)
                if b - a - interval >= 5 * MS and outside(a, b)
            ]
        where = f" ({culprit.function})" if culprit else ""
        out.append(
            Finding(
                rule="loop-starved",
                score=score,
                title=(
                    f"Event loop starved: wake-ups late by {fmt_ns(late)} with no long step, {cause}{where}"
                ),
                culprit=Culprit.of(culprit),
                moments=moments_of(late_ones),
                evidence={
                    "loop": loop.loop,
                    "thread": thread_name(model, loop.tid),
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


def _gil_mostly_free(
    model: Model, loop: LoopTimeline, ready: list[tuple[Any, int, int]], outside: Callable[[int, int], bool]
) -> bool:
    """True if the native stack reader, at the sampler's ticks inside the loop's late
    wake-ups, mostly found nobody holding the GIL: the loop thread was not waiting for
    another thread but for a CPU (the machine busy with other processes). False when it
    cannot tell (no native stacks, too few ticks)."""
    windows = [(t - lag, t) for t, lag in loop.lag if lag >= 5 * MS and outside(t - lag, t)]
    windows += [(start, start + d) for _, start, d in ready if d >= 5 * MS]
    found = gil_busy_share(model, windows)
    return found is not None and found[1] >= GIL_FREE_TICKS and found[0] < GIL_FREE_SHARE


#: ``_gil_mostly_free``: at least this many ticks inside the late wake-ups, and the GIL
#: held at fewer than this share of them.
GIL_FREE_TICKS = 3
GIL_FREE_SHARE = 0.5


#: A step this long that spent most of it blocked (I/O, sleep, a lock) made the loop late
#: by itself: ``loop-blocked`` (many medium steps) reports it, this rule does not.
BLOCKING_STEP = 20 * MS


def _blocking_steps(model: Model, loop: LoopTimeline) -> list[tuple[int, int]]:
    """Steps >= 20 ms in which the loop thread was BLOCKED for at least half the step (a
    synchronous call in a handler); a GIL wait is READY, not BLOCKED, so starved steps stay."""
    thread = model.threads.get(loop.tid)
    if thread is None:
        return []
    intervals = thread.intervals
    starts = [iv.start for iv in intervals]
    out = []
    for step in loop.busy:
        if step.end - step.start < BLOCKING_STEP:
            continue
        blocked = 0
        i = max(0, bisect.bisect_right(starts, step.start) - 1)
        while i < len(intervals) and intervals[i].start < step.end:
            iv = intervals[i]
            if iv.state is State.BLOCKED:
                blocked += max(0, min(iv.end, step.end) - max(iv.start, step.start))
            i += 1
        if 2 * blocked >= step.end - step.start:
            out.append((step.start, step.end))
    return out


def _lateness(pairs: list[tuple[int, int]], interval: int) -> int:
    """Median delay of the stack sampler's ticks past their due time: the sampler needs
    the GIL for each tick, so a late sampler means some thread holds the GIL for long."""
    if len(pairs) < 10:
        return 0
    gaps = sorted(b - a for a, b in pairs)
    return max(0, gaps[len(gaps) // 2] - interval)


def _ready_delays(task: TaskTimeline) -> list[tuple[int, int]]:
    return [(iv.start, iv.end - iv.start) for iv in task.intervals if iv.state is State.READY]


RULE = Rule("loop-starved", ("loop-starved",), rule_loop_starved)
