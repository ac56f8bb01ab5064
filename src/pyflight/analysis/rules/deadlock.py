"""Rule ``deadlock``: threads that each hold a lock the next one waits for, round a cycle
(``transfer`` holds ``accounts`` and waits for ``ledger`` while ``audit`` holds ``ledger``
and waits for ``accounts``): a lock-order inversion. Told as lock contention, it got the
contention's advice (hold the lock for less time), which does not help: the threads must
take the locks in one order.

The C core records, as a thread begins to wait for a lock, which thread holds it
(LOCK_HELD, kept in the model as ``Block.holder``). A cycle of such waits that were all
under way at once, at least one of which never got the lock (it timed out, or was still
waiting when the trace ends), is a deadlock: with ``acquire(timeout=...)`` one that
breaks itself after the timeout, without it one that never ends.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflight.analysis.frames import user_frame
from pyflight.analysis.queries import Queries, seconds_since_start, thread_name
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import Culprit, Finding, Moment
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason

if TYPE_CHECKING:
    from pyflight.analysis.model import Block, Model

__all__ = ["RULE", "RULE_IDS", "deadlocked_waits", "rule_deadlock"]

RULE_IDS = ("deadlock",)
MS = 1_000_000
#: The waits of a cycle overlapped at least this long (a holder recorded as a wait began
#: may hand the lock over a moment later; a deadlock lasts).
MIN_OVERLAP = 20 * MS
#: Cycles of at most this many threads are looked for.
MAX_CYCLE = 4
SCORE_STILL_WAITING = 95  # the trace ends with the threads still stuck
SCORE_TIMED_OUT = 90  # a timeout broke it: a stall as long as the timeout, each time


@dataclass(frozen=True)
class Cycle:
    """Lock waits, each for a lock the next wait's thread held (the last: the first's);
    ``behind``: other threads' waits for those locks while the cycle lasted (stuck too)."""

    waits: tuple[Block, ...]
    behind: tuple[Block, ...] = ()

    @property
    def start(self) -> int:
        return max(b.start for b in self.waits)

    @property
    def end(self) -> int:
        return min(b.end for b in self.waits)


def _cycles(model: Model) -> list[Cycle]:
    """The deadlock cycles among the lock waits whose holder is known, each once."""
    # only waits long enough to overlap: a busy lock's thousands of short waits never do
    waits = [
        b
        for b in model.blocks
        if b.reason is BlockReason.LOCK and b.holder and b.holder != b.tid and b.end - b.start >= MIN_OVERLAP
    ]
    by_thread: dict[int, list[Block]] = {}
    for b in waits:  # model.blocks is sorted by start
        by_thread.setdefault(b.tid, []).append(b)
    starts = {tid: [b.start for b in bs] for tid, bs in by_thread.items()}
    ended = model.end
    found: dict[frozenset[tuple[int, int]], Cycle] = {}

    def extend(path: list[Block], start: int, end: int) -> None:
        holder = path[-1].holder
        if holder == path[0].tid:
            cycle = Cycle(tuple(path))
            # one of them never got the lock: it timed out, or waits still at the end
            # ([start, end), the waits' common span, is >= MIN_OVERLAP: extend checks it)
            stuck = any(not b.waker or b.end >= ended for b in path)
            if stuck:
                found.setdefault(frozenset((b.tid, b.start) for b in path), cycle)
            return
        if len(path) >= MAX_CYCLE or any(b.tid == holder for b in path):
            return
        theirs = by_thread.get(holder)
        if not theirs:
            return
        # a thread waits for one lock at a time: its waits that overlap [start, end) are
        # the few just before the first that starts after ``end``
        j = bisect.bisect_left(starts[holder], end) - 1
        while j >= 0 and theirs[j].end > start:
            nxt = theirs[j]
            s, e = max(start, nxt.start), min(end, nxt.end)
            if e - s >= MIN_OVERLAP:
                extend([*path, nxt], s, e)
            j -= 1

    for b in waits:
        extend([b], b.start, b.end)
    if not found:
        return []
    on_lock: dict[int, list[Block]] = {}
    for b in model.blocks:
        if b.reason is BlockReason.LOCK:
            on_lock.setdefault(b.obj, []).append(b)
    cycles = []
    for cycle in sorted(found.values(), key=lambda c: c.start):
        behind = tuple(
            b
            for obj in dict.fromkeys(w.obj for w in cycle.waits)
            for b in on_lock.get(obj, ())
            if b not in cycle.waits and b.start < cycle.end and b.end > cycle.start
        )
        cycles.append(Cycle(cycle.waits, behind))
    return cycles


def _cached_cycles(model: Model) -> list[Cycle]:
    memo = Queries.of(model).memo
    if "deadlock.cycles" not in memo:
        memo["deadlock.cycles"] = _cycles(model)
    cycles: list[Cycle] = memo["deadlock.cycles"]
    return cycles


def deadlocked_waits(model: Model) -> set[tuple[int, int, int]]:
    """(tid, start, end) of every lock wait in a deadlock cycle: lock-contention leaves
    them to this rule."""
    return {(b.tid, b.start, b.end) for c in _cached_cycles(model) for b in (*c.waits, *c.behind)}


def _where(block: Block) -> str:
    frame = user_frame(block.stack)
    return str(Culprit.of(frame)) if frame is not None else "an unknown line"


def rule_deadlock(model: Model) -> list[Finding]:
    cycles = _cached_cycles(model)
    # the same threads deadlocking at the same lines again and again: one finding
    groups: dict[tuple[tuple[int, str], ...], list[Cycle]] = {}
    for cycle in cycles:
        key = tuple(sorted((b.tid, _where(b)) for b in cycle.waits))
        groups.setdefault(key, []).append(cycle)
    out: list[Finding] = []
    for group in groups.values():
        first = group[0]
        # in the cycle's own order, from its earliest wait
        waits = list(first.waits)
        k = min(range(len(waits)), key=lambda i: waits[i].start)
        waits = waits[k:] + waits[:k]
        names = [thread_name(model, b.tid) for b in waits]
        still = any(b.end >= model.end for c in group for b in c.waits)
        stuck = sum(c.end - c.start for c in group)
        chain = ", while ".join(
            f"{names[i]} waited at {_where(b)} for a lock {names[(i + 1) % len(names)]} held"
            for i, b in enumerate(waits)
        )
        ending = (
            "still waiting when the trace ends"
            if still
            else f"{len(group)} time(s), {fmt_ns(stuck)} stuck in all, until a timeout broke it"
        )
        behind = sorted({thread_name(model, b.tid) for c in group for b in c.behind})
        if behind:
            shown = ", ".join(behind[:4]) + (f" and {len(behind) - 4} more" if len(behind) > 4 else "")
            ending += f"; {len(behind)} other thread(s) stuck behind them on those locks: {shown}"
        culprit = user_frame(waits[0].stack)
        out.append(
            Finding(
                rule="deadlock",
                score=SCORE_STILL_WAITING if still else SCORE_TIMED_OUT,
                title=f"Deadlock: {chain} ({ending})",
                culprit=Culprit.of(culprit),
                evidence={
                    "threads": names,
                    "waits": [
                        {
                            "thread": names[i],
                            "at": _where(b),
                            "held_by": names[(i + 1) % len(names)],
                            "lock": b.obj,
                            "waited_ns": b.end - b.start,
                        }
                        for i, b in enumerate(waits)
                    ],
                    "times": len(group),
                    "stuck_ns": stuck,
                    "still_waiting": still,
                    "stuck_behind": behind,
                    "worst_ns": max(c.end - c.start for c in group),
                    "worst_at_s": seconds_since_start(model, first.start),
                    "worst_waiter": names[0],
                },
                moments=[
                    Moment(
                        seconds_since_start(model, b.start),
                        b.end - b.start,
                        thread_name(model, b.tid),
                        "",
                        f"waited for a lock {thread_name(model, b.holder)} held",
                    )
                    for c in group[:5]
                    for b in c.waits
                ],
                hint=(
                    "Each thread holds one lock and waits for a lock the next one holds, so "
                    "none can go on: the locks are taken in different orders on different "
                    "paths. Take them in one global order everywhere (or guard the data with "
                    "one lock); a timeout on acquire only turns the deadlock into a stall as "
                    "long as the timeout."
                ),
            )
        )
    return out


RULE = Rule("deadlock", RULE_IDS, rule_deadlock)
