"""Rule ``lock-contention`` (docs/report.md explains its score)."""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.model import State
from pyflight.analysis.rules.base import Rule
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval, Model, ThreadTimeline
from pyflight.analysis.frames import top_frame, user_frame
from pyflight.analysis.queries import lifetime, samples_in, seconds_since_start, thread_name
from pyflight.analysis.rules._waits import (
    GIL_BOUND_HINT,
    GIL_BOUND_SCORE,
    blocked_waits,
    contentions,
    gil_bound,
    semaphore_conditions,
    task_activity,
    task_blocked_waits,
    task_label_of,
    task_life,
)
from pyflight.analysis.rules.deadlock import deadlocked_waits
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import fmt_ns, pct

_LOCK_HINT = (
    "Threads queue up on one lock. Hold it for less time (compute outside the `with lock:` "
    "block, copy then release), split it into finer locks, or hand work over with a queue "
    "instead of sharing state."
)
# a semaphore is there to bound something: waiting on it is the bound at work
_SEMAPHORE_HINT = (
    "Threads queue up on one threading.Semaphore, which lets only a fixed number of threads "
    "in at once. If what it bounds (a downstream service, a connection pool, a rate limit) "
    "can take more at once, raise its limit; if not, the queue is the bound doing its job: "
    "keep only the bounded call inside `with semaphore:` and let callers feel the "
    "back-pressure sooner (a timeout on acquire, a bounded queue in front)."
)

#: Lock contention score by the waiters' share of life spent waiting.
_LOCK_RAMP = [(0.02, 15), (0.05, 30), (0.2, 60), (0.4, 80), (0.7, 95)]


def rule_lock_contention(model: Model) -> list[Finding]:
    out: list[Finding] = []
    # a lock-order inversion is the deadlock rule's (its waits are no queue on one lock)
    deadlocked = deadlocked_waits(model)
    lock_waits = [
        (t, iv)
        for t, iv in blocked_waits(model, BlockReason.LOCK)
        if not any(tid == t.tid and start <= iv.start < end for tid, start, end in deadlocked)
    ]
    out.extend(_thread_contention(model, lock_waits, BlockReason.LOCK))
    semaphores = semaphore_conditions(model)
    if semaphores:
        waits = [(t, iv) for t, iv in blocked_waits(model, BlockReason.CONDITION) if iv.obj in semaphores]
        out.extend(_thread_contention(model, waits, BlockReason.CONDITION))
    out.extend(_asyncio_lock_contention(model))
    return out


def _handed_over_by(
    model: Model, reason: BlockReason, objs: set[int]
) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(waiting thread, lock) -> (time, waker) of the wake-ups that ended its waits, in
    time order."""
    out: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for wake in model.wakes:
        if wake.reason == reason and wake.obj in objs and wake.waker:
            out[(wake.target, wake.obj)].append((wake.time, wake.waker))
    for found in out.values():
        found.sort()
    return out


#: A wake-up this close after a wait's end still ended it (the waker records it as it
#: releases, the waiter its BLOCK_END when it runs again: either may come first).
_WAKE_SLACK = 5_000_000


def _waker_of(wakes: list[tuple[int, int]] | None, iv: Interval) -> int:
    """The thread whose wake-up ended wait ``iv`` (the last one at most ``_WAKE_SLACK``
    after its end, not before its start), 0 if none is known."""
    if not wakes:
        return 0
    k = bisect.bisect_right(wakes, (iv.end + _WAKE_SLACK, 1 << 62)) - 1
    return wakes[k][1] if k >= 0 and wakes[k][0] >= iv.start else 0


def _thread_contention(
    model: Model, lock_waits: list[tuple[ThreadTimeline, Interval]], reason: BlockReason
) -> list[Finding]:
    """Threads queueing on one lock (LOCK) or for a slot of one threading.Semaphore
    (CONDITION waits in ``Semaphore.acquire``)."""
    out: list[Finding] = []
    semaphore = reason is BlockReason.CONDITION
    for c in contentions(lock_waits, lambda t: t.tid, lifetime, by_site=True):
        obj, waits, waiters, total, share = c.obj, c.waits, c.waiters, c.total, c.share
        worst_t, worst, where = c.worst_waiter, c.worst, c.where
        # where the holders were while others waited: the thread that handed each wait the
        # lock (its waker), else every thread that ever released it
        ended_by = _handed_over_by(model, reason, {iv.obj for _, iv in waits})
        holders = Counter(waker for wakes in ended_by.values() for _, waker in wakes)
        held: Counter[Frame] = Counter()
        for t, iv in waits:
            handed = _waker_of(ended_by.get((t.tid, iv.obj)), iv)
            for tid in (handed,) if handed else holders:
                for sample in samples_in(model, tid, iv.start, iv.end):
                    if sample.state is State.BLOCKED and sample.reason is reason:
                        continue  # waiting its own turn then, not holding
                    frame = user_frame(sample.stack)
                    if frame is not None:
                        held[frame] += 1
        holder_frame = top_frame(held)
        score = clamp_score(ramp(share, _LOCK_RAMP))
        title = (
            f"Semaphore contention: {len(waiters)} thread(s) waited {fmt_ns(total)} for a slot of "
            "a threading.Semaphore"
            if semaphore
            else f"Lock contention: {len(waiters)} thread(s) waited {fmt_ns(total)} for "
            + (f"{c.objs} locks" if c.objs > 1 else "a lock")
        )
        if where:
            title += f" in {where.function}"
        if holder_frame is not None:
            title += f", its holders meanwhile in {holder_frame.function} (line {holder_frame.line})"
        busy = gil_bound(model, waits)
        if busy is not None:
            score = min(score, GIL_BOUND_SCORE)
            title += (
                f", while other threads ran (the GIL busy {pct(busy)} of that time): "
                "CPU-bound threads taking turns"
            )
        out.append(
            Finding(
                rule="lock-contention",
                score=score,
                title=title,
                culprit=Culprit.of(where),
                evidence={
                    "lock": obj,
                    "locks": c.objs,
                    "kind": "threading.Semaphore" if semaphore else "threading.Lock",
                    "waits": len(waits),
                    "wait_ns": total,
                    "wait_share": round(share, 4),
                    "worst_ns": worst.end - worst.start,
                    "worst_at_s": seconds_since_start(model, worst.start),
                    "worst_waiter": worst_t.name,
                    "waiters": sorted(t.name for t in waiters.values()),
                    "holders": [thread_name(model, tid) for tid, _ in holders.most_common(5)],
                    "held_at": str(Culprit.of(holder_frame)) if holder_frame else None,
                    "gil_busy_share": round(busy, 3) if busy is not None else None,
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, iv.start),
                            iv.end - iv.start,
                            thread.name or f"thread {thread.tid}",
                            "",
                            "waited for a slot" if semaphore else "waited for the lock",
                        )
                        for thread, iv in waits
                    ]
                ),
                hint=(GIL_BOUND_HINT if busy is not None else "")
                + (_SEMAPHORE_HINT if semaphore else _LOCK_HINT),
            )
        )
    return out


def _asyncio_lock_contention(model: Model) -> list[Finding]:
    """asyncio tasks queueing on one asyncio.Lock / Semaphore.

    The holder is not recorded (that would cost on every release); it is inferred: an
    asyncio.Lock with waiters goes to them in FIFO order (no barging), so a task whose
    wait ended holds the lock until the next wait on it ends."""
    out: list[Finding] = []
    for c in contentions(task_blocked_waits(model, BlockReason.LOCK), lambda t: t.id, task_life):
        obj, waits, waiters, total, share = c.obj, c.waits, c.waiters, c.total, c.share
        worst_t, worst, where = c.worst_waiter, c.worst, c.where
        what = Counter(iv.detail for _, iv in waits).most_common(1)[0][0] or "asyncio.Lock.acquire"
        kind = what.rsplit(".", 1)[0]  # asyncio.Lock, asyncio.Semaphore
        # inferred holds: from the end of one wait to the end of the next
        ends = sorted((iv.end, t.id) for t, iv in waits)
        holds: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for (a, tid), (b, _next) in itertools.pairwise(ends):
            if b > a:
                holds[tid].append((a, b))
        held_by: Counter[str] = Counter()
        for tid, spans in holds.items():
            held_by[task_label_of(waiters[tid])] += sum(b - a for a, b in spans)
        holder_frame, holder_running, holder_waiting = task_activity(
            model, [(waiters[tid], spans) for tid, spans in holds.items()]
        )
        score = clamp_score(ramp(share, _LOCK_RAMP))
        title = f"asyncio lock contention: {len(waiters)} task(s) waited {fmt_ns(total)} for an {kind}"
        if where:
            title += f" in {where.function}"
        held_ns = sum(held_by.values())
        if holder_frame is not None:
            title += f"; holders busy in {holder_frame.function}"
        elif held_by:
            title += f"; held by {held_by.most_common(1)[0][0]} tasks"
            if held_ns and holder_waiting >= 0.5 * held_ns:
                title += f", awaiting while holding it ({pct(holder_waiting / held_ns)} of the time)"
        out.append(
            Finding(
                rule="lock-contention",
                score=score,
                title=title,
                culprit=Culprit.of(where),
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, iv.start),
                            iv.end - iv.start,
                            thread_name(model, t.thread),
                            task_label_of(t),
                            f"waited in {iv.detail or 'asyncio.Lock.acquire'}",
                        )
                        for t, iv in waits
                    ]
                ),
                evidence={
                    "lock": obj,
                    "kind": kind,
                    "waits": len(waits),
                    "wait_ns": total,
                    "wait_share": round(share, 4),
                    "worst_ns": worst.end - worst.start,
                    "worst_at_s": seconds_since_start(model, worst.start),
                    "worst_waiter": worst_t.name or task_label_of(worst_t),
                    "waiting_tasks": len(waiters),
                    "waiting_in": sorted({task_label_of(t) for t in waiters.values()})[:10],
                    "holders": [name for name, _ in held_by.most_common(5)],
                    "held_at": str(Culprit.of(holder_frame)) if holder_frame else None,
                    "held_ns": held_ns,
                    "holders_running_ns": holder_running,
                    "holders_awaiting_ns": holder_waiting,
                },
                hint=_asyncio_hint(kind),
            )
        )
    return out


def _asyncio_hint(kind: str) -> str:
    if kind.endswith("Semaphore"):  # asyncio.Semaphore, asyncio.BoundedSemaphore
        # a semaphore is usually there to bound something: waiting on it is the bound at
        # work, and "use a Semaphore" (the advice for a lock) would be no advice at all
        return (
            f"Tasks queue up on one {kind}, which lets only a fixed number of tasks in at "
            "once. If what it bounds (a downstream service, a connection pool, a rate "
            "limit) can take more at once, raise its limit; if not, the queue is the bound "
            "doing its job: keep only the bounded call inside `async with` (do other awaits "
            "outside it) and make callers feel the back-pressure sooner. Recording with "
            "task_wait='stack' shows where holders await."
        )
    return (
        f"Tasks queue up on one {kind}. A task holding it across an `await` (I/O, "
        "sleep, another lock) makes every other task wait that long: do the slow "
        "await outside the `async with` block, shorten the critical section, use a "
        "finer-grained lock per key, or a Semaphore if a few may run at once. "
        "Recording with task_wait='stack' shows where holders await."
    )


RULE = Rule("lock-contention", ("lock-contention",), rule_lock_contention)
