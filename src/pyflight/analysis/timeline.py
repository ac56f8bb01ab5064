"""One timeline of a trace: the slices, instants, flows and counters of every thread,
asyncio task and user task that the Perfetto and Chrome exports (and any view that draws
a trace over time) all draw, from the analysis model and only from it.

Nothing here reads raw events: blocks are the model's whole blocks (``Model.blocks``),
cut where the model says the thread was woken (READY, waiting for the GIL, drawn as its
own slice), task waits and scheduling delays are the model's task intervals (asyncio task
ids reused by a later task stay apart), and the rest (GC, steps, callbacks, regions, user
tasks, logs, stalls, counters, samples) the model's lists. So a block, a wait or a delay
has the same start, end and reason in the report and in every export.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import json
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

from pyflight.analysis.cpu import UNTRACED
from pyflight.analysis.frames import LibraryWait, library_wait
from pyflight.analysis.model import State
from pyflight.core.events import BlockReason, Kind, TaskOutcome
from pyflight.format.reader import Frame, Trace

if TYPE_CHECKING:
    from pyflight.analysis.model import Model, TaskTimeline

__all__ = [
    "ArgValue",
    "Flow",
    "Instant",
    "Slice",
    "Timeline",
    "TrackKey",
    "blocks",
    "build_timeline",
    "is_pyflight_thread",
    "nest_lanes",
    "task_waits",
    "thread_name",
]

#: The category of READY slices: woken or runnable, waiting for the GIL (or a CPU)
READY_CATEGORY = "ready"


def is_pyflight_thread(trace: Trace, tid: int) -> bool:
    info = trace.threads.get(tid)
    return info is not None and info.name.startswith("pyflight-")


def thread_name(trace: Trace, tid: int) -> str:
    info = trace.threads.get(tid)
    return info.name if info is not None and info.name else f"thread {tid}"


def _model(source: Model | Trace) -> Model:
    if isinstance(source, Trace):
        from pyflight.analysis.model import build

        return build(source)
    return source


def blocks(source: Model | Trace) -> Iterator[tuple[int, int, int, int, int, int, tuple[Frame, ...]]]:
    """Thread blocks as ``(tid, start, end, reason, obj, waker, stack)``, in start order:
    the model's whole blocks (``Model.blocks``)."""
    for b in _model(source).blocks:
        yield (b.tid, b.start, b.end, b.reason, b.obj, b.waker, b.stack)


def task_waits(source: Model | Trace) -> Iterator[tuple[int, int, int, int, str, tuple[Frame, ...]]]:
    """Asyncio task waits ``(task, start, end, reason, what, stack)``: the model's blocked
    task intervals (from the end of a step, or a TASK_BLOCK's lock or queue, to the wake-up
    or the next step), every task apart even where a later task reused its id."""
    for task in _model(source).all_tasks():
        for i in task.intervals:
            if i.state is State.BLOCKED and i.end > i.start:
                reason = i.reason if i.reason is not None else BlockReason.OTHER
                yield (task.id, i.start, i.end, reason, i.detail, i.stack)


TrackKey = tuple[str, int] | tuple[str, str]
ArgValue = int | str


class Slice(NamedTuple):
    track: TrackKey
    start: int
    end: int
    name: str
    category: str
    args: dict[str, ArgValue]


class Instant(NamedTuple):
    track: TrackKey
    time: int
    name: str
    category: str
    args: dict[str, ArgValue]


class Flow(NamedTuple):
    """An arrow from ``source`` at ``source_time`` to ``target`` at ``target_time``.
    ``target_thread``: the thread where the target end happened (for a task's track, the
    thread its wake-up was seen on; formats whose arrows join threads only use it)."""

    id: int
    source: TrackKey
    source_time: int
    target: TrackKey
    target_time: int
    name: str
    target_thread: int = 0


@dataclasses.dataclass
class Timeline:
    """What both the Perfetto and the Chrome exports draw, from the analysis model."""

    pid: int
    process_name: str
    tracks: dict[TrackKey, str]  # key -> display name; ("thread", tid) keys are threads
    slices: list[Slice]
    instants: list[Instant]
    flows: list[Flow]
    counters: dict[str, list[tuple[int, int]]]
    model: Model | None = None


_REASON_NAMES = {int(r): r.name.lower() for r in BlockReason}
_OUTCOME_NAMES: dict[TaskOutcome | None, str] = {o: o.name.lower() for o in TaskOutcome}
# enum members bound once: reading them (and their names) in loops over millions of
# intervals is slow on Python 3.11
_BLOCKED, _READY, _RUNNING, _GC = State.BLOCKED, State.READY, State.RUNNING, State.GC


def _reason_name(reason: int | None) -> str:
    if reason is None:
        return "other"
    name = _REASON_NAMES.get(reason)
    return name if name is not None else f"reason {reason}"


def _process(trace: Trace) -> tuple[int, str]:
    try:
        pid = int(trace.meta.get("pid", "0"))
    except ValueError:
        pid = 0
    name = "python"
    try:
        argv = json.loads(trace.meta.get("argv", "[]"))
        if isinstance(argv, list) and argv:
            name = "python " + " ".join(str(a) for a in argv)
    except ValueError:
        pass
    return pid, name


def _last_at_or_before(times: list[int] | None, end: int) -> int:
    """The latest of the sorted ``times`` not after ``end``, else ``end``.

    A bisection: a condition variable notified thousands of times between the same two
    threads has thousands of wakes under one key, and scanning them all for every block
    was quadratic (a quarter of a 1M-event export).
    """
    if times:
        i = bisect.bisect_right(times, end)
        if i:
            return times[i - 1]
    return end


def build_timeline(source: Model | Trace) -> Timeline:
    """Slices, instants, flows and counters of every thread, task and user task, drawn
    from the model (built here if a trace is given)."""
    model = _model(source)
    # a slice per state change: millions of small acyclic objects, that the cyclic GC
    # would scan again and again with the model's (as in the reader and the model)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        b = _TimelineBuilder(model)
        b.add_thread_states()
        b.add_gc()
        b.add_loops()
        b.add_tasks()
        b.add_user_tasks()
        b.add_instants()
        return b.finish()
    finally:
        if gc_was_enabled:
            gc.enable()


def _task_name(task: TaskTimeline) -> str:
    return task.name or f"task {task.id}"


class _TimelineBuilder:
    """The state of :func:`build_timeline`: one method per part of the model."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.trace = model.trace
        self.tracks: dict[TrackKey, str] = {}
        self.slices: list[Slice] = []
        self.instants: list[Instant] = []
        self.flows: list[Flow] = []
        self.flow_id = 0
        self._thread_keys: dict[int, TrackKey] = {}
        for tid in self.trace.threads:
            self.thread_track(tid)
        for tid in model.threads:
            self.thread_track(tid)

    def thread_track(self, tid: int) -> TrackKey:
        """tid -> ``("thread", tid)``, naming the track on first use."""
        key = self._thread_keys.get(tid)
        if key is None:
            key = self._thread_keys[tid] = ("thread", tid)
            self.tracks.setdefault(key, thread_name(self.trace, tid))
        return key

    def add_thread_states(self) -> None:
        """Blocks (up to the wake-up), READY stretches, and the flow from each block's
        waker to the blocked thread."""
        model, slices = self.model, self.slices
        woken_at: dict[tuple[int, int], int] = {}  # (tid, block end) -> READY start
        for tid, tl in model.threads.items():
            track = self.thread_track(tid)
            for i in tl.intervals:
                if i.state is _READY:
                    woken_at[(tid, i.end)] = i.start
                    label = i.detail or "waiting for the GIL"
                    slices.append(Slice(track, i.start, i.end, f"ready: {label}", READY_CATEGORY, {}))
                elif i.state is _BLOCKED and i.detail.startswith(UNTRACED):
                    # found from the samples (analysis/cpu.py), not a recorded block
                    args: dict[str, ArgValue] = {"reason": "other", "obj": 0, "detail": i.detail}
                    slices.append(Slice(track, i.start, i.end, "blocked: other", "block", args))
        wakes: dict[tuple[int, int, int], list[int]] = {}  # (waker, target, obj) -> times
        for w in model.wakes:
            if not w.task:
                wakes.setdefault((w.waker, w.target, w.obj), []).append(w.time)
        for times in wakes.values():
            times.sort()  # for _last_at_or_before's bisection
        t_end = model.end
        waits: dict[int, LibraryWait | None] = {}  # id(stack) -> its wait: stacks are shared
        for b in model.blocks:
            rname = _reason_name(b.reason)
            args = {"reason": rname, "obj": b.obj}
            if b.waker:
                args["waker"] = b.waker
            if b.stack:
                key = id(b.stack)
                waited = waits[key] if key in waits else waits.setdefault(key, library_wait(b.stack))
                if waited is not None:  # "waiting for a subprocess (communicate)", not "select"
                    args["detail"] = waited.what
            blocked_until = woken_at.get((b.tid, b.end), b.end)
            if not b.start < blocked_until <= b.end:
                blocked_until = b.end
            track = self.thread_track(b.tid)
            slices.append(Slice(track, b.start, blocked_until, f"blocked: {rname}", "block", args))
            if b.waker and b.waker != b.tid and b.end < t_end:
                src_time = _last_at_or_before(wakes.get((b.waker, b.tid, b.obj)), b.end)
                self.flow_id += 1
                self.flows.append(
                    Flow(self.flow_id, self.thread_track(b.waker), src_time, track, b.end, f"wake ({rname})")
                )

    def add_gc(self) -> None:
        """GC pauses, and collections still running at the end of a thread."""
        slices = self.slices
        paused = set()
        for p in self.model.gc_pauses:
            paused.add((p.tid, p.start))
            args: dict[str, ArgValue] = {
                "generation": p.generation,
                "collected": p.collected,
                "uncollectable": p.uncollectable,
            }
            slices.append(
                Slice(self.thread_track(p.tid), p.start, p.end, f"GC gen {p.generation}", "gc", args)
            )
        for tid, tl in self.model.threads.items():
            last = tl.intervals[-1] if tl.intervals else None
            if last is not None and last.state is _GC and (tid, last.start) not in paused:
                gen = last.obj
                track = self.thread_track(tid)
                slices.append(Slice(track, last.start, last.end, f"GC gen {gen}", "gc", {"generation": gen}))

    def add_loops(self) -> None:
        """Callbacks on their loop's thread (task steps: add_tasks)."""
        for lt in self.model.loops.values():
            track = self.thread_track(lt.tid)
            for i in lt.busy:
                if not i.obj:
                    self.slices.append(
                        Slice(track, i.start, i.end, f"callback: {i.detail}", "asyncio", {"loop": lt.loop})
                    )

    def add_tasks(self) -> None:
        """Each asyncio task: its life, steps, waits, scheduling delays, wake-up flows."""
        model, slices, tracks = self.model, self.slices, self.tracks
        tasks = sorted(model.all_tasks(), key=lambda t: t.created)
        by_id: dict[int, list[TaskTimeline]] = {}
        for task in tasks:
            by_id.setdefault(task.id, []).append(task)
            key: TrackKey = ("task", task.id)
            name = _task_name(task)
            tracks.setdefault(key, f"asyncio {name}")
            label = f"{name} ({task.coro})" if task.coro else name
            end = task.done if task.done is not None else task.end
            args: dict[str, ArgValue] = {}
            if task.done is not None:
                args["outcome"] = _OUTCOME_NAMES.get(task.outcome, "unknown")
                if task.error:
                    args["error"] = task.error
            slices.append(Slice(key, task.created, max(task.created, end), label, "asyncio", args))
            if task.parent and task.created > model.start:
                self.instants.append(
                    Instant(
                        ("task", task.parent), task.created, f"create {name}", "asyncio", {"task": task.id}
                    )
                )
            for step in task.steps:
                slices.append(
                    Slice(
                        self.thread_track(step.thread),
                        step.start,
                        step.end,
                        f"step: {name}",
                        "asyncio",
                        {"task": task.id},
                    )
                )
                slices.append(Slice(key, step.start, step.end, "step", "asyncio", {"thread": step.thread}))
            for i in task.intervals:
                if i.end <= i.start:
                    continue
                if i.state is _BLOCKED:
                    rname = _reason_name(i.reason)
                    slices.append(
                        Slice(
                            key, i.start, i.end, f"await: {i.detail or rname}", "asyncio", {"reason": rname}
                        )
                    )
                elif i.state is _READY:
                    slices.append(Slice(key, i.start, i.end, "ready (scheduling delay)", READY_CATEGORY, {}))
        self._task_wake_flows(by_id)

    def _task_wake_flows(self, by_id: dict[int, list[TaskTimeline]]) -> None:
        """WAKE of a task -> where that task became ready or ran next."""
        starts_of: dict[int, list[int]] = {}
        for w in self.model.wakes:
            if not w.task:
                continue
            task = _task_at(by_id.get(w.task), w.time)
            if task is None:
                continue
            starts = starts_of.get(id(task))
            if starts is None:  # once per task: a task woken a thousand times has many intervals
                starts = starts_of[id(task)] = [i.start for i in task.intervals]
            j = bisect.bisect_left(starts, w.time)
            while (
                j < len(task.intervals)
                and task.intervals[j].state is not _READY
                and task.intervals[j].state is not _RUNNING
            ):
                j += 1
            if j == len(task.intervals):
                continue
            self.flow_id += 1
            self.flows.append(
                Flow(
                    self.flow_id,
                    self.thread_track(w.waker),
                    w.time,
                    ("task", task.id),
                    task.intervals[j].start,
                    "wake (task)",
                    task.thread,
                )
            )

    def add_user_tasks(self) -> None:
        """User tasks (``pyflight.task``) on their own tracks, regions on their threads."""
        end = self.model.end
        for ut in self.model.user_tasks.values():
            name = ut.name or f"user task {ut.id}"
            ukey: TrackKey = ("user_task", ut.id)
            self.tracks.setdefault(ukey, f"task: {name}")
            args: dict[str, ArgValue] = {"id": ut.id, "thread": ut.thread}
            if ut.end is None:
                args["open"] = 1
            finish = ut.end if ut.end is not None else max(ut.start, end)
            self.slices.append(Slice(ukey, ut.start, finish, name, "user_task", args))
        for r in self.model.regions:
            finish = r.end if r.end is not None else max(r.start, end)
            self.slices.append(
                Slice(self.thread_track(r.thread), r.start, finish, r.name, "region", {"user_task": r.task})
            )

    def add_instants(self) -> None:
        """Logs, loop stalls, thread exceptions and the recorder's own notes."""
        instants = self.instants
        for log in self.model.logs:
            instants.append(
                Instant(
                    self.thread_track(log.thread),
                    log.time,
                    f"log: {log.category}",
                    "log",
                    {"message": log.message, "task": log.task},
                )
            )
        for lt in self.model.loops.values():
            for stall in lt.stalls:
                instants.append(
                    Instant(
                        self.thread_track(lt.tid),
                        stall.end,
                        "loop stall",
                        "asyncio",
                        {"task": stall.task, "duration_ns": stall.duration},
                    )
                )
        for e in sorted([*self.model.marks, *self.model.data_loss], key=lambda e: e.time):
            track = self.thread_track(e.thread)
            if e.kind is Kind.THREAD_EXCEPTION:
                instants.append(
                    Instant(
                        track,
                        e.time,
                        f"exception: {e.arg('type', '')}",
                        "thread",
                        {"message": str(e.arg("message", ""))},
                    )
                )
                continue
            args = {k: v if isinstance(v, int | str) else str(v) for k, v in e.args.items()}
            kind = e.kind
            instants.append(
                Instant(
                    track,
                    e.time,
                    kind.name.lower() if isinstance(kind, Kind) else str(kind),
                    "pyflight",
                    args,
                )
            )

    def finish(self) -> Timeline:
        """Name the tracks met only in flows; sort the slices."""
        tracks, slices = self.tracks, self.slices
        for i in self.instants:
            tracks.setdefault(i.track, f"asyncio task {i.track[1]}")
        for f in self.flows:
            tracks.setdefault(f.target, f"asyncio task {f.target[1]}")
        # by (start, -end), stably, as two stable sorts with C key functions: three
        # times faster than one sort with a Python key building a tuple per slice
        slices.sort(key=itemgetter(2), reverse=True)
        slices.sort(key=itemgetter(1))
        pid, pname = _process(self.trace)
        return Timeline(
            pid, pname, tracks, slices, self.instants, self.flows, self.model.counters, self.model
        )


def _task_at(tasks: list[TaskTimeline] | None, t: int) -> TaskTimeline | None:
    """Of the tasks that had one id (reused; sorted by creation), the latest created at
    or before ``t``."""
    if not tasks:
        return None
    if len(tasks) == 1 or t >= tasks[-1].created:
        return tasks[-1] if t >= tasks[-1].created else None
    j = bisect.bisect_right([task.created for task in tasks], t) - 1
    return tasks[j] if j >= 0 else None


def nest_lanes(slices: Iterable[Slice]) -> list[list[tuple[int, bool, Slice]]]:
    """Split one track's slices (sorted by start, longest first) into lanes in which they
    nest properly; each lane as time-ordered ``(time, is_begin, slice)`` events."""
    if isinstance(slices, list) and len(slices) == 1:  # most user tasks' tracks
        (s,) = slices
        return [[(s[1], True, s), (s[2], False, s)]]
    # per lane: its events and the slices open in it at the current time
    lanes: list[tuple[list[tuple[int, bool, Slice]], list[Slice]]] = []
    for s in slices:
        start, end = s[1], s[2]
        for events, stack in lanes:  # the first lane where s nests
            while stack and stack[-1][2] <= start:
                done = stack.pop()
                events.append((done[2], False, done))
            if not stack or end <= stack[-1][2]:
                stack.append(s)
                events.append((start, True, s))
                break
        else:
            lanes.append(([(start, True, s)], [s]))
    for events, stack in lanes:
        while stack:
            done = stack.pop()
            events.append((done[2], False, done))
    return [events for events, _stack in lanes]
