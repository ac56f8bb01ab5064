"""Rule ``cpu-hotspot`` (docs/report.md explains its score)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model, Sample
from pyflight.analysis.frames import (
    by_function,
    in_loop_machinery,
    is_library,
    runs_an_event_loop,
    short_file,
    user_frame,
)
from pyflight.analysis.queries import interval_ns, seconds_since_start, thread_name
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of, stretches
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns, pct


def rule_cpu_hotspot(model: Model) -> list[Finding]:
    from pyflight.analysis.cpu import cpu_samples

    total = 0
    self_w: dict[Frame, float] = defaultdict(float)
    # the program's own line is the culprit (the view that runs the ORM, not the ORM);
    # what it spent the CPU inside (a third-party function) is named beside it
    inside: dict[tuple[str, str], dict[Frame, float]] = defaultdict(lambda: defaultdict(float))
    charged = []
    for sample, ns in cpu_samples(model):  # measured CPU, charged where the thread ran
        total += ns
        frame = user_frame(sample.stack)
        if frame is None or is_library(frame):
            continue  # only the standard library's or pyflight's frames
        if in_loop_machinery(sample.stack, frame):
            continue  # the event loop's own work: not the line that started the loop
        self_w[frame] += ns
        charged.append((sample, ns, frame))
        innermost = next((f for f in sample.stack if not is_library(f)), None)
        if innermost is not None and innermost != frame:
            inside[(frame.function, frame.file)][innermost] += ns
    if total <= 0:
        return []
    frame, weight = by_function(self_w)
    if frame is None:
        return []
    span = max(1, model.end - model.start)
    # in CPUs: 1.0 = one core busy all the time; the time its threads stood runnable
    # but off a CPU counts too (a busy machine gave the program less than it asked for:
    # the function's demand, not the machine's generosity, is the program's)
    wall_share = weight / span
    wanted_share = (weight + _ready_ns(model, charged, frame)) / span
    cpu_share = weight / total
    if weight < 50 * MS:
        return []
    lines = sorted(
        ((f.line, w) for f, w in self_w.items() if (f.function, f.file) == (frame.function, frame.file)),
        key=lambda lw: -lw[1],
    )
    # CPU inside an event loop's steps (a loop runner outer to it): every task waits
    # meanwhile; on a loop that is not asyncio's own (uvloop) no step is recorded, so
    # this is the only place that says so
    own_loops = {loop.tid for loop in model.loops.values()}
    on_loop = on_foreign_loop = 0
    for sample, ns, f in charged:
        if (f.function, f.file) == (frame.function, frame.file) and any(
            runs_an_event_loop(outer) for outer in sample.stack
        ):
            on_loop += ns
            if sample.tid not in own_loops:
                on_foreign_loop += ns
    # (asyncio's own loops record their steps: a long one is loop-blocked's to tell)
    on_loop_note = (
        " inside the steps of an event loop that is not asyncio's own (uvloop): no other task "
        "of that loop ran while it did (how long each step held the loop is not recorded)"
        if on_foreign_loop >= weight / 2
        else ""
    )
    within, within_ns = by_function(inside.get((frame.function, frame.file), {}))
    # named when most of the function's CPU went there (a library call it makes)
    via = f" (mostly inside {within.function})" if within is not None and within_ns >= weight / 2 else ""
    score = clamp_score(
        max(
            min(
                ramp(wanted_share, [(0.05, 10), (0.2, 35), (0.5, 55), (0.9, 70)]),
                ramp(cpu_share, [(0.1, 10), (0.3, 40), (0.6, 70)]),
            ),
            # a foreign loop's steps holding it: what loop-blocked says of asyncio's loops
            ramp(on_foreign_loop / MS, [(100, 35), (300, 55), (1000, 70)]) if on_loop_note else 0,
        )
    )
    return [
        Finding(
            rule="cpu-hotspot",
            score=score,
            title=(
                f"CPU hotspot: {_named(frame)} used {fmt_ns(weight)} of CPU ({pct(cpu_share)} of all CPU)"
                + via
                + on_loop_note
            ),
            culprit=Culprit.of(frame),
            moments=_moments(model, charged, frame),
            evidence={
                "cpu_ns": int(weight),
                "cpu_share": round(cpu_share, 4),
                "cores_busy": round(wall_share, 3),
                "cores_wanted": round(wanted_share, 3),
                "total_cpu_ns": total,
                "hot_lines": [{"line": ln, "cpu_ns": int(w)} for ln, w in lines[:5]],
                "inside": str(Culprit.of(within)) if via else None,
                "inside_cpu_ns": int(within_ns) if via else 0,
                "on_event_loop_ns": int(on_loop) or None,
            },
            hint=(
                f"Most CPU time is spent in {frame.function}"
                + (f", in the library calls it makes ({within.function})" if via and within else "")
                + ". Optimise it (a better algorithm, caching, fewer or cheaper library calls, "
                "vectorised libraries), or run it in a process pool so it does not hold "
                "the GIL for the other threads."
                + (
                    " On the event loop's thread it blocks every task: `await "
                    "loop.run_in_executor(process_pool, ...)` moves it off the loop."
                    if on_loop_note
                    else ""
                )
            ),
        )
    ]


def _ready_ns(model: Model, charged: list[tuple[Sample, int, Frame]], hot: Frame) -> int:
    """READY time (runnable, waiting for a CPU or the GIL) of the threads while they were
    sampled in the hot function: inside each charged sample's span."""
    ready: dict[int, list[tuple[int, int]]] = {}
    total = 0
    for s, _, frame in charged:
        if (frame.function, frame.file) != (hot.function, hot.file) or not s.span:
            continue
        spans = ready.get(s.tid)
        if spans is None:
            thread = model.threads.get(s.tid)
            intervals = thread.intervals if thread is not None else []
            spans = ready[s.tid] = [(iv.start, iv.end) for iv in intervals if iv.state is State.READY]
        lo, hi = s.time - s.span, s.time
        i = max(0, bisect.bisect_left(spans, (lo,)) - 1)
        while i < len(spans) and spans[i][0] < hi:
            total += max(0, min(spans[i][1], hi) - max(spans[i][0], lo))
            i += 1
    return total


def _named(frame: Frame) -> str:
    """A function's name; a module's top-level code (imports, set-up) said as such."""
    if frame.function == "<module>":
        return f"the top-level code of {short_file(frame.file)} (imports, set-up)"
    return frame.function


def _moments(model: Model, charged: list[tuple[Sample, int, Frame]], hot: Frame) -> list[Moment]:
    """The sampled stretches in which threads used CPU in the hot function."""
    interval = interval_ns(model)
    pieces = [
        (s.tid, max(model.start, s.time - (s.span or interval)), s.time, ns)
        for s, ns, frame in charged
        if (frame.function, frame.file) == (hot.function, hot.file)
    ]
    return moments_of(
        [
            Moment(
                seconds_since_start(model, start),
                end - start,
                thread_name(model, tid),
                "",
                f"used {fmt_ns(cpu)} of CPU in {hot.function}",
            )
            for tid, start, end, cpu in stretches(pieces, interval // 2)
        ]
    )


RULE = Rule("cpu-hotspot", ("cpu-hotspot",), rule_cpu_hotspot)
