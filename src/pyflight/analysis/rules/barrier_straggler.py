"""Rule ``barrier-straggler``: threads that meet at a ``threading.Barrier`` every round
wait there for the slowest one, so each round takes as long as its slowest thread: with
one shard six times bigger than the others, three threads of four sit at the barrier
most of the time. Seen as nothing at all before (waits that end, a CPU that is idle).

Evidence: the Condition waits inside ``Barrier.wait`` (the waiting stacks say so), and
who ended them: the barrier's last arrival releases everyone (``notify_all``), so the
waker of each wait is the thread that arrived last. One thread being that waker for
most of the waiting time is the straggler; where it was while the others waited (its
samples and its own blocks then) is the work to balance.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.model import State
from pyflight.analysis.queries import lifetime, samples_in, seconds_since_start, thread_name
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns, pct
from pyflight.core.events import BlockReason

if TYPE_CHECKING:
    from pyflight.analysis.model import Block, Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_barrier_straggler"]

RULE_IDS = ("barrier-straggler",)
MS = 1_000_000
#: The waits at one barrier add up to at least this...
MIN_WAIT = 50 * MS
#: ...and one thread was the last to arrive for at least this share of that time.
STRAGGLER_SHARE = 0.6
#: ...and was the last to arrive in at least this share of the waits (of the rounds): a
#: balanced barrier on a loaded machine has a different last arrival each round, and one
#: of them can still end up with most of the waiting time over ten rounds (seen: 5 of 10).
LAST_SHARE = 0.7
_BARRIER_FRAMES = ("Barrier.wait", "Barrier._wait")


def _is_barrier_wait(block: Block) -> bool:
    return any(f.function in _BARRIER_FRAMES and f.file.endswith("threading.py") for f in block.stack[:4])


def _where(model: Model, tid: int, waits: list[Block]) -> dict[Frame, float]:
    """Where thread ``tid`` was while the ``waits`` it ended lasted: its blocks then (by
    overlap) and its samples taken on a CPU then (by the sampling interval)."""
    where: dict[Frame, float] = defaultdict(float)
    thread = model.threads.get(tid)
    if thread is None:
        return where
    interval = model.sampling_interval_ns or 10 * MS
    intervals = thread.intervals  # in time order, back to back
    starts = [iv.start for iv in intervals]
    for w in waits:
        first = max(0, bisect.bisect_right(starts, w.start) - 1)
        last = bisect.bisect_left(starts, w.end, lo=first)
        for iv in intervals[first:last]:
            if iv.end <= w.start or iv.state is not State.BLOCKED or not iv.stack:
                continue
            if iv.reason is BlockReason.CONDITION and iv.obj == w.obj:
                continue  # its own wait at the barrier
            frame = user_frame(iv.stack)
            if frame is not None:
                where[frame] += min(iv.end, w.end) - max(iv.start, w.start)
        for sample in samples_in(model, tid, w.start, w.end):
            if sample.state is State.RUNNING:
                frame = user_frame(sample.stack)
                if frame is not None:
                    where[frame] += interval
    return where


def rule_barrier_straggler(model: Model) -> list[Finding]:
    by_obj: dict[int, list[Block]] = defaultdict(list)
    barriers: set[int] = set()
    for b in model.blocks:
        if b.reason is BlockReason.CONDITION:
            by_obj[b.obj].append(b)
            if b.obj not in barriers and _is_barrier_wait(b):
                barriers.add(b.obj)
    out: list[Finding] = []
    for obj in barriers:
        waits = by_obj[obj]
        total = sum(b.end - b.start for b in waits)
        if total < MIN_WAIT:
            continue
        caused: Counter[int] = Counter()
        for b in waits:
            if b.waker and b.waker != b.tid:
                caused[b.waker] += b.end - b.start
        if not caused:
            continue
        straggler, by_it = caused.most_common(1)[0]
        if by_it < STRAGGLER_SHARE * total:
            continue
        if sum(1 for b in waits if b.waker == straggler) < LAST_SHARE * len(waits):
            continue
        its = [b for b in waits if b.waker == straggler]
        waiters = sorted({b.tid for b in its})
        life = sum(max(1, lifetime(model.threads[t])) for t in waiters if t in model.threads) or 1
        share = sum(b.end - b.start for b in its) / life
        frame, _ = by_function(_where(model, straggler, its))
        wait_frame, _ = by_function(
            {f: float(b.end - b.start) for b in its if (f := user_frame(b.stack)) is not None}
        )
        slow = thread_name(model, straggler)
        names = [thread_name(model, t) for t in waiters]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        last = sum(1 for b in waits if b.waker == straggler)
        at = f" in {wait_frame.function} (line {wait_frame.line})" if wait_frame is not None else ""
        meanwhile = f"; {slow} meanwhile in {frame.function} (line {frame.line})" if frame is not None else ""
        worst = max(its, key=lambda b: b.end - b.start)
        out.append(
            Finding(
                rule="barrier-straggler",
                score=clamp_score(ramp(share, [(0.05, 15), (0.2, 45), (0.4, 75), (0.7, 90)])),
                title=(
                    f"Threads wait for the slowest at a threading.Barrier: {shown} waited "
                    f"{fmt_ns(by_it)} in all ({pct(share)} of their time){at} for {slow}, the last "
                    f"to arrive in {last} of {len(waits)} waits{meanwhile}"
                ),
                culprit=Culprit.of(frame or wait_frame),
                evidence={
                    "straggler": slow,
                    "waiters": names,
                    "wait_ns": by_it,
                    "wait_share": round(share, 3),
                    "waits": len(waits),
                    "ended_by_straggler": last,
                    "straggler_at": str(Culprit.of(frame)) if frame is not None else None,
                    "worst_ns": worst.end - worst.start,
                    "worst_at_s": seconds_since_start(model, worst.start),
                    "worst_thread": thread_name(model, worst.tid),
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, b.start),
                            b.end - b.start,
                            thread_name(model, b.tid),
                            "",
                            f"waited at the barrier for {slow}",
                        )
                        for b in its
                    ]
                ),
                hint=(
                    "Threads that meet at a barrier every round go at the pace of the slowest "
                    "one: balance the work between them (even shards, or a shared queue of "
                    "small tasks that fast threads keep taking from), or drop the barrier "
                    "where the rounds need not run in lockstep."
                ),
            )
        )
    return out


RULE = Rule("barrier-straggler", RULE_IDS, rule_barrier_straggler)
