"""Rule ``stalled-holder``: a worker took the work item the others wait for (the one ball
on the table, the only token of a ``queue.Queue(maxsize=1)``) and stalled before handing
it back: a sleep, a slow call. Its peers sit in ``Queue.get`` meanwhile.

The queue rules see idle consumers and look for a slow producer; here the "producer" is
one of the consumers, and the cause is its stall, not the queue. Evidence: a long block
of thread T, other threads blocked on an object O during it, T waking waiters of O
right after it, and T itself having waited on O before (it is a peer, not a producer).
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function, user_frame, wait_name
from pyflight.analysis.model import State
from pyflight.analysis.queries import seconds_since_start, thread_name, user_threads
from pyflight.analysis.rules._waits import semaphore_conditions, waits_for_next_job
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.library_waits import library_wait_objects
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval, Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_stalled_holder"]

RULE_IDS = ("stalled-holder",)
MS = 1_000_000
#: A stall this long is felt by whoever waits for the item.
MIN_STALL = 50 * MS
#: The hand-off (a put waking a waiter) follows the stall within this.
HANDOFF = 20 * MS
_STALLS = (BlockReason.SLEEP, BlockReason.IO, BlockReason.SELECT, BlockReason.OTHER, BlockReason.LOCK)


def _handed_to(
    iv: Interval,
    tid: int,
    wakes: list[tuple[int, int]],
    times: list[int],
    peer_waits: list[tuple[int, int, int]],
) -> int | None:
    """The object the stalled thread handed on right after the stall: one whose waiter it
    woke (a wake event), else one on which another thread's wait ended just then."""
    i = bisect.bisect_left(times, iv.end)
    if i < len(wakes) and wakes[i][0] <= iv.end + HANDOFF:
        return wakes[i][1]
    j = bisect.bisect_left(peer_waits, (iv.end, 0, 0))
    while j < len(peer_waits) and peer_waits[j][0] <= iv.end + HANDOFF:
        _, obj, other = peer_waits[j]
        if other != tid:
            return obj
        j += 1
    return None


def rule_stalled_holder(model: Model) -> list[Finding]:
    threads = user_threads(model)
    # a Semaphore's slots, a library's pool of connections are no item handed around:
    # lock-contention and library-wait tell those waits
    semaphores = semaphore_conditions(model) | library_wait_objects(model)
    waits_on: dict[int, list[tuple[int, Interval]]] = defaultdict(list)  # obj -> (tid, interval)
    for thread in threads:
        for iv in thread.intervals:
            if (
                iv.state is State.BLOCKED
                and iv.reason is BlockReason.CONDITION
                and iv.obj
                and iv.obj not in semaphores
                and not waits_for_next_job(iv.stack)  # an idle pool worker holds nobody up
            ):
                waits_on[iv.obj].append((thread.tid, iv))
    wakes_by: dict[int, list[tuple[int, int]]] = defaultdict(list)  # waker -> (time, obj)
    for wake in model.wakes:
        if wake.obj:
            wakes_by[wake.waker].append((wake.time, wake.obj))
    for wakes in wakes_by.values():
        wakes.sort()
    # (end, obj, tid) of every wait, to see who was handed something when a stall ended
    peer_waits = sorted((w.end, obj, tid) for obj, ws in waits_on.items() for tid, w in ws)
    out: list[Finding] = []
    for thread in threads:
        wakes = wakes_by.get(thread.tid, [])
        times = [t for t, _ in wakes]
        stalls = 0
        worst = 0
        caused = 0
        victims: Counter[int] = Counter()
        where: dict[Frame, float] = defaultdict(float)
        objs: Counter[int] = Counter()
        moments: list[Moment] = []
        for iv in thread.intervals:
            duration = iv.end - iv.start
            if iv.state is not State.BLOCKED or iv.reason not in _STALLS or duration < MIN_STALL:
                continue
            obj = _handed_to(iv, thread.tid, wakes, times, peer_waits)
            if obj is None:
                continue
            peers = waits_on.get(obj, [])
            if not any(tid == thread.tid and w.end <= iv.start for tid, w in peers):
                continue  # it never waited on O: a producer, which the queue rules cover
            waited = 0
            for tid, w in peers:
                if tid != thread.tid and w.end > iv.start and w.start < iv.end:
                    overlap = min(w.end, iv.end) - max(w.start, iv.start)
                    waited += overlap
                    victims[tid] += overlap
            if waited < duration:  # fewer than one peer-stall's worth of waiting
                continue
            stalls += 1
            moments.append(
                Moment(
                    seconds_since_start(model, iv.start),
                    duration,
                    thread_name(model, thread.tid),
                    "",
                    f"stalled{_how(wait_name(iv.reason, iv.stack))} "
                    f"while others waited {fmt_ns(waited)} for the item",
                )
            )
            worst = max(worst, duration)
            caused += waited
            objs[obj] += 1
            frame = user_frame(iv.stack)
            if frame is not None:
                where[frame] += duration
        if not stalls:
            continue
        score = clamp_score(
            min(
                ramp(caused / MS, [(100, 30), (300, 76), (1000, 88), (3000, 95)]),
                ramp(len(victims), [(1, 50), (2, 78), (4, 85)]),
            )
        )
        culprit, _ = by_function(where)
        name = thread_name(model, thread.tid)
        peers_named = [thread_name(model, tid) for tid, _ in victims.most_common(4)]
        what = f" in {culprit.function} (line {culprit.line})" if culprit is not None else ""
        out.append(
            Finding(
                rule="stalled-holder",
                score=score,
                title=(
                    f"{name} stalled {stalls} time(s) for up to {fmt_ns(worst)}{what} while holding "
                    f"the item {len(victims)} other thread(s) waited for: {fmt_ns(caused)} of their "
                    "waiting"
                ),
                culprit=Culprit.of(culprit),
                moments=moments_of(moments),
                evidence={
                    "thread": name,
                    "stalls": stalls,
                    "worst_ns": worst,
                    "caused_wait_ns": caused,
                    "waiting_threads": ", ".join(peers_named),
                },
                hint=(
                    "The other threads cannot proceed until this one hands the item back. Do "
                    "not sleep or make slow calls between taking the item and passing it on: "
                    "hand it back first, or add a timeout to the slow call."
                ),
            )
        )
    return out


RULE = Rule("stalled-holder", RULE_IDS, rule_stalled_holder)


def _how(wait: str) -> str:
    """The wait in a moment's words, after "stalled": " (select)", or ", waiting for a
    subprocess (communicate)," (no brackets inside brackets)."""
    return f", {wait}," if wait.startswith("waiting") else f" ({wait})"
