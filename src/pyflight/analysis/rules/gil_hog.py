"""Rule ``gil-hog``: one long C call holding the GIL (``sorted`` of a big list, a
catastrophic regex, a C extension that never releases it) starves every other thread.

The in-process sampler needs the GIL too, so such a call shows as a *gap* in the samples
of all threads; the first sample after the gap finds the holder still on the calling
line (it gives the GIL up as soon as the call returns), running. Other threads that
wanted to run meanwhile (their wait ended, or they were runnable) are the starved ones.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import interval_ns, lifetime, samples_in, thread_name, user_threads
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding
from pyflight.analysis.rules.loop_starved import _sampler_ticks
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_gil_hog"]

RULE_IDS = ("gil-hog",)
MS = 1_000_000
#: A gap in the samples this long (and several sampling intervals) is a GIL hold.
MIN_GAP = 80 * MS


def _starved(model: Model, hog: int, start: int, end: int) -> list[int]:
    """User threads that wanted to run in [start, end] (runnable, or their wait ended)."""
    out = []
    for thread in user_threads(model):
        if thread.tid == hog or thread.end < end or thread.start > start:
            continue
        for iv in thread.intervals:
            if iv.end <= start or iv.start >= end:
                continue
            ended_inside = iv.state is State.BLOCKED and start + 10 * MS < iv.end < end
            if iv.state in (State.RUNNING, State.READY) or ended_inside:
                out.append(thread.tid)
                break
    return out


def _holder(model: Model, start: int, end: int, skip: set[int]) -> int | None:
    """The one user thread that was running through the whole of [start, end]."""
    found = []
    for thread in user_threads(model):
        if thread.tid in skip:
            continue
        for iv in thread.intervals:
            if (
                iv.state is State.RUNNING
                and iv.start <= start + (end - start) // 10
                and iv.end >= end - (end - start) // 10
            ):
                found.append(thread.tid)
                break
    return found[0] if len(found) == 1 else None


def _holder_frame(model: Model, tid: int, start: int, end: int, interval: int) -> Frame | None:
    """Where the holder was: its first sample after the gap (still on the calling line),
    else its last one before it."""
    after = samples_in(model, tid, end - interval // 2, end + 2 * interval)
    before = samples_in(model, tid, start - 2 * interval, start)
    for sample in after[:1] + before[-1:]:
        frame = user_frame(sample.stack)
        if frame is not None:
            return frame
    return None


def rule_gil_hog(model: Model) -> list[Finding]:
    ticks = _sampler_ticks(model)
    if len(ticks) < 2:
        return []
    interval = interval_ns(model)
    limit = max(MIN_GAP, 4 * interval)
    pyflight_threads = {t.tid for t in model.threads.values() if t.is_pyflight}
    # per hog thread: gaps, the lines it was on after them, the starved threads
    gaps: dict[int, list[int]] = defaultdict(list)
    where: dict[int, dict[Frame, float]] = defaultdict(lambda: defaultdict(float))
    starved: dict[int, Counter[int]] = defaultdict(Counter)
    for a, b in itertools.pairwise(ticks):
        if b - a < limit:
            continue
        tid = _holder(model, a, b, pyflight_threads)
        if tid is None:
            continue  # nobody or several ran through it: not one call holding the GIL
        frame = _holder_frame(model, tid, a, b, interval)
        if frame is None:
            continue
        gaps[tid].append(b - a)
        where[tid][frame] += b - a
        starved[tid].update(_starved(model, tid, a, b))
    out: list[Finding] = []
    for tid, spans in gaps.items():
        total = sum(spans)
        worst = max(spans)
        victims = starved[tid]
        thread = model.threads.get(tid)
        life = max(1, lifetime(thread)) if thread is not None else max(1, model.end - model.start)
        score = clamp_score(
            min(
                ramp(worst / MS, [(80, 30), (150, 60), (300, 80), (600, 90)]),
                ramp(total / life, [(0.05, 30), (0.15, 60), (0.3, 80), (0.6, 90)]),
                ramp(len(victims), [(0, 35), (1, 70), (2, 85)]),
            )
        )
        culprit, _ = by_function(where[tid])
        name = thread_name(model, tid)
        names = [thread_name(model, v) for v, _ in victims.most_common(4)]
        more = len(victims) - len(names)
        call = f" in {culprit.function} (line {culprit.line})" if culprit is not None else ""
        out.append(
            Finding(
                rule="gil-hog",
                score=score,
                title=(
                    f"{name} held the GIL in one long call{call}: {len(spans)} time(s), up to "
                    f"{fmt_ns(worst)} ({fmt_ns(total)} in all), while "
                    + (f"{len(victims)} other thread(s) could not run" if victims else "nothing else ran")
                ),
                culprit=Culprit.of(culprit),
                evidence={
                    "thread": name,
                    "holds": len(spans),
                    "worst_ns": worst,
                    "held_ns": total,
                    "starved_threads": ", ".join(names) + (f" and {more} more" if more > 0 else ""),
                },
                hint=(
                    "A single C call (a big sort, a backtracking regex, a C extension) runs "
                    "without letting other threads in. Do it in a process pool, in smaller "
                    "pieces, or with an algorithm that does less (keep the list sorted, "
                    "`heapq.nlargest`, a regex without nested quantifiers or the `regex` "
                    "module with a timeout)."
                ),
            )
        )
    return out


RULE = Rule("gil-hog", RULE_IDS, rule_gil_hog)
