"""Blocked waits of threads and asyncio tasks, their wakers and contention (lock and queue rules)."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from pyflight.analysis.model import State
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Interval, Model, TaskTimeline, ThreadTimeline
from pyflight.analysis.frames import by_function, is_library, user_frame
from pyflight.analysis.queries import (
    Queries,
    Spans,
    gil_busy_share,
    interval_ns,
    samples_by_thread,
    user_threads,
)
from pyflight.analysis.units import MS

#: Who waited: a thread (``ThreadTimeline``) or an asyncio task (``TaskTimeline``).
W = TypeVar("W")

#: Of the sampler's ticks inside threads' lock waits, at least this share found a thread
#: holding the GIL (and at least GIL_BOUND_TICKS ticks): the process was CPU-bound
#: throughout, its threads taking turns on the GIL, and the waits only decided whose
#: turn it was (a lock held across I/O is handed on only when its holder gets the GIL
#: back, so every hold stretches to the other threads' turns).
GIL_BOUND_SHARE = 0.5
GIL_BOUND_TICKS = 5
#: Such waits are not the bottleneck: their finding is told as such, at most this score.
GIL_BOUND_SCORE = 40
GIL_BOUND_HINT = (
    "While these threads waited, others ran: the process was CPU-bound (the GIL busy "
    "through the waits), so the waits cost little throughput and the CPU work is the "
    "limit (see the CPU hotspot): do less of it, or run it in processes "
    "(ProcessPoolExecutor) to use more than one core. "
)


def blocked_waits(model: Model, reason: BlockReason) -> list[tuple[ThreadTimeline, Interval]]:
    """(thread, interval) for every interval of user threads blocked for ``reason``."""
    out = []
    for thread in user_threads(model):
        for iv in thread.intervals:
            if iv.reason == reason and iv.state is State.BLOCKED:
                out.append((thread, iv))
    return out


def semaphore_conditions(model: Model) -> set[int]:
    """The ``obj`` of every Condition that is a ``threading.Semaphore``'s (a wait on it
    with a stack was in ``Semaphore.acquire``; ``BoundedSemaphore`` too): waits on those
    are waits for one of a fixed number of slots, not for an item or a notification."""
    memo = Queries.of(model).memo
    found: set[int] | None = memo.get("semaphore_conditions")
    if found is None:
        found = set()
        for b in model.blocks:
            if (
                b.reason is BlockReason.CONDITION
                and b.stack
                and b.stack[0].function == "Semaphore.acquire"
                and b.stack[0].file.endswith("threading.py")
            ):
                found.add(b.obj)
        memo["semaphore_conditions"] = found
    return found


def wakers(model: Model, reason: BlockReason, objs: set[int]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for wake in model.wakes:
        if wake.reason == reason and wake.obj in objs and wake.waker:
            counts[wake.waker] += 1
    return counts


@dataclass
class Contention(Generic[W]):
    """The waits of threads (or tasks) on one object (or, grouped by site, on the objects
    waited for at one function), when they add up to something."""

    obj: int  # the object waited for longest
    waits: list[tuple[W, Interval]]  # (waiter, blocked interval)
    waiters: dict[int, W]  # by thread or task id
    total: int
    share: float  # of the waiters' lifetime
    worst_waiter: W
    worst: Interval
    where: Frame | None  # the user function they waited in, by wait time
    objs: int = 1  # how many objects the waits were on


def contentions(
    pairs: Iterable[tuple[W, Interval]],
    owner_id: Callable[[W], int],
    owner_life: Callable[[W], int],
    min_total: int = 10 * MS,
    by_site: bool = False,
) -> Iterator[Contention[W]]:
    """Waits grouped by the object waited on; with ``by_site``, the objects whose waits
    were at one user function are one group: a lock per request or per record (gRPC's
    per-call condition, ``with account.lock:``) waited at one line is one story there,
    not one finding per object."""
    by_obj: dict[int, list[tuple[W, Interval]]] = defaultdict(list)
    for owner, iv in pairs:
        by_obj[iv.obj].append((owner, iv))
    groups: dict[object, list[int]] = defaultdict(list)
    for obj, waits in by_obj.items():
        site = wait_site(waits) if by_site else None
        groups[(site.function, site.file) if site is not None else ("obj", obj)].append(obj)
    for objs in groups.values():
        waits = [w for obj in objs for w in by_obj[obj]]
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < min_total:
            continue
        waiters = {owner_id(t): t for t, _ in waits}
        life = sum(owner_life(t) for t in waiters.values()) or 1
        worst_waiter, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        main = max(objs, key=lambda o: sum(iv.end - iv.start for _, iv in by_obj[o]))
        yield Contention(
            main, waits, waiters, total, total / life, worst_waiter, worst, wait_site(waits), len(objs)
        )


def task_blocked_waits(model: Model, reason: BlockReason) -> list[tuple[TaskTimeline, Interval]]:
    """(task, interval) for every interval of asyncio tasks blocked for ``reason`` (recorded
    by TASK_BLOCK: asyncio locks, semaphores, events, conditions, queues)."""
    by_reason: dict[BlockReason, list[tuple[TaskTimeline, Interval]]] | None = Queries.of(model).memo.get(
        "task_blocked_waits"
    )
    if by_reason is None:  # one pass over every task interval, for every rule that asks
        by_reason = defaultdict(list)
        for task in model.all_tasks():
            for iv in task.intervals:
                if iv.state is State.BLOCKED and iv.reason is not None:
                    by_reason[iv.reason].append((task, iv))
        Queries.of(model).memo["task_blocked_waits"] = by_reason
    return by_reason.get(reason, [])


def task_life(task: TaskTimeline) -> int:
    return max(0, int(task.end) - int(task.created))


def task_label_of(task: TaskTimeline) -> str:
    return task.coro or task.name or str(task.id)


def wait_site(waits: Iterable[tuple[object, Interval]]) -> Frame | None:
    """The user function the waits happened in (by total wait time)."""
    weights: dict[Frame, float] = defaultdict(float)
    for _, iv in waits:
        frame = user_frame(iv.stack)
        if frame is not None:
            weights[frame] += iv.end - iv.start
    return by_function(weights)[0]


def overlap_ns(spans: Spans, start: int, end: int) -> int:
    """How much of [start, end] lies inside ``spans``."""
    total = 0
    i = max(0, bisect.bisect_right(spans.starts, start) - 1)
    while i < len(spans.starts) and spans.starts[i] < end:
        total += max(0, min(end, spans.ends[i]) - max(start, spans.starts[i]))
        i += 1
    return total


def task_activity(
    model: Model, task_spans: Iterable[tuple[TaskTimeline, list[tuple[int, int]]]], exclude_obj: int = 0
) -> tuple[Frame | None, int, int]:
    """Where each task was during its spans: the user frame of its samples (running) and
    of its blocked intervals that have a stack (not those on ``exclude_obj``), weighted
    by time. Returns (frame, ns running: its steps, ns blocked).

    The running time is its steps' (exact), not its samples' count: the sampler seldom
    finds a task running that holds the GIL for whole steps (it gets the GIL between
    them), so a consumer parsing on the loop for 1.7 s was seen running ~0.1 s, and on a
    loaded machine less than its few ms of awaiting: "waiting", not "busy"."""
    interval = interval_ns(model)
    weights: dict[Frame, float] = defaultdict(float)
    running = waiting = 0
    merged_of: dict[int, Spans] = {}  # callers often pass one list of spans for every task
    for task, spans in task_spans:
        merged = merged_of.get(id(spans))
        if merged is None:
            merged = merged_of[id(spans)] = Spans(spans)
        for iv in task.intervals:
            if iv.state is State.RUNNING:
                running += overlap_ns(merged, iv.start, iv.end)
                continue
            if iv.state is not State.BLOCKED or (exclude_obj and iv.obj == exclude_obj):
                continue
            inside = overlap_ns(merged, iv.start, iv.end)
            if inside <= 0:
                continue
            waiting += inside
            frame = user_frame(iv.stack)
            if frame is not None and not is_library(frame):  # not just asyncio.sleep
                weights[frame] += inside
        for sample in samples_by_thread(model).get(task.thread, ()):
            if sample.task == task.id and sample.time in merged:
                frame = user_frame(sample.stack)
                if frame is not None:
                    weights[frame] += interval
    frame, _ = by_function(weights)
    return frame, running, waiting


def in_function(stack: Sequence[Frame], names: set[str], file_part: str) -> bool:
    return any(f.function in names and file_part in f.file.replace("\\", "/") for f in stack[:6])


#: (function, file part) of thread pools' idle loops: a worker waiting there (through
#: nothing but a ``get`` or ``wait``) waits for its next job (concurrent.futures, so gunicorn's
#: gthread; anyio's to_thread: FastAPI's sync endpoints; waitress's task dispatcher): an
#: idle pool, not a thread held up.
POOL_IDLE_LOOPS = (
    ("_worker", "concurrent/futures/thread.py"),
    ("WorkerThread.run", "anyio/"),
    ("ThreadedTaskDispatcher.handler_thread", "waitress/task.py"),
)


def waits_for_next_job(stack: Sequence[Frame]) -> bool:
    """The wait is a pool worker's between jobs: a pool's idle loop is the wait's
    innermost frame, or called only a ``get`` or ``wait`` (``Queue.get``,
    ``Condition.wait``) to wait there (a job's own wait has the job's frames inside)."""
    for frame in stack[:4]:
        file = frame.file.replace("\\", "/")
        if any(frame.function == name and part in file for name, part in POOL_IDLE_LOOPS):
            return True
        if frame.function.rpartition(".")[2] not in ("get", "wait"):
            return False
    return False


def busy_gil(found: tuple[float, int] | None) -> float | None:
    """The share of a ``gil_busy_share`` answer if it says the GIL was busy enough to call
    the threads CPU-bound (GIL_BOUND_SHARE over at least GIL_BOUND_TICKS ticks), else None."""
    if found is None or found[1] < GIL_BOUND_TICKS or found[0] < GIL_BOUND_SHARE:
        return None
    return found[0]


def gil_bound(model: Model, waits: Sequence[tuple[ThreadTimeline, Interval]]) -> float | None:
    """The GIL's busy share through ``waits`` (threads' lock waits) if they were CPU-bound
    threads taking turns, else None (also without natively read stacks): the GIL was busy
    (GIL_BOUND_SHARE) and the lock's holders were not in a traced wait (a sleep, a socket,
    a condition) through most of the waits they caused: a holder asleep under the lock
    holds the others up whatever another thread does with the GIL meanwhile."""
    share = busy_gil(gil_busy_share(model, [(iv.start, iv.end) for _, iv in waits]))
    if share is None:
        return None
    return share if _holders_blocked_share(model, waits) < HOLDERS_BLOCKED_SHARE else None


#: Lock holders blocked (traced) through this share of the waits they caused: the holds
#: were their own waits, not GIL hand-offs.
HOLDERS_BLOCKED_SHARE = 0.5


def _holders_blocked_share(model: Model, waits: Sequence[tuple[ThreadTimeline, Interval]]) -> float:
    """Of the time in ``waits`` whose releaser is known, the share the releaser (the
    holder) spent blocked in a traced call (not its own wait for that lock)."""
    ends: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # waiter -> (start, end, waker)
    for block in model.blocks:
        if block.reason == BlockReason.LOCK and block.waker:
            ends[block.tid].append((block.start, block.end, block.waker))
    for found in ends.values():
        found.sort()
    waited = blocked = 0
    for thread, iv in waits:
        found = ends.get(thread.tid, [])
        j = bisect.bisect_right(found, (iv.start, 1 << 62, 0)) - 1
        if j < 0 or found[j][1] < iv.end:
            continue
        holder = model.threads.get(found[j][2])
        if holder is None:
            continue
        waited += iv.end - iv.start
        memo = Queries.of(model).memo
        starts = memo.get(f"starts:{holder.tid}")
        if starts is None:
            starts = memo[f"starts:{holder.tid}"] = [h.start for h in holder.intervals]
        k = max(0, bisect.bisect_right(starts, iv.start) - 1)
        while k < len(holder.intervals) and holder.intervals[k].start < iv.end:
            h = holder.intervals[k]
            # its own wait for this lock (before it got it) is not a hold
            if h.state is State.BLOCKED and not (h.reason == BlockReason.LOCK and h.obj == iv.obj):
                blocked += max(0, min(h.end, iv.end) - max(h.start, iv.start))
            k += 1
    return blocked / waited if waited else 0.0
