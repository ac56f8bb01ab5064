"""Rule ``busy-poll``: a coroutine that polls instead of awaiting (``while not done:
await asyncio.sleep(0)``, ``get_nowait()`` in a loop), or a thread that polls with short
sleeps (``while not ready: time.sleep(0.001)``).

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

from pyflight.analysis.frames import user_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import seconds_since_start, thread_name, user_threads
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding, Moment
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason

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
#: A thread's sleeps this short, at one line, at least this often, for at least
#: MIN_SPAN, asleep for most of the time it was not READY (so not pacing real work): a poll.
MAX_POLL_SLEEP = 20 * MS
MIN_POLL_RATE = 50.0
MIN_ASLEEP_SHARE = 0.8


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


_SLEEP_HINT = (
    "A loop of short sleeps that checks a flag, a result or a file wakes the thread over "
    "and over, and sees the change up to a sleep late. Wait for it instead: a "
    "threading.Event the producer sets, `queue.Queue.get()`, a Condition, "
    "`future.result()` or `concurrent.futures.wait()`: they wake once, at once. If polling "
    "is the only way (an outside resource), sleep longer, or back off."
)
_TIMEOUT_HINT = (
    "{call} with a short timeout in a loop wakes the thread over and over though it would "
    "be woken the moment the thing arrives. Wait without a timeout (or a long one: a "
    "second, to check for shutdown), and stop the thread by setting the Event or putting a "
    "sentinel on the queue."
)


def _polling_waits(model: Model) -> dict[int, dict[tuple[Frame, str], list[tuple[int, int]]]]:
    """Per thread, per (user line, what it called): its short sleeps and its short waits
    that timed out (an ``Event.wait(0.002)`` or ``queue.get(timeout=...)`` that nobody
    ended: no waker), in time order."""
    out: dict[int, dict[tuple[Frame, str], list[tuple[int, int]]]] = {}
    frames_of: dict[int, Frame | None] = {}  # id(stack) -> its user frame: stacks are shared
    for block in model.blocks:
        if block.end - block.start > MAX_POLL_SLEEP or not block.stack:
            continue  # a wait without its stack has no line to group it by
        if block.reason is BlockReason.SLEEP:
            call = "sleep"
        elif block.reason is BlockReason.CONDITION and not block.waker:
            call = block.stack[0].function
        else:
            continue
        key = id(block.stack)
        if key not in frames_of:
            frames_of[key] = user_frame(block.stack)
        site = frames_of[key]
        if site is not None:
            out.setdefault(block.tid, {}).setdefault((site, call), []).append((block.start, block.end))
    for sites in out.values():
        for waits in sites.values():
            waits.sort()
    return out


def _sleep_polls(model: Model) -> list[Finding]:
    """Threads waking many times a second from short sleeps, or short waits that time
    out, at one line, doing almost nothing in between: each wake-up costs a trip through
    the scheduler (tens of us of CPU on a VM) and the thing waited for is seen up to a
    sleep late."""
    out: list[Finding] = []
    polls = _polling_waits(model)
    for thread in user_threads(model):
        for (site, call), sleeps in polls.get(thread.tid, {}).items():
            if len(sleeps) < MIN_POLL_RATE * MIN_SPAN / SECOND:
                continue
            start, end = sleeps[0][0], sleeps[-1][1]
            span = end - start
            asleep = sum(b - a for a, b in sleeps)
            rate = len(sleeps) / (span / SECOND) if span else 0.0
            if span < MIN_SPAN or rate < MIN_POLL_RATE:
                continue
            # what it did between the sleeps; time READY (waiting for the GIL or a CPU
            # while other threads ran) is the machine's, not the loop's work
            running = sum(
                min(end, iv.end) - max(start, iv.start)
                for iv in thread.intervals
                if iv.state is State.RUNNING and iv.end > start and iv.start < end
            )
            if asleep < MIN_ASLEEP_SHARE * (asleep + running):
                continue
            median = statistics.median(b - a for a, b in sleeps)
            # wasteful and a little late, rarely the cause of an outage: information
            score = clamp_score(
                min(
                    ramp(rate, [(MIN_POLL_RATE, 30), (200, 45), (1000, 60)]),
                    ramp(span / MS, [(200, 35), (1000, 60)]),
                )
            )
            name = thread_name(model, thread.tid)
            waits = (
                f"{len(sleeps):,} sleeps of {fmt_ns(median)}"
                if call == "sleep"
                else f"{len(sleeps):,} {call} calls that timed out after {fmt_ns(median)}"
            )
            out.append(
                Finding(
                    rule="busy-poll",
                    score=score,
                    title=(
                        f"Thread {name} polls: {waits} (median) in "
                        f"{fmt_ns(span)} in {site.function}, waking {rate:,.0f} times a second to check"
                    ),
                    culprit=Culprit.of(site),
                    moments=[
                        Moment(
                            seconds_since_start(model, start),
                            span,
                            name,
                            "",
                            f"{waits}, running {fmt_ns(running)} in all",
                        )
                    ],
                    evidence={
                        "thread": name,
                        "waits_in": call,
                        "sleeps": len(sleeps),
                        "sleeps_per_second": round(rate),
                        "median_sleep_ns": int(median),
                        "polling_ns": span,
                        "asleep_share": round(asleep / (asleep + running), 3),
                        "running_ns": running,
                    },
                    hint=_SLEEP_HINT if call == "sleep" else _TIMEOUT_HINT.format(call=call),
                )
            )
    return out


def rule_busy_poll(model: Model) -> list[Finding]:
    out: list[Finding] = _sleep_polls(model)
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
