"""The analysis model: per-thread, per-task and per-loop timelines built from a Trace.

One pass over the (time-sorted) events keeps a small state machine per thread, task and
loop; intervals are only created at state changes, so the cost is one dict lookup and a
few comparisons per event. Traces are windows cut out of a longer run and may be damaged:
an end without its begin means "since before the window", a begin without its end means
"until the end of the window", and nothing here raises on odd input.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import itertools
import os
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pyflight.core.events import BlockReason, Kind, TaskOutcome, ThreadState
from pyflight.format.reader import Event, Frame, Trace

__all__ = [
    "GCPause",
    "Interval",
    "Log",
    "LoopTimeline",
    "Model",
    "PoolJob",
    "Region",
    "Sample",
    "Stall",
    "State",
    "Step",
    "TaskTimeline",
    "ThreadPool",
    "ThreadTimeline",
    "UserTask",
    "Wake",
    "build",
]


class State(enum.Enum):
    """What a thread or task is doing during an interval."""

    RUNNING = "running"
    READY = "ready"
    BLOCKED = "blocked"
    GC = "gc"
    IDLE = "idle"
    UNKNOWN = "unknown"


Stack = tuple[Frame, ...]


class Interval(NamedTuple):
    """``[start, end)`` in one state, with what the event that began it said."""

    start: int
    end: int
    state: State
    reason: BlockReason | None = None
    obj: int = 0
    stack: Stack = ()
    detail: str = ""

    @property
    def duration(self) -> int:
        return self.end - self.start


class Step(NamedTuple):
    start: int
    end: int
    thread: int


class Stall(NamedTuple):
    """A step or callback that held its loop longer than the stall threshold."""

    start: int
    end: int
    task: int
    duration: int
    stacks: list[Stack]


class GCPause(NamedTuple):
    start: int
    end: int
    generation: int
    collected: int
    uncollectable: int
    tid: int

    @property
    def duration(self) -> int:
        return self.end - self.start


class Sample(NamedTuple):
    time: int
    tid: int
    task: int
    stack: Stack
    os_state: ThreadState
    state: State
    reason: BlockReason | None
    #: CPU ns the thread used during the ``span`` ns before the sample (span 0: unknown)
    cpu: int = 0
    span: int = 0


class Wake(NamedTuple):
    time: int
    waker: int
    target: int
    task: int
    reason: BlockReason | None
    obj: int


class Log(NamedTuple):
    time: int
    thread: int
    task: int
    category: str
    message: str


@dataclasses.dataclass
class Region:
    """A ``pyflight.region``; ``end`` None if still open; ``clipped``: began before the window."""

    name: str
    start: int
    end: int | None
    thread: int
    task: int
    clipped: bool = False

    @property
    def duration(self) -> int | None:
        return None if self.end is None else self.end - self.start


def _time_in(intervals: list[Interval], state: State, reason: BlockReason | None) -> int:
    if reason is None:
        return sum(i.end - i.start for i in intervals if i.state is state)
    return sum(i.end - i.start for i in intervals if i.state is state and i.reason == reason)


@dataclasses.dataclass
class ThreadTimeline:
    tid: int
    name: str
    start: int
    end: int
    intervals: list[Interval]
    is_loop_thread: bool = False
    is_pyflight: bool = False

    def time_in(self, state: State, reason: BlockReason | None = None) -> int:
        return _time_in(self.intervals, state, reason)


@dataclasses.dataclass
class TaskTimeline:
    id: int
    name: str
    coro: str
    parent: int
    thread: int
    created: int
    done: int | None
    outcome: TaskOutcome | None
    error: str
    steps: list[Step]
    intervals: list[Interval]
    scheduling_delays: list[int]
    end: int = 0  # end of the timeline: done, or the end of the trace

    def time_in(self, state: State, reason: BlockReason | None = None) -> int:
        return _time_in(self.intervals, state, reason)


@dataclasses.dataclass
class LoopTimeline:
    loop: int
    tid: int
    busy: list[Interval]
    idle: list[Interval]
    stalls: list[Stall]
    lag: list[tuple[int, int]]


@dataclasses.dataclass
class UserTask:
    """A ``pyflight.task``; ``end`` None if still open; ``clipped``: began before the window."""

    id: int
    name: str
    parent: int
    start: int
    end: int | None
    thread: int
    regions: list[Region]
    logs: list[tuple[int, str, str]]
    clipped: bool = False

    @property
    def duration(self) -> int | None:
        return None if self.end is None else self.end - self.start


@dataclasses.dataclass
class PoolJob:
    """One ``ThreadPoolExecutor`` job (POOL_JOB_QUEUED / BEGIN / END).

    ``queued`` is None if it was queued before the window; ``begin`` None if it did not
    start in the window (``state`` says why); ``end`` None if it still ran at the end.
    ``clipped``: it ran since before the window (``begin`` is the trace start).
    ``state``: ``"done"``, ``"running"`` (at the end of the trace), ``"queued"`` (still
    waiting at the end), ``"cancelled"`` (never started although a job queued after it
    on the same pool did: the pool's queue is FIFO, so it was dropped) or ``"refused"``
    (the pool refused the submit: END without BEGIN).
    """

    pool: int
    job: int
    function: str
    file: str
    line: int
    task: int  # the submitter's pyflight task id, 0 = none
    submitter: int  # tid that submitted it, 0 if unknown
    worker: int  # tid that ran it, 0 if it did not run in the window
    queued: int | None
    begin: int | None
    end: int | None
    state: str = "queued"
    clipped: bool = False

    @property
    def wait(self) -> int | None:
        """Time in the pool's queue (``begin - queued``), None if not known."""
        if self.queued is None or self.begin is None or self.clipped:
            return None
        return self.begin - self.queued

    @property
    def run(self) -> int | None:
        """Time a worker spent on it (``end - begin``), None if not known."""
        if self.begin is None or self.end is None:
            return None
        return self.end - self.begin


@dataclasses.dataclass
class ThreadPool:
    """A ``ThreadPoolExecutor`` seen through its jobs (the executors source).

    ``pool`` is ``id(executor)``; ``name`` the worker threads' name prefix
    (``thread_name_prefix``); ``max_workers`` from POOL_JOB_QUEUED (else the number of
    workers seen); ``jobs`` by job number; ``busy`` and ``waiting`` are step functions,
    ``[(time, count from then on)]`` starting at the trace start: workers running a job,
    and jobs queued but not started (cancelled and refused jobs not counted).
    """

    pool: int
    name: str
    max_workers: int
    workers: list[int]
    jobs: list[PoolJob]
    busy: list[tuple[int, int]]
    waiting: list[tuple[int, int]]

    def all_busy(self, end: int) -> list[tuple[int, int]]:
        """``[(start, end)]`` spans in which every worker ran a job (until ``end``)."""
        return _spans_at_least(self.busy, max(1, self.max_workers), end)

    def backlog(self, end: int) -> list[tuple[int, int]]:
        """``[(start, end)]`` spans in which every worker was busy and jobs waited."""
        out: list[tuple[int, int]] = []
        waits = _spans_at_least(self.waiting, 1, end)
        for a, b in self.all_busy(end):
            for c, d in waits:
                lo, hi = max(a, c), min(b, d)
                if hi > lo:
                    out.append((lo, hi))
        return out


def _spans_at_least(steps: list[tuple[int, int]], level: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    began: int | None = None
    for t, count in steps:
        if count >= level and began is None:
            began = t
        elif count < level and began is not None:
            if t > began:
                out.append((began, t))
            began = None
    if began is not None and end > began:
        out.append((began, end))
    return out


def _steps(changes: list[tuple[int, int]], start: int) -> list[tuple[int, int]]:
    """``[(time, +1/-1)]`` -> ``[(time, level)]`` from ``start``, one entry per time."""
    out = [(start, 0)]
    level = 0
    for t, delta in sorted(changes):
        level = max(0, level + delta)
        if out[-1][0] == t:
            out[-1] = (t, level)
        else:
            out.append((t, level))
    return out


@dataclasses.dataclass
class Model:
    trace: Trace
    start: int
    end: int
    threads: dict[int, ThreadTimeline]
    tasks: dict[int, TaskTimeline]
    finished_tasks: list[TaskTimeline]
    loops: dict[int, LoopTimeline]
    user_tasks: dict[int, UserTask]
    regions: list[Region]
    gc_pauses: list[GCPause]
    samples: list[Sample]
    wakes: list[Wake]
    counters: dict[str, list[tuple[int, int]]]
    logs: list[Log]
    data_loss: list[Event]
    sampling_interval_ns: int
    pools: dict[int, ThreadPool] = dataclasses.field(default_factory=dict)

    @property
    def duration(self) -> int:
        return self.end - self.start

    def all_tasks(self) -> list[TaskTimeline]:
        """Every asyncio task, including those whose id was reused by a later task."""
        return self.finished_tasks + list(self.tasks.values())


# --------------------------------------------------------------------------------------
# building

_REASONS: dict[int, BlockReason] = {int(r): r for r in BlockReason}
_OS_STATES: dict[int, ThreadState] = {int(s): s for s in ThreadState}
_OUTCOMES: dict[int, TaskOutcome] = {int(o): o for o in TaskOutcome}

RUNNING, READY, BLOCKED, GC, IDLE, UNKNOWN = (
    State.RUNNING,
    State.READY,
    State.BLOCKED,
    State.GC,
    State.IDLE,
    State.UNKNOWN,
)
_AWAIT = BlockReason.AWAIT
_OTHER = BlockReason.OTHER


class _Thread:
    """Per-thread state machine. ``stack`` holds nested states: [state, reason, obj,
    stack, detail, begin_time, woken]; the base state is UNKNOWN until the thread's
    first own event, RUNNING after it."""

    __slots__ = (
        "base",
        "busy",
        "early",
        "end_evt",
        "first",
        "info_last",
        "last",
        "loop_marks",
        "open_cb",
        "open_step",
        "pending_gc",
        "seg_start",
        "segs",
        "stack",
        "start_evt",
        "tid",
        "touched",
    )

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.segs: list[list[Any]] = []  # [start|None, end, state, reason, obj, stack, detail]
        self.seg_start: int | None = None  # None: the thread's (yet unknown) start
        self.base = UNKNOWN
        self.stack: list[list[Any]] = []
        self.touched = False  # had its first own event (the UNKNOWN prefix is closed)
        self.first = -1  # first / last sign of life (own event or sample), -1 none
        self.last = -1
        self.info_last = -1
        self.start_evt = -1
        self.end_evt = -1
        self.loop_marks: list[tuple[int, int]] = []  # (time, loop id) changes
        self.busy: list[tuple[int, int, int, str]] = []  # (start, end, task id, callback name)
        self.open_cb: tuple[int, str] | None = None
        self.open_step: tuple[int, int] | None = None  # (start, task id)
        self.pending_gc: list[list[Any]] = []
        self.early = False  # an end without its begin came first: alive before the window

    def current(self) -> list[Any] | None:
        return self.stack[-1] if self.stack else None

    def close(self, t: int) -> None:
        """End the current segment at ``t`` (the next one starts there)."""
        start = self.seg_start
        if start is None or t > start:
            top = self.stack[-1] if self.stack else None
            if top is None:
                self.segs.append([start, t, self.base, None, 0, (), ""])
            else:
                self.segs.append([start, t, top[0], top[1], top[2], top[3], top[4]])
            self.seg_start = t

    def touch(self, t: int) -> None:
        """First own event: the thread is known to be alive and running from here."""
        self.touched = True
        if not self.stack:
            self.close(t)
        self.base = RUNNING
        if self.seg_start is None:
            self.seg_start = t

    def push(self, t: int, entry: list[Any]) -> None:
        self.close(t)
        if self.seg_start is None:
            self.seg_start = t
        self.stack.append(entry)

    def pop(self, t: int, state: State, reason: Any) -> list[Any] | None:
        """Pop the innermost entry matching (state, reason); None if there is none."""
        stack = self.stack
        for i in range(len(stack) - 1, -1, -1):
            entry = stack[i]
            if entry[0] is state and (reason is None or entry[1] == reason):
                self.close(t)
                if self.seg_start is None:
                    self.seg_start = t
                entry = stack[i]
                del stack[i:]
                return entry
        return None

    def retro(self, t: int, state: State, reason: Any, obj: int) -> bool:
        """An end without its begin: if nothing is known of the thread before ``t``, it
        was in ``state`` since the start of its timeline. True if applied."""
        if self.segs or self.stack or self.seg_start is not None:
            return False
        self.segs.append([None, t, state, reason, obj, (), ""])
        self.seg_start = t
        self.base = RUNNING
        self.touched = True
        self.early = True
        return True


class _Task:
    """Per-task state machine; ``open``: [start, state, reason, obj, stack, detail, post_step]."""

    __slots__ = (
        "coro",
        "created",
        "delays",
        "done",
        "error",
        "first",
        "id",
        "intervals",
        "name",
        "open",
        "outcome",
        "parent",
        "pending",
        "step_open",
        "steps",
        "stop",
        "thread",
    )

    def __init__(
        self, task_id: int, t: int, state: State, name: str, coro: str, parent: int, thread: int
    ) -> None:
        self.id = task_id
        self.first = t
        self.created = t
        self.name = name
        self.coro = coro
        self.parent = parent
        self.thread = thread
        self.done: int | None = None
        self.outcome: TaskOutcome | None = None
        self.error = ""
        self.steps: list[Step] = []
        self.intervals: list[Interval] = []
        self.delays: list[int] = []
        self.open: list[Any] = [t, state, None, 0, (), "", False]
        self.step_open: int | None = None
        self.stop: int | None = None  # its id was reused by a new task at this time
        # TASK_BLOCK seen during the open step: (reason, obj, stack, what), applied at its end
        self.pending: tuple[BlockReason, int, Stack, str] | None = None

    def switch(
        self,
        t: int,
        state: State,
        reason: BlockReason | None = None,
        stack: Stack = (),
        detail: str = "",
        obj: int = 0,
    ) -> None:
        o = self.open
        if t > o[0]:
            self.intervals.append(Interval(o[0], t, o[1], o[2], o[3], o[4], o[5]))
            if o[1] is READY and state is RUNNING:
                self.delays.append(t - o[0])
        o[0], o[1], o[2], o[3], o[4], o[5], o[6] = t, state, reason, obj, stack, detail, False


#: Frames of pyflight's own hooks (a wrapper around Condition.wait, time.sleep, ...)
#: sit innermost in stacks sampled while the program blocks: they are not the program's.
_OWN_FRAME_DIRS = tuple(f"{sep}pyflight{sep}{d}{sep}" for sep in ("/", "\\") for d in ("sources", "triggers"))
#: Outermost frames that only start the program: ``pyflight run``'s own (the console
#: script, cli.py, commands/run.py, run.py, __main__.py) and runpy's. User code starts below them.
_LAUNCHER_FILES = tuple(
    f"{sep}{path}"
    for sep in ("/", "\\")
    for path in (
        f"pyflight{sep}cli.py",
        f"pyflight{sep}commands{sep}__init__.py",
        f"pyflight{sep}commands{sep}run.py",
        f"pyflight{sep}run.py",
        f"pyflight{sep}__main__.py",
        f"bin{sep}pyflight",
        "runpy.py",
    )
)
_own_stripped: dict[int, tuple[Stack, Stack]] = {}


#: pyflight's package directory here (a trace read elsewhere falls back on _OWN_FRAME_DIRS).
_OWN_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_launcher(file: str) -> bool:
    return file.endswith(_LAUNCHER_FILES) or file == "<frozen runpy>"


#: Shipped with pyflight but the program's code when it runs (``pyflight demo``).
_PROGRAM_FILES = (f"{_OWN_PACKAGE}demo.py",)


def _is_own(file: str) -> bool:
    if file.startswith(_OWN_PACKAGE):
        return not file.startswith(_PROGRAM_FILES)
    return _is_launcher(file) or any(d in file for d in _OWN_FRAME_DIRS)


def _frame_stack(value: Any) -> Stack:
    """The program's part of a stack (cached per stack object): without the launcher's
    outermost frames (``pyflight run``, runpy) and pyflight's own wrapper frames (its
    hooks, its thread bootstrap). A stack of pyflight's own work on a program thread
    (set-up, the write at exit) becomes empty: none of it is the program's."""
    if not isinstance(value, tuple) or not value:
        return ()
    cached = _own_stripped.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    end = len(value)
    while end > 0 and _is_launcher(value[end - 1][1]):
        end -= 1
    stripped: Stack
    if end < len(value) and (end == 0 or _is_own(value[end - 1][1])):
        stripped = ()  # called by the launcher, not through the program's code
    else:
        kept = tuple(f for f in value[:end] if not _is_own(f[1]))
        stripped = kept if kept else value[:end]  # pyflight's own threads keep theirs
        if len(stripped) == len(value):
            stripped = value
    _own_stripped[id(value)] = (value, stripped)
    return stripped


def build(trace: Trace, progress: Callable[[float], None] | None = None) -> Model:
    """Derive the model of ``trace`` (see docs/analysis.md). Never raises on odd traces."""
    # Millions of small acyclic objects: the cyclic GC would rescan the trace's events
    # again and again (as in the reader), so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        model = _build(trace, progress)
        from pyflight.analysis.cpu import mark_gil_waits

        mark_gil_waits(model)
        return model
    finally:
        _own_stripped.clear()  # holds the trace's stacks only for the build
        if gc_was_enabled:
            gc.enable()


def _build(trace: Trace, progress: Callable[[float], None] | None) -> Model:
    events = trace.events
    n = len(events)
    if trace.generations:
        start, end = trace.start_ns, trace.end_ns
        if n:
            start = min(start, events[0][1])
            end = max(end, events[-1][1])
    elif n:
        start, end = events[0][1], events[-1][1]
    else:
        start = end = 0
    if end < start:
        end = start
    last_gen_start = trace.generations[-1].start_ns if trace.generations else start

    threads: dict[int, _Thread] = {}
    tasks: dict[int, _Task] = {}
    finished: list[_Task] = []
    samples: list[Sample] = []
    wakes: list[Wake] = []
    counters: dict[str, list[tuple[int, int]]] = {}
    logs: list[Log] = []
    stall_events: list[tuple[int, int, int, int, Stack]] = []  # time, loop, task, duration, stack
    idle_by_loop: dict[int, list[Interval]] = {}
    idle_open: dict[int, int] = {}  # loop -> begin time
    idle_ends: dict[int, list[int]] = {}  # loop thread -> times its loop woke from idle
    loop_tid: dict[int, int] = {}
    gc_pauses: list[GCPause] = []
    pending_gc: list[tuple[_Thread, int, int, int, int]] = []  # retro pauses: thread, end, gen, coll, unc
    utasks: dict[int, UserTask] = {}
    regions: list[Region] = []
    open_regions: dict[tuple[int, int], list[Region]] = {}  # (thread, task) -> open regions
    site_stacks: dict[int, Stack] | None = None  # TASK_BLOCK site -> a stack recorded for it
    pool_events: list[Any] = []  # POOL_JOB_QUEUED / BEGIN / END, in time order

    K_SAMPLE = Kind.SAMPLE
    K_STEP_BEGIN = Kind.TASK_STEP_BEGIN
    K_STEP_END = Kind.TASK_STEP_END
    K_WAIT = Kind.TASK_WAIT
    K_TASK_BLOCK = Kind.TASK_BLOCK
    K_CB_BEGIN = Kind.CALLBACK_BEGIN
    K_CB_END = Kind.CALLBACK_END
    K_IDLE_BEGIN = Kind.LOOP_IDLE_BEGIN
    K_IDLE_END = Kind.LOOP_IDLE_END
    K_BLOCK_BEGIN = Kind.BLOCK_BEGIN
    K_BLOCK_END = Kind.BLOCK_END
    K_WAKE = Kind.WAKE
    K_GC_BEGIN = Kind.GC_BEGIN
    K_GC_END = Kind.GC_END
    K_COUNTER = Kind.COUNTER
    K_LOG = Kind.LOG
    K_LOOP_STALL = Kind.LOOP_STALL
    K_REGION_BEGIN = Kind.REGION_BEGIN
    K_REGION_END = Kind.REGION_END
    K_TASK_CREATE = Kind.TASK_CREATE
    K_TASK_DONE = Kind.TASK_DONE
    K_TASK_INFO = Kind.TASK_INFO
    K_TASK_READY = Kind.TASK_READY
    K_THREAD_END = Kind.THREAD_END
    K_THREAD_INFO = Kind.THREAD_INFO
    K_THREAD_NAME = Kind.THREAD_NAME
    K_THREAD_START = Kind.THREAD_START
    K_USER_TASK_BEGIN = Kind.USER_TASK_BEGIN
    K_USER_TASK_END = Kind.USER_TASK_END
    K_USER_TASK_INFO = Kind.USER_TASK_INFO
    K_POOL_QUEUED = Kind.POOL_JOB_QUEUED
    K_POOL_BEGIN = Kind.POOL_JOB_BEGIN
    K_POOL_END = Kind.POOL_JOB_END

    def thread_of(tid: int) -> _Thread:
        th = threads.get(tid)
        if th is None:
            th = threads[tid] = _Thread(tid)
        return th

    def task_of(task_id: int, t: int, tid: int) -> _Task:
        """The live task ``task_id``; a new one if unknown or done (its create was lost)."""
        tk = tasks.get(task_id)
        if tk is None or tk.done is not None:
            if tk is not None:
                finished.append(tk)
            info = trace.tasks.get(task_id)
            if info is not None:
                tk = _Task(task_id, t, UNKNOWN, info.name, info.coro, info.parent, tid)
            else:
                tk = _Task(task_id, t, UNKNOWN, "", "", 0, tid)
            tasks[task_id] = tk
        return tk

    chunk = 1 << 16
    last_tid = -1  # events come in runs from one thread: skip the dict lookup then
    last_th = _Thread(-1)
    for lo in range(0, n, chunk):
        if progress is not None and lo:
            try:
                progress(lo / n)
            except Exception:
                pass
        for e in events[lo : lo + chunk]:
            try:
                kind = e[0]
                t = e[1]
                tid = e[2]
                if tid != last_tid:
                    th = threads.get(tid)
                    if th is None:
                        th = threads[tid] = _Thread(tid)
                    last_tid, last_th = tid, th
                else:
                    th = last_th
                if th.first < 0:
                    th.first = t
                th.last = t
                if kind is K_SAMPLE:
                    if not th.touched:
                        th.touch(t)
                    target_tid = e[3]
                    target = threads.get(target_tid)
                    if target is None:
                        target = threads[target_tid] = _Thread(target_tid)
                    if target.first < 0:
                        target.first = t
                    target.last = t
                    top = target.stack[-1] if target.stack else None
                    if top is None:
                        samples.append(
                            Sample(
                                t,
                                target_tid,
                                e[4],
                                _frame_stack(e[5]),
                                _OS_STATES.get(e[6], ThreadState.UNKNOWN),
                                target.base,
                                None,
                                e[7] if len(e) > 8 else 0,
                                e[8] if len(e) > 8 else 0,
                            )
                        )
                    else:
                        samples.append(
                            Sample(
                                t,
                                target_tid,
                                e[4],
                                _frame_stack(e[5]),
                                _OS_STATES.get(e[6], ThreadState.UNKNOWN),
                                top[0],
                                top[1],
                                e[7] if len(e) > 8 else 0,
                                e[8] if len(e) > 8 else 0,
                            )
                        )
                    continue
                if (
                    not th.touched
                    and kind is not K_BLOCK_END
                    and kind is not K_GC_END
                    and kind is not K_IDLE_END
                ):
                    th.touch(t)
                if kind is K_STEP_BEGIN:
                    task_id = e[3]
                    tk = tasks.get(task_id)
                    if tk is None or tk.done is not None:
                        tk = task_of(task_id, t, tid)
                    if not tk.steps and tk.step_open is None:
                        tk.thread = tid
                    tk.switch(t, RUNNING, detail="")
                    tk.pending = None
                    tk.step_open = t
                    th.open_step = (t, task_id)
                elif kind is K_STEP_END:
                    task_id = e[3]
                    tk = tasks.get(task_id)
                    if tk is None or tk.done is not None:
                        tk = task_of(task_id, t, tid)
                    if tk.step_open is None:
                        # begun before the window (or the begin was lost): running since
                        # the task's first sign of life if nothing else is known
                        if not tk.intervals and tk.open[1] is UNKNOWN:
                            if tk.open[0] == t:  # its first sign of life: began before the window
                                tk.open[0] = tk.created = tk.first = start
                            tk.open[1] = RUNNING
                            tk.steps.append(Step(tk.open[0], t, tid))
                            if th.open_step is None:
                                th.busy.append((tk.open[0], t, task_id, ""))
                    else:
                        tk.steps.append(Step(tk.step_open, t, tid))
                    tk.step_open = None
                    pending = tk.pending
                    if pending is None:
                        tk.switch(t, BLOCKED, _AWAIT)
                        tk.open[6] = True  # post-step: TASK_WAIT / TASK_DONE refine it
                    else:  # blocked on an asyncio lock/queue/...: TASK_WAIT cannot say better
                        tk.pending = None
                        tk.switch(t, BLOCKED, pending[0], pending[2], pending[3], pending[1])
                    step = th.open_step
                    if step is not None and step[1] == task_id:
                        th.busy.append((step[0], t, task_id, ""))
                        th.open_step = None
                elif kind is K_WAIT:
                    tk = tasks.get(e[3]) or task_of(e[3], t, tid)
                    o = tk.open
                    if (
                        tk.done is None
                        and (o[6] or o[1] is BLOCKED or o[1] is UNKNOWN)
                        and (o[2] is None or o[2] is _AWAIT)
                    ):
                        what = e[5] if isinstance(e[5], str) else ""
                        reason = _REASONS.get(e[4], _OTHER)
                        # An empty `what` is a plain Future or a bare yield (the C core
                        # records both as ""): the common case, a wait, is assumed.
                        o[1], o[2] = BLOCKED, reason
                        o[4] = _frame_stack(e[6])
                        o[5] = what
                        o[6] = False
                elif kind is K_TASK_BLOCK:
                    tk = tasks.get(e[3]) or task_of(e[3], t, tid)
                    if tk.done is None:
                        stack = _frame_stack(e[8])
                        site = e[7]
                        if not stack and site:
                            if site_stacks is None:
                                site_stacks = _site_stacks(events)
                            stack = site_stacks.get(site, ())
                        what = e[6] if isinstance(e[6], str) else ""
                        block = (_REASONS.get(e[4], _OTHER), e[5], stack, what)
                        if tk.step_open is not None:
                            tk.pending = block
                        else:  # not inside a step we know of (an eager task's first step)
                            tk.switch(t, BLOCKED, block[0], stack, what, block[1])
                elif kind is K_CB_BEGIN:
                    loop = e[3]
                    if not th.loop_marks or th.loop_marks[-1][1] != loop:
                        th.loop_marks.append((t, loop))
                    loop_tid.setdefault(loop, tid)
                    th.open_cb = (t, e[4] if isinstance(e[4], str) else "")
                elif kind is K_CB_END:
                    loop = e[3]
                    if not th.loop_marks or th.loop_marks[-1][1] != loop:
                        th.loop_marks.append((t, loop))
                    loop_tid.setdefault(loop, tid)
                    cb = th.open_cb
                    if cb is not None:
                        th.busy.append((cb[0], t, 0, cb[1]))
                        th.open_cb = None
                elif kind is K_IDLE_BEGIN:
                    loop = e[3]
                    if not th.loop_marks or th.loop_marks[-1][1] != loop:
                        th.loop_marks.append((t, loop))
                    loop_tid.setdefault(loop, tid)
                    idle_open[loop] = t
                    th.push(t, [IDLE, None, loop, (), "", t, False])
                elif kind is K_IDLE_END:
                    loop = e[3]
                    if not th.loop_marks or th.loop_marks[-1][1] != loop:
                        th.loop_marks.append((t, loop))
                    loop_tid.setdefault(loop, tid)
                    began = idle_open.pop(loop, None)
                    ends = idle_ends.get(tid)
                    if ends is None:
                        ends = idle_ends[tid] = []
                    ends.append(t)
                    entry = th.pop(t, IDLE, None)
                    if entry is None and th.retro(t, IDLE, None, loop):
                        began = start
                    if began is not None:
                        idle_by_loop.setdefault(loop, []).append(Interval(began, t, IDLE, None, loop, (), ""))
                    if not th.touched:
                        th.touch(t)
                elif kind is K_BLOCK_BEGIN:
                    th.push(t, [BLOCKED, _REASONS.get(e[3], _OTHER), e[4], _frame_stack(e[5]), "", t, False])
                elif kind is K_BLOCK_END:
                    reason = _REASONS.get(e[3], _OTHER)
                    obj = e[4]
                    waker = e[5]
                    entry = th.pop(t, BLOCKED, reason)
                    woken = False
                    if entry is not None:
                        woken = entry[6]
                    elif not th.retro(t, BLOCKED, reason, obj) and not th.touched:
                        th.touch(t)
                    if waker and not woken:
                        wakes.append(Wake(t, waker, tid, 0, reason, obj))
                elif kind is K_WAKE:
                    target_tid, task_id, reason_v, obj = e[3], e[4], e[5], e[6]
                    reason = _REASONS.get(reason_v, _OTHER)
                    wakes.append(Wake(t, tid, target_tid, task_id, reason, obj))
                    if task_id:
                        tk = tasks.get(task_id)
                        if tk is not None and tk.done is None and tk.open[1] is BLOCKED:
                            tk.switch(t, READY)
                    else:
                        target = threads.get(target_tid)
                        if target is not None:
                            for entry in reversed(target.stack):
                                if entry[0] is BLOCKED and entry[2] == obj:
                                    entry[6] = True
                                    break
                elif kind is K_GC_BEGIN:
                    th.push(t, [GC, None, e[3], (), "", t, False])
                elif kind is K_GC_END:
                    entry = th.pop(t, GC, None)
                    if entry is not None:
                        gc_pauses.append(GCPause(entry[5], t, e[3], e[4], e[5], tid))
                    elif th.retro(t, GC, None, e[3]):
                        pending_gc.append((th, t, e[3], e[4], e[5]))
                    elif not th.touched:
                        th.touch(t)
                elif kind is K_COUNTER:
                    series = counters.get(e[3])
                    if series is None:
                        series = counters[e[3]] = []
                    series.append((t, e[4]))
                elif kind is K_TASK_CREATE:
                    task_id = e[3]
                    old = tasks.get(task_id)
                    if old is not None:
                        old.stop = t
                        finished.append(old)
                    tasks[task_id] = _Task(task_id, t, READY, e[4], e[5], e[6], tid)
                elif kind is K_TASK_INFO:
                    task_id = e[3]
                    tk = tasks.get(task_id)
                    if tk is None:
                        tasks[task_id] = _Task(task_id, t, UNKNOWN, e[4], e[5], e[6], tid)
                    else:
                        tk.name = e[4] or tk.name
                        tk.coro = e[5] or tk.coro
                        tk.parent = e[6] or tk.parent
                elif kind is K_TASK_READY:
                    tk = tasks.get(e[3])
                    if tk is not None and tk.open[1] is not RUNNING and tk.done is None:
                        tk.switch(t, READY)
                elif kind is K_TASK_DONE:
                    tk = tasks.get(e[3]) or task_of(e[3], t, tid)
                    if tk.done is not None:
                        continue
                    o = tk.open
                    if o[6] and tk.intervals and tk.intervals[-1].state is RUNNING:
                        # the done event follows the last step's end: no wait in between
                        last = tk.intervals[-1]
                        tk.intervals[-1] = last._replace(end=t)
                        o[0] = t
                    if tk.step_open is not None:
                        tk.steps.append(Step(tk.step_open, t, tid))
                        tk.step_open = None
                    tk.switch(t, UNKNOWN)
                    tk.done = t
                    tk.outcome = _OUTCOMES.get(e[4])
                    tk.error = e[5] if isinstance(e[5], str) else ""
                elif kind is K_LOOP_STALL:
                    stall_events.append((t, e[3], e[4], e[5], _frame_stack(e[6])))
                elif kind is K_THREAD_START:
                    target = thread_of(e[3] or tid)
                    if target.start_evt < 0:
                        target.start_evt = t
                    target.info_last = t
                elif kind is K_THREAD_END:
                    target = thread_of(e[3] or tid)
                    target.end_evt = t
                elif kind is K_THREAD_INFO or kind is K_THREAD_NAME:
                    target = thread_of(e[3] or tid)
                    if target.first < 0:
                        target.first = t
                    target.info_last = t
                elif kind is K_USER_TASK_BEGIN:
                    utasks[e[3]] = UserTask(e[3], e[5], e[4], t, None, tid, [], [])
                elif kind is K_USER_TASK_INFO:
                    if e[3] not in utasks:
                        utasks[e[3]] = UserTask(e[3], e[5], e[4], start, None, tid, [], [], clipped=True)
                elif kind is K_USER_TASK_END:
                    ut = utasks.get(e[3])
                    if ut is None:
                        info = trace.user_tasks.get(e[3])
                        name, parent = (info.name, info.parent) if info is not None else ("", 0)
                        ut = utasks[e[3]] = UserTask(
                            e[3], name, parent, start, None, tid, [], [], clipped=True
                        )
                    if ut.end is None:
                        ut.end = t
                elif kind is K_REGION_BEGIN:
                    region = Region(e[4], t, None, tid, e[3])
                    regions.append(region)
                    open_regions.setdefault((tid, e[3]), []).append(region)
                elif kind is K_REGION_END:
                    opened = open_regions.get((tid, e[3]))
                    found = None
                    if opened:
                        for i in range(len(opened) - 1, -1, -1):
                            if opened[i].name == e[4]:
                                found = opened.pop(i)
                                break
                    if found is not None:
                        found.end = t
                    else:
                        regions.append(Region(e[4], start, t, tid, e[3], clipped=True))
                elif kind is K_LOG:
                    log = Log(t, tid, e[3], e[4], e[5])
                    logs.append(log)
                elif kind is K_POOL_QUEUED or kind is K_POOL_BEGIN or kind is K_POOL_END:
                    pool_events.append(e)
            except (IndexError, TypeError, AttributeError, KeyError, ValueError):
                continue  # an event with missing or odd arguments: skip it
    if progress is not None:
        try:
            progress(1.0)
        except Exception:
            pass

    # ----------------------------------------------------------------------------------
    # threads: bounds, then close what is still open
    names = trace.threads
    thread_tls: dict[int, ThreadTimeline] = {}
    for tid, th in threads.items():
        signs = [x for x in (th.start_evt, th.first) if x >= 0]
        first = start if th.early else min(signs) if signs else -1
        if first < 0:
            first = th.info_last if th.info_last >= 0 else start
        t_start = max(start, min(first, end))
        if th.end_evt >= 0:
            t_end = th.end_evt
        elif max(th.last, th.info_last) >= last_gen_start:
            t_end = end
        else:
            t_end = max(th.last, th.info_last, t_start)
        t_end = max(t_start, min(t_end, end))
        last_seg = th.segs[-1][1] if th.segs else t_start
        if last_seg > t_end:
            t_end = last_seg
        th.close(t_end)
        intervals: list[Interval] = []
        for seg in th.segs:
            s = t_start if seg[0] is None else max(seg[0], t_start)
            en = min(seg[1], t_end)
            if en > s:
                intervals.append(Interval(s, en, seg[2], seg[3], seg[4], seg[5], seg[6]))
        if not intervals and t_end > t_start:
            intervals.append(Interval(t_start, t_end, UNKNOWN))
        tinfo = names.get(tid)
        name = tinfo.name if tinfo is not None else ""
        thread_tls[tid] = ThreadTimeline(
            tid=tid,
            name=name,
            start=t_start,
            end=t_end,
            intervals=intervals,
            is_loop_thread=bool(th.busy or th.loop_marks or th.open_step or th.open_cb),
            is_pyflight=name.startswith("pyflight-"),
        )
    for th, t, generation, collected, uncollectable in pending_gc:
        tl = thread_tls[th.tid]
        gc_pauses.append(GCPause(min(tl.start, t), t, generation, collected, uncollectable, th.tid))
    gc_pauses.sort()

    # tasks
    def finish(tk: _Task) -> TaskTimeline:
        t_end = tk.done if tk.done is not None else tk.stop if tk.stop is not None else end
        if tk.step_open is not None:
            tk.steps.append(Step(tk.step_open, t_end, tk.thread))
        o = tk.open
        if tk.done is None and t_end > o[0]:
            tk.intervals.append(Interval(o[0], t_end, o[1], o[2], o[3], o[4], o[5]))
        ends = idle_ends.get(tk.thread)
        if ends:
            tk.intervals = _ready_after_idle(tk.intervals, ends)
            tk.delays = [
                a.end - a.start
                for a, b in zip(tk.intervals, tk.intervals[1:], strict=False)
                if a.state is READY and b.state is RUNNING
            ]
        info = trace.tasks.get(tk.id)
        return TaskTimeline(
            id=tk.id,
            name=tk.name or (info.name if info else ""),
            coro=tk.coro or (info.coro if info else ""),
            parent=tk.parent,
            thread=tk.thread,
            created=tk.created,
            done=tk.done,
            outcome=tk.outcome,
            error=tk.error,
            steps=tk.steps,
            intervals=tk.intervals,
            scheduling_delays=tk.delays,
            end=t_end,
        )

    task_tls = {task_id: finish(tk) for task_id, tk in tasks.items()}
    finished_tls = [finish(tk) for tk in finished]

    # loops: busy intervals per thread, assigned to the loop running on it at the time
    loops: dict[int, LoopTimeline] = {}

    def loop_tl(loop: int, tid: int) -> LoopTimeline:
        tl = loops.get(loop)
        if tl is None:
            tl = loops[loop] = LoopTimeline(loop, tid, [], [], [], [])
        return tl

    for tid, th in threads.items():
        if th.open_step is not None:
            th.busy.append((th.open_step[0], end, th.open_step[1], ""))
        if th.open_cb is not None:
            th.busy.append((th.open_cb[0], end, 0, th.open_cb[1]))
        if not th.busy:
            continue
        marks = th.loop_marks
        mark_times = [m[0] for m in marks]
        for b_start, b_end, task_id, cb_name in th.busy:
            if marks:
                i = bisect_right(mark_times, b_start) - 1
                loop = marks[max(i, 0)][1]
            else:
                loop = -tid  # steps seen, loop never named: one anonymous loop per thread
            if task_id:
                tt = task_tls.get(task_id)
                detail = tt.name if tt is not None else str(task_id)
            else:
                detail = cb_name
            loop_tl(loop, tid).busy.append(Interval(b_start, b_end, RUNNING, None, task_id, (), detail))
    for loop, idle in idle_by_loop.items():
        loop_tl(loop, loop_tid.get(loop, 0)).idle.extend(idle)
    for loop, began in idle_open.items():
        loop_tl(loop, loop_tid.get(loop, 0)).idle.append(Interval(began, end, IDLE, None, loop, (), ""))
    lag = [(t, v * 1000) for t, v in counters.get("loop_lag_us", [])]
    for lt in loops.values():
        lt.busy.sort()
        lt.idle.sort()
        lt.lag = lag

    # samples by thread, for stalls
    sample_times: dict[int, list[int]] = {}
    sample_lists: dict[int, list[Sample]] = {}
    for s in samples:
        lst = sample_lists.get(s.tid)
        if lst is None:
            lst = sample_lists[s.tid] = []
            sample_times[s.tid] = []
        lst.append(s)
        sample_times[s.tid].append(s.time)

    stalls: dict[tuple[int, int, int], list[Any]] = {}  # (loop, start, task) -> [end, stacks]
    busy_starts: dict[int, list[int]] = {}
    for t, loop, task_id, duration, stack in stall_events:
        known = loops.get(loop)
        s_start, s_end = max(start, t - duration), t
        if known is not None:
            lt = known
            starts = busy_starts.get(loop)
            if starts is None:
                starts = busy_starts[loop] = [b.start for b in lt.busy]
            i = bisect_right(starts, t) - 1
            if i >= 0 and lt.busy[i].end >= t - 1:
                s_start, s_end = lt.busy[i].start, lt.busy[i].end
        key = (loop, s_start, task_id)
        entry = stalls.get(key)
        if entry is None:
            stalls[key] = [s_end, [stack] if stack else []]
        else:
            entry[0] = max(entry[0], s_end)
            if stack:
                entry[1].append(stack)
    for (loop, s_start, task_id), (s_end, stacks) in sorted(stalls.items()):
        lt = loops.get(loop) or loop_tl(loop, loop_tid.get(loop, 0))
        times = sample_times.get(lt.tid)
        if times:
            lo_i = bisect_right(times, s_start - 1)
            hi_i = bisect_right(times, s_end)
            stacks = stacks + [s.stack for s in sample_lists[lt.tid][lo_i:hi_i] if s.stack]
        lt.stalls.append(Stall(s_start, s_end, task_id, s_end - s_start, stacks))

    # user tasks, regions, logs
    for region in regions:
        ut = utasks.get(region.task)
        if ut is not None:
            ut.regions.append(region)
    for log in logs:
        if log.task:
            ut = utasks.get(log.task)
            if ut is not None:
                ut.logs.append((log.time, log.category, log.message))
    for ut in utasks.values():
        info = trace.user_tasks.get(ut.id)
        if info is not None and not ut.name:
            ut.name = info.name

    return Model(
        pools=_pools(pool_events, thread_tls, start, end),
        trace=trace,
        start=start,
        end=end,
        threads=dict(sorted(thread_tls.items())),
        tasks=task_tls,
        finished_tasks=finished_tls,
        loops=loops,
        user_tasks=utasks,
        regions=regions,
        gc_pauses=gc_pauses,
        samples=samples,
        wakes=wakes,
        counters=counters,
        logs=logs,
        data_loss=list(trace.data_loss),
        sampling_interval_ns=_sampling_interval(counters, sample_times),
    )


def _pools(
    events: list[Any], threads: dict[int, ThreadTimeline], start: int, end: int
) -> dict[int, ThreadPool]:
    """Thread pools from their POOL_JOB_* events (see ``PoolJob`` for the states)."""
    jobs: dict[int, PoolJob] = {}
    sizes: dict[int, int] = {}
    for e in events:
        try:
            kind, t, tid, pool, number = e[0], e[1], e[2], e[3], e[4]
            job = jobs.get(number)
            if kind == Kind.POOL_JOB_QUEUED:
                if job is not None:
                    continue  # a number seen before: odd input, keep the first
                fn, file, line, size, task = e[5], e[6], e[7], e[8], e[9]
                jobs[number] = PoolJob(
                    pool,
                    number,
                    fn if isinstance(fn, str) else "",
                    file if isinstance(file, str) else "",
                    line,
                    task,
                    tid,
                    0,
                    t,
                    None,
                    None,
                )
                if size:
                    sizes[pool] = max(sizes.get(pool, 0), size)
            elif kind == Kind.POOL_JOB_BEGIN:
                if job is None:  # queued before the window
                    jobs[number] = PoolJob(pool, number, "", "", 0, 0, 0, tid, None, t, None, "running")
                elif job.begin is None and job.state == "queued":
                    job.begin, job.worker, job.state = t, tid, "running"
            elif kind == Kind.POOL_JOB_END:
                if job is None:  # running since before the window
                    jobs[number] = PoolJob(pool, number, "", "", 0, 0, 0, tid, None, start, t, "done", True)
                elif job.state == "running":
                    job.end, job.state = t, "done"
                elif job.state == "queued" and job.begin is None:
                    job.state = "refused"
        except (IndexError, TypeError, AttributeError, ValueError):
            continue
    by_pool: dict[int, list[PoolJob]] = {}
    for job in jobs.values():
        by_pool.setdefault(job.pool, []).append(job)
    out: dict[int, ThreadPool] = {}
    for pool, pool_jobs in by_pool.items():
        pool_jobs.sort(key=lambda j: j.job)
        # FIFO: a job that never started although a later one of its pool did was cancelled
        later_began = False
        for job in reversed(pool_jobs):
            if job.state == "queued" and later_began:
                job.state = "cancelled"
            if job.begin is not None and job.queued is not None:
                later_began = True
        busy: list[tuple[int, int]] = []
        waiting: list[tuple[int, int]] = []
        workers: dict[int, None] = {}
        for job in pool_jobs:
            if job.worker:
                workers[job.worker] = None
            if job.begin is not None:
                busy.append((job.begin, 1))
                busy.append((job.end if job.end is not None else end, -1))
            if job.state in ("cancelled", "refused"):
                continue
            if job.queued is not None or job.begin is not None:
                waiting.append((job.queued if job.queued is not None else start, 1))
                waiting.append((job.begin if job.begin is not None else end, -1))
        names = [threads[w].name for w in workers if w in threads and threads[w].name]
        prefixes = [n.rpartition("_")[0] if n.rpartition("_")[2].isdigit() else n for n in names]
        name = max(set(prefixes), key=lambda p: (prefixes.count(p), p)) if prefixes else ""
        out[pool] = ThreadPool(
            pool=pool,
            name=name,
            max_workers=sizes.get(pool) or len(workers),
            workers=list(workers),
            jobs=pool_jobs,
            busy=_steps(busy, start),
            waiting=_steps(waiting, start),
        )
    return out


def _site_stacks(events: Sequence[Any]) -> dict[int, Stack]:
    """TASK_BLOCK's site -> the first stack recorded with it (most TASK_BLOCKs of a site
    leave the stack out; it is recorded at most once a second per site)."""
    out: dict[int, Stack] = {}
    k_block = Kind.TASK_BLOCK
    for e in events:
        if e[0] is k_block:
            try:
                site, stack = e[7], e[8]
            except IndexError:
                continue
            if site and stack and site not in out:
                out[site] = _frame_stack(stack)
    return out


def _ready_after_idle(intervals: list[Interval], idle_ends: list[int]) -> list[Interval]:
    """Split each wait that ends in a step at the last time the loop woke from idle in it.

    A loop only sleeps in its selector when nothing is ready, so the task became ready
    after that wake-up at the earliest: from there to its step is (an estimate of) its
    scheduling delay, e.g. the loop thread waiting for the GIL or other steps running.
    """
    out: list[Interval] = []
    last = len(intervals) - 1
    for index, iv in enumerate(intervals):
        if iv.state is BLOCKED and index < last and intervals[index + 1].state is RUNNING:
            j = bisect_left(idle_ends, iv.end) - 1
            if j >= 0 and idle_ends[j] > iv.start:
                woke = idle_ends[j]
                out.append(iv._replace(end=woke))
                out.append(Interval(woke, iv.end, READY, None, 0, iv.stack, iv.detail))
                continue
        out.append(iv)
    return out


def _sampling_interval(counters: dict[str, list[tuple[int, int]]], sample_times: dict[int, list[int]]) -> int:
    """The sampler's period: what it said it used, else the typical gap between samples."""
    said = counters.get("sampler_interval_us")
    if said:
        return int(statistics.median(v for _t, v in said)) * 1000
    gaps: list[int] = []
    for times in sample_times.values():
        gaps.extend(b - a for a, b in itertools.pairwise(times) if b > a)
        if len(gaps) > 10000:
            break
    return int(statistics.median(gaps)) if gaps else 0
