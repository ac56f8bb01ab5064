"""Long event-loop steps (windows of user code that held the loop), shared by the loop rules."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.cpu import ASLEEP
from pyflight.core.events import BlockReason, ThreadState
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import LoopTimeline, Model
from pyflight.analysis.frames import step_frame
from pyflight.analysis.queries import Queries, interval_ns, lifetime, samples_in
from pyflight.analysis.units import MS


class LoopWindow:
    """A stretch of time in which one loop ran one long step (or several overlapping)."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.weights: dict[Frame, float] = defaultdict(float)
        self.samples = self.running = self.sleeping = 0
        self.stall_stacks = 0
        self.tasks: Counter[str] = Counter()


def long_steps(model: Model, loop: LoopTimeline) -> list[LoopWindow]:
    """Windows of long steps/stalls of ``loop`` that ran user code (cached per loop).

    A window in which neither the stall stacks nor the loop thread's samples show user
    code inside the step is left out: the step was not slow by itself but waiting for
    the GIL (that is what ``loop-starved`` reports)."""
    cache = Queries.of(model).memo.setdefault("long_steps", {})
    if loop.loop in cache:
        windows: list[LoopWindow] = cache[loop.loop]
        return windows
    spans = [(iv.start, iv.end, str(iv.detail or "")) for iv in loop.busy if iv.end - iv.start >= LONG_STEP]
    spans += [(st.start, st.end, "") for st in loop.stalls]
    merged: list[LoopWindow] = []
    for start, end, _ in sorted(spans):
        if merged and start <= merged[-1].end:
            merged[-1].end = max(merged[-1].end, end)
        else:
            merged.append(LoopWindow(start, end))
    starts = [w.start for w in merged]

    def window_of(t: int) -> LoopWindow | None:
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
        label = task_label(model, stall.task) if stall.task else ""
        if label:
            w.tasks[label] += 1
        stacks = list(stall.stacks)
        for stack in stacks:
            w.stall_stacks += 1
            frame = step_frame(stack)
            if frame is not None:
                w.weights[frame] += stall.duration / len(stacks)
    interval = interval_ns(model)
    for w in merged:
        for sample in samples_in(model, loop.tid, w.start, w.end):
            w.samples += 1
            frame = step_frame(sample.stack)
            if frame is not None:
                w.weights[frame] += interval
            if sample.os_state == ThreadState.RUNNING:
                w.running += 1
            elif sample.os_state in ASLEEP:
                w.sleeping += 1
    kept = [w for w in merged if w.weights or not (w.samples or w.stall_stacks)]
    cache[loop.loop] = kept
    return kept


LONG_STEP = 100 * MS


def loop_span(loop: LoopTimeline) -> tuple[int, int] | None:
    """(first step or idle wait, end of the last): when the loop ran; None if it never did.
    Before it, a ready task waits for ``run_until_complete`` to start, not for the loop."""
    edges = [iv.start for iv in loop.busy[:1]] + [iv.start for iv in loop.idle[:1]]
    ends = [iv.end for iv in loop.busy[-1:]] + [iv.end for iv in loop.idle[-1:]]
    return (min(edges), max(ends)) if edges and ends else None


def loop_life(model: Model, loop: LoopTimeline) -> int:
    span = loop_span(loop)
    if span is not None:
        return int(span[1] - span[0])
    thread = model.threads.get(loop.tid)
    return lifetime(thread) if thread is not None else model.end - model.start


def task_label(model: Model, task_id: int) -> str:
    task = model.tasks.get(task_id)
    if task is None:
        return ""
    return str(task.coro or task.name)


#: What a blocked interval waited in, when the call is C code with no frame of its own.
WAIT_CALLS = {
    BlockReason.SLEEP: "time.sleep",
    BlockReason.IO: "a socket call",
    BlockReason.LOCK: "a lock",
    BlockReason.CONDITION: "a threading wait",
    BlockReason.JOIN: "Thread.join",
}
