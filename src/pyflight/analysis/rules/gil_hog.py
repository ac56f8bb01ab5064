"""Rule ``gil-hog``: one long C call holding the GIL (``sorted`` of a big list, a
catastrophic regex, a C extension that never releases it) starves every other thread.

The in-process sampler needs the GIL too, so such a call shows as a *gap* in the samples
of all threads; the first sample after the gap finds the holder still on the calling
line (it gives the GIL up as soon as the call returns), running. Other threads that
wanted to run meanwhile (their wait ended, or they were runnable) are the starved ones.
A gap in which another thread used CPU (its CPU clock) is not a hold: on an overloaded
machine the OS leaves the sampler off the CPU while the program's threads still take
turns with the GIL.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import (
    Queries,
    interval_ns,
    lifetime,
    sampler_ticks,
    samples_in,
    seconds_since_start,
    thread_name,
    user_threads,
)
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import ThreadState

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_gil_hog"]

RULE_IDS = ("gil-hog",)
MS = 1_000_000
#: A gap in the samples this long (and several sampling intervals) is a GIL hold.
MIN_GAP = 80 * MS
#: ... and longer than this many sampling intervals (a tick comes every interval +-10%).
GAP_INTERVALS = 2.5
#: The holder ran without a break through at least this share of the gap.
HOLD_SHARE = 0.6
#: A sample this close after the holder's running stretch ended still shows the call.
SAMPLE_SLACK = MS // 2


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


def _stretches(thread_intervals: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    """(start, end) of each run of RUNNING/READY time with no block in between: a holder
    the OS left off the CPU on a loaded machine is READY in the model's GIL/CPU-wait
    estimate (which cuts READY pieces into its run), yet still holds the GIL."""
    spans: list[tuple[int, int]] = []
    for iv in thread_intervals:
        if iv.state is not State.RUNNING and iv.state is not State.READY:
            continue
        if spans and spans[-1][1] == iv.start:
            spans[-1] = (spans[-1][0], iv.end)
        else:
            spans.append((iv.start, iv.end))
    return spans


def _inside(span: tuple[int, int], start: int, end: int) -> int:
    return max(0, min(span[1], end) - max(span[0], start))


def _stretch(thread_intervals: list, start: int, end: int) -> int:  # type: ignore[type-arg]
    """The longest run of RUNNING/READY time (see _stretches) inside [start, end]."""
    return max((_inside(span, start, end) for span in _stretches(thread_intervals)), default=0)


def _cpu_share_after(model: Model, tid: int, end: int, interval: int) -> float | None:
    """CPU / wall of ``tid``'s first sample after ``end`` (None: not measured)."""
    after = samples_in(model, tid, end - interval // 2, end + 2 * interval)
    if not after or not after[0].span:
        return None
    return after[0].cpu / after[0].span


def _holder(model: Model, start: int, end: int, skip: set[int], interval: int) -> int | None:
    """The one user thread that ran (or stood runnable) through most of [start, end] in
    one stretch and, where CPU clocks tell, was the one on CPU (the gap can begin before
    the call did: the sampler ticks once per interval)."""
    need = max(MIN_GAP, int(HOLD_SHARE * (end - start)))
    found = [
        thread.tid
        for thread in user_threads(model)
        if thread.tid not in skip and _stretch(thread.intervals, start, end) >= need
    ]
    # threads waiting for the GIL are runnable too: the holder is the one on the CPU (a
    # long call runs; a thread the OS left off the CPU holds nobody up by its own doing)
    shares = {tid: _cpu_share_after(model, tid, end, interval) for tid in found}
    # with stacks read natively, an unmeasured share is not enough: a thread in a wait no
    # source sees (waitpid) is RUNNING in the model, and a sampler the CPU budget slowed
    # leaves gaps with nobody holding the GIL; the reader saw a real holder hold it
    # (the reader was on even if it never found a holder: an idle process has none)
    native = bool(Queries.of(model).native_times()) or _read_natively(model)
    found = [
        tid
        for tid in found
        if (shares[tid] is None and not native)
        or (shares[tid] is not None and shares[tid] >= HOLDER_CPU_SHARE)  # type: ignore[operator]
        or any(s.native for s in samples_in(model, tid, start, end))
    ]
    return found[0] if len(found) == 1 else None


def _read_natively(model: Model) -> bool:
    """The sampler read the GIL holder's stack without the GIL (its trace metadata)."""
    return str(model.trace.meta.get("sampler.stacks", "")).startswith("native")


#: Among threads runnable through a gap, the holder is the one on CPU this share of it.
HOLDER_CPU_SHARE = 0.15
#: Another thread on CPU this share of a gap ran in it: the GIL changed hands (a thread
#: starved by a real hold measured < 1%: it ran at most until the call began).
OTHERS_RAN_SHARE = 0.05


def _others_ran(model: Model, hog: int, start: int, end: int, interval: int) -> bool:
    """True when another user thread used CPU through the gap (its CPU clock, from its
    first sample after the gap): then no one call held the GIL, the machine or the OS
    stretched the sampler's ticks (an overloaded CPU delays every thread alike)."""
    gap = end - start
    holder_share = _cpu_share_after(model, hog, end, interval) or 0.0
    for thread in user_threads(model):
        if thread.tid == hog:
            continue
        after = samples_in(model, thread.tid, end - interval // 2, end + 2 * interval)
        if not after or not after[0].span:
            continue
        sample = after[0]
        share = sample.cpu / sample.span
        # against the holder's too: a thread that ran a bit before a real hold began
        # shows a few % where the holder shows tens
        if sample.span >= min(gap // 4, 20 * MS) and share >= max(OTHERS_RAN_SHARE, holder_share / 4):
            return True
    return False


def _holder_frame(model: Model, tid: int, start: int, end: int, interval: int) -> Frame | None:
    """Where the holder was: its stack read without the GIL during the gap (the native
    reader: inside the call itself), else its first sample after the gap (still on the
    calling line), else its last one before it; only samples inside the stretch it ran
    through the gap (one taken after it blocked again, e.g. in the sleep after the call,
    is elsewhere). Without a native read, a guess: a sampler that needs the GIL never
    sees inside the call."""
    thread = model.threads.get(tid)
    intervals = thread.intervals if thread is not None else []
    spans = [span for span in _stretches(intervals) if _inside(span, start, end)]
    if not spans:
        return None
    run_start, run_end = max(spans, key=lambda span: _inside(span, start, end))
    during = [s for s in samples_in(model, tid, start, end) if s.native]
    after = samples_in(model, tid, end - interval // 2, end + 2 * interval)
    before = samples_in(model, tid, start - 2 * interval, start)
    for sample in during[-1:] + after[:1] + before[-1:]:
        if not run_start <= sample.time <= run_end + SAMPLE_SLACK:
            continue
        if sample.state is not State.RUNNING or sample.os_state != ThreadState.RUNNING:
            continue  # already past the call (e.g. in the sleep after it): not the call's line
        frame = user_frame(sample.stack)
        if frame is not None:
            return frame
    return None


def rule_gil_hog(model: Model) -> list[Finding]:
    ticks = sampler_ticks(model)
    if len(ticks) < 2:
        return []
    interval = interval_ns(model)
    pyflight_threads = {t.tid for t in model.threads.values() if t.is_pyflight}
    # per hog thread: gaps, the lines it was on after them, the starved threads
    gaps: dict[int, list[int]] = defaultdict(list)
    where: dict[int, dict[Frame, float]] = defaultdict(lambda: defaultdict(float))
    starved: dict[int, Counter[int]] = defaultdict(Counter)
    held: dict[int, list[Moment]] = defaultdict(list)
    # The sampler stretches its own interval while a hog holds the GIL (its ticks cost
    # more), so a multiple of the stretched interval would hide the very gaps it caused.
    limit = max(MIN_GAP, int(GAP_INTERVALS * interval))
    for a, b in itertools.pairwise(ticks):
        if b - a < limit:
            continue
        tid = _holder(model, a, b, pyflight_threads, interval)
        if tid is None or _others_ran(model, tid, a, b, interval):
            continue  # nobody or several ran through it: not one call holding the GIL
        frame = _holder_frame(model, tid, a, b, interval)
        gaps[tid].append(b - a)
        held[tid].append(
            Moment(seconds_since_start(model, a), b - a, thread_name(model, tid), "", "no thread sampled")
        )
        if frame is not None:
            where[tid][frame] += b - a
        starved[tid].update(_starved(model, tid, a, b))
    out: list[Finding] = []
    for tid, spans in gaps.items():
        total = sum(spans)
        worst = max(spans)
        victims = starved[tid]
        if not victims:
            continue  # a hold that kept no thread from running is a CPU hotspot, not a GIL hog
        thread = model.threads.get(tid)
        life = max(1, lifetime(thread)) if thread is not None else max(1, model.end - model.start)
        score = clamp_score(
            min(
                ramp(worst / MS, [(80, 30), (150, 60), (300, 80), (600, 90)]),
                ramp(total / life, [(0.05, 30), (0.15, 60), (0.3, 80), (0.6, 90)]),
                ramp(len(victims), [(1, 70), (2, 85)]),
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
                    + f"{len(victims)} other thread(s) could not run"
                ),
                culprit=Culprit.of(culprit),
                evidence={
                    "thread": name,
                    "holds": len(spans),
                    "worst_ns": worst,
                    "held_ns": total,
                    "starved_threads": ", ".join(names) + (f" and {more} more" if more > 0 else ""),
                },
                moments=moments_of(held[tid]),
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
