"""Rule ``loop-blocked`` (many medium steps; run by ``loop_blocked.RULE``): an event loop
blocked again and again by
steps of a few tens of milliseconds, each one a synchronous call (an HTTP request with
``requests``/``urllib``, a ``time.sleep``, a database query) inside an async handler.

The long-step rule needs one 100 ms step; a 50 ms blocking call made on every request
never reaches that, yet keeps the loop blocked most of the time. Steps are grouped by the
user line that made the call, so two different blocking calls on one loop are two
findings, each naming the call it made (``Session.get``, ``urlopen``, ``sleep``).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyflight.analysis.frames import by_function, step_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import interval_ns, samples_in, seconds_since_start, thread_name
from pyflight.analysis.rules._loop import LONG_STEP, WAIT_CALLS, loop_life
from pyflight.analysis.rules.finding import MIN_SCORE, Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import ThreadState

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.format.reader import Frame

__all__ = ["RULE_IDS", "rule_loop_many_steps"]

RULE_IDS = ("loop-blocked",)
MS = 1_000_000
#: A step this long blocks every other task noticeably (a frame at 60 Hz is 16 ms).
MEDIUM_STEP = 20 * MS
#: Fewer such steps than this are jitter, not a pattern.
MIN_STEPS = 5


@dataclass
class _Group:
    culprit: Frame | None
    durations: list[int] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
    running: int = 0
    waiting: int = 0
    first: int = 0
    #: (start, duration, task name) of each step
    steps: list[tuple[int, int, str]] = field(default_factory=list)


def _callee(stack: Any, frame: Frame) -> str:
    """The function ``frame`` called (the frame just inside it), e.g. ``Session.get``."""
    for i, f in enumerate(stack):
        if f == frame:
            return str(stack[i - 1].function) if i > 0 else ""
    return ""


def _step_weights(
    model: Model, tid: int, start: int, end: int
) -> tuple[dict[Frame, float], Counter[str], int, int]:
    weights: dict[Frame, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    running = waiting = 0
    interval = interval_ns(model)
    for sample in samples_in(model, tid, start, end):
        frame = step_frame(sample.stack)
        if frame is None:
            continue
        weights[frame] += interval
        calls[_callee(sample.stack, frame)] += 1
        if sample.os_state == ThreadState.RUNNING:
            running += 1
        else:
            waiting += 1
    thread = model.threads.get(tid)
    if thread is not None:
        for iv in thread.intervals:
            if iv.end < start or iv.start > end or iv.state is not State.BLOCKED:
                continue
            frame = step_frame(iv.stack)
            if frame is None:
                continue
            overlap = min(end, iv.end) - max(start, iv.start)
            weights[frame] += overlap
            calls[
                _callee(iv.stack, frame) or WAIT_CALLS.get(iv.reason, "") if iv.reason is not None else ""
            ] += 1
            waiting += 1
    return weights, calls, running, waiting


def _groups(model: Model, loop: Any) -> list[_Group]:
    groups: dict[tuple[str, str] | None, _Group] = {}
    for iv in loop.busy:
        duration = iv.end - iv.start
        if duration < MEDIUM_STEP:
            continue
        weights, calls, running, waiting = _step_weights(model, loop.tid, iv.start, iv.end)
        frame, _ = by_function(weights)
        key = None if frame is None else (frame.function, frame.file)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(frame, first=iv.start)
        group.durations.append(duration)
        group.steps.append((iv.start, duration, str(iv.detail or "")))
        if frame is not None:
            group.calls.update({c: n for c, n in calls.items() if c})
        if iv.detail:
            group.tasks[str(iv.detail)] += 1
        group.running += running
        group.waiting += waiting
    return list(groups.values())


def rule_loop_many_steps(model: Model) -> list[Finding]:
    out: list[Finding] = []
    for loop in model.loops.values():
        life = max(1, loop_life(model, loop))
        loop_name = thread_name(model, loop.tid)
        for group in _groups(model, loop):
            if len(group.durations) < MIN_STEPS or group.culprit is None:
                continue
            total = sum(group.durations)
            share = total / life
            median = int(statistics.median(group.durations))
            if median >= LONG_STEP:
                continue  # long steps: the long-step loop-blocked finding names them
            score = clamp_score(
                min(
                    ramp(share, [(0.03, 0), (0.1, 50), (0.2, 78), (0.4, 90)]),
                    ramp(len(group.durations), [(4, 0), (5, 50), (8, 80), (20, 90)]),
                )
            )
            if score < MIN_SCORE:
                continue
            frame = group.culprit
            call = group.calls.most_common(1)[0][0] if group.calls else ""
            kind = "CPU work" if group.running > group.waiting else "a synchronous (blocking) call"
            what = f"{frame.function} calling {call}" if call else frame.function
            out.append(
                Finding(
                    rule="loop-blocked",
                    score=score,
                    title=(
                        f"Event loop ({loop_name}) blocked {len(group.durations)} times, "
                        f"{fmt_ns(median)} each (median), by {kind}: {what}; "
                        f"{fmt_ns(total)} in all, {100 * share:.0f}% of the loop's time"
                    ),
                    culprit=Culprit.of(frame),
                    evidence={
                        "thread": loop_name,
                        "blocking_call": call,
                        "steps": len(group.durations),
                        "median_step_ns": median,
                        "worst_ns": max(group.durations),
                        "blocked_ns": total,
                        "share_of_loop_time": f"{100 * share:.0f}%",
                        "first_at_s": seconds_since_start(model, group.first),
                        "tasks": ", ".join(name for name, _ in group.tasks.most_common(3)),
                    },
                    moments=moments_of(
                        [
                            Moment(seconds_since_start(model, t), d, loop_name, task, what)
                            for t, d, task in group.steps
                        ]
                    ),
                    hint=(
                        "Each of these steps is too short to look alarming, but together they "
                        "keep the loop from serving anything else. Use the async equivalent "
                        "(aiohttp/httpx.AsyncClient for requests/urllib, asyncio.sleep for "
                        "time.sleep, an async driver) or wrap the call in "
                        "`await asyncio.to_thread(...)`."
                    ),
                )
            )
    return out
