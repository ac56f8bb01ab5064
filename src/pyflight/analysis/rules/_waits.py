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
from pyflight.analysis.queries import Queries, Spans, interval_ns, samples_by_thread, user_threads
from pyflight.analysis.units import MS

#: Who waited: a thread (``ThreadTimeline``) or an asyncio task (``TaskTimeline``).
W = TypeVar("W")


def blocked_waits(model: Model, reason: BlockReason) -> list[tuple[ThreadTimeline, Interval]]:
    """(thread, interval) for every interval of user threads blocked for ``reason``."""
    out = []
    for thread in user_threads(model):
        for iv in thread.intervals:
            if iv.reason == reason and iv.state is State.BLOCKED:
                out.append((thread, iv))
    return out


def wakers(model: Model, reason: BlockReason, objs: set[int]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for wake in model.wakes:
        if wake.reason == reason and wake.obj in objs and wake.waker:
            counts[wake.waker] += 1
    return counts


@dataclass
class Contention(Generic[W]):
    """The waits of threads (or tasks) on one object, when they add up to something."""

    obj: int
    waits: list[tuple[W, Interval]]  # (waiter, blocked interval)
    waiters: dict[int, W]  # by thread or task id
    total: int
    share: float  # of the waiters' lifetime
    worst_waiter: W
    worst: Interval
    where: Frame | None  # the user function they waited in, by wait time


def contentions(
    pairs: Iterable[tuple[W, Interval]],
    owner_id: Callable[[W], int],
    owner_life: Callable[[W], int],
    min_total: int = 10 * MS,
) -> Iterator[Contention[W]]:
    by_obj: dict[int, list[tuple[W, Interval]]] = defaultdict(list)
    for owner, iv in pairs:
        by_obj[iv.obj].append((owner, iv))
    for obj, waits in by_obj.items():
        total = sum(iv.end - iv.start for _, iv in waits)
        if total < min_total:
            continue
        waiters = {owner_id(t): t for t, _ in waits}
        life = sum(owner_life(t) for t in waiters.values()) or 1
        worst_waiter, worst = max(waits, key=lambda tw: tw[1].end - tw[1].start)
        yield Contention(obj, waits, waiters, total, total / life, worst_waiter, worst, wait_site(waits))


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
    by time. Returns (frame, ns running seen by samples, ns blocked)."""
    interval = interval_ns(model)
    weights: dict[Frame, float] = defaultdict(float)
    running = waiting = 0
    merged_of: dict[int, Spans] = {}  # callers often pass one list of spans for every task
    for task, spans in task_spans:
        merged = merged_of.get(id(spans))
        if merged is None:
            merged = merged_of[id(spans)] = Spans(spans)
        for iv in task.intervals:
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
                running += interval
                if frame is not None:
                    weights[frame] += interval
    frame, _ = by_function(weights)
    return frame, running, waiting


def in_function(stack: Sequence[Frame], names: set[str], file_part: str) -> bool:
    return any(f.function in names and file_part in f.file.replace("\\", "/") for f in stack[:6])
