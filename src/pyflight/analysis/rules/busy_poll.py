"""Rule ``busy-poll``: a coroutine that polls instead of awaiting (``while not done:
await asyncio.sleep(0)``, ``get_nowait()`` in a loop).

Each turn is a step of a few microseconds that yields straight back, so the loop never
sleeps: the process burns a CPU doing nothing, and an in-process sampler only ever sees
the loop in ``select`` (the one place the loop thread releases the GIL), which made this
show up as CPU in ``main``. The tell is the task's own steps: thousands a second, each
tiny, while the loop is never idle.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from pyflight.analysis.queries import seconds_since_start, thread_name
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding, Moment
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_busy_poll"]

RULE_IDS = ("busy-poll",)
MS = 1_000_000
SECOND = 1_000_000_000
#: A task stepping this often is not waiting for anything real.
MIN_RATE = 5000.0
#: ...for at least this long.
MIN_SPAN = 200 * MS
#: Its steps do (almost) nothing: a poll, not work.
MAX_MEDIAN_STEP = 20_000


def _idle_share(loop: Any, start: int, end: int) -> float:
    idle = 0
    for iv in loop.idle:
        if iv.end > start and iv.start < end:
            idle += min(end, iv.end) - max(start, iv.start)
    return idle / max(1, end - start)


def _frame_of(model: Model, coro: str) -> Frame | None:
    """The line of the coroutine's function seen most in the trace's samples (the polling
    loop's ``while`` or ``await`` line). A sampler that needs the GIL catches the loop
    thread mostly in ``select``, so it may see the coroutine a few times or never: then
    there is no culprit, and the title names the coroutine alone."""
    name = coro.rsplit(".", 1)[-1]
    seen: Counter[Frame] = Counter()
    for sample in model.samples:
        for frame in sample.stack:
            if frame.function == coro or frame.function.endswith("." + name) or frame.function == name:
                seen[frame] += 1
                break
    return max(seen, key=lambda f: (seen[f], -f.line)) if seen else None


def rule_busy_poll(model: Model) -> list[Finding]:
    out: list[Finding] = []
    loops_by_thread = {loop.tid: loop for loop in model.loops.values()}
    for task in model.all_tasks():
        steps = task.steps
        if len(steps) < MIN_RATE * MIN_SPAN / SECOND:
            continue
        start, end = steps[0].start, steps[-1].end
        span = end - start
        if span < MIN_SPAN:
            continue
        rate = len(steps) / (span / SECOND)
        median = statistics.median(s.end - s.start for s in steps)
        if rate < MIN_RATE or median > MAX_MEDIAN_STEP:
            continue
        loop = loops_by_thread.get(task.thread)
        idle = _idle_share(loop, start, end) if loop is not None else 0.0
        if idle > 0.2:
            continue
        score = clamp_score(
            min(
                # a loaded machine (or the pure core) runs fewer steps a second: 10,000 with
                # the loop never idle is a poll at any speed
                ramp(rate, [(MIN_RATE, 40), (10000, 80), (50000, 90)]),
                ramp(span / MS, [(200, 50), (500, 78), (2000, 90)]),
                ramp(1 - idle, [(0.8, 40), (0.95, 85)]),
            )
        )
        frame = _frame_of(model, task.coro)
        who = task.coro or task.name
        out.append(
            Finding(
                rule="busy-poll",
                score=score,
                title=(
                    f"Coroutine {who} busy-polls: {len(steps):,} steps in {fmt_ns(span)} "
                    f"({rate:,.0f} a second, median {fmt_ns(median)} each); it yields and is "
                    "ready again at once, so the event loop never sleeps"
                ),
                culprit=Culprit.of(frame),
                moments=[
                    Moment(
                        seconds_since_start(model, start),
                        span,
                        thread_name(model, task.thread),
                        task.name or who,
                        f"{len(steps):,} steps, the loop idle {100 * idle:.0f}% of the time",
                    )
                ],
                evidence={
                    "task": task.name,
                    "coroutine": task.coro,
                    "thread": thread_name(model, task.thread),
                    "steps": len(steps),
                    "steps_per_second": round(rate),
                    "median_step_ns": int(median),
                    "polling_ns": span,
                    "loop_idle": f"{100 * idle:.0f}%",
                },
                hint=(
                    "A loop around `await asyncio.sleep(0)` (or `get_nowait()` / a flag check) "
                    "spins a CPU. Await the thing itself: an asyncio.Event set by the producer "
                    "(`loop.call_soon_threadsafe(event.set)` from a thread), `await queue.get()`, "
                    "or a future; if you must poll, sleep a real interval."
                ),
            )
        )
    return out


RULE = Rule("busy-poll", RULE_IDS, rule_busy_poll)
