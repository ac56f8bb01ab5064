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
from collections.abc import Callable
from typing import NamedTuple

from pyflight.core.events import BlockReason, TaskOutcome, ThreadState
from pyflight.format.reader import Event, Frame, Trace

__all__ = [
    "Block",
    "GCPause",
    "Interval",
    "IntervalColumns",
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

    def cut(self, start: int, end: int) -> Interval:
        """The same interval over ``[start, end)`` (``_replace`` is a Python-level call,
        ~1 us: the model splits hundreds of thousands of intervals on a big trace)."""
        return Interval(start, end, self.state, self.reason, self.obj, self.stack, self.detail)


class IntervalColumns(NamedTuple):
    """A timeline's intervals as parallel lists (``starts[k]`` is ``intervals[k].start``),
    made by the builder with the intervals: a view that needs only these (the viewer's
    rows) reads four lists instead of a million tuples scattered over the heap (each
    pass over those costs ~0.2 s per million, mostly cache misses)."""

    starts: list[int]
    ends: list[int]
    states: list[State]
    reasons: list[BlockReason | None]


class Block(NamedTuple):
    """One thread block whole, from BLOCK_BEGIN to BLOCK_END (the thread's intervals cut
    it where a GC pause or the wake-up falls); ``waker`` the thread that ended it, 0 if
    unknown; a block still open at the end of the thread's timeline ends there.
    ``holder``: for a lock wait, the thread that held the lock as the wait began (its
    LOCK_HELD; C core), 0 if not known. ``timed_out``: a socket call that ended by its
    timeout (its BLOCK_END's ``IO_TIMED_OUT`` bit, taken out of ``obj``)."""

    tid: int
    start: int
    end: int
    reason: BlockReason
    obj: int
    waker: int
    stack: Stack
    holder: int = 0
    timed_out: bool = False


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
    #: Read without the GIL while the thread held it (os_state RUNNING): dated when its
    #: stack was read, not when the sampler got the GIL (a GIL-taking sampler's tick)
    native: bool = False


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
    #: ``intervals`` as columns, when the builder made them (None: read the intervals)
    columns: IntervalColumns | None = dataclasses.field(default=None, repr=False, compare=False)
    #: the ends of its steps that sent on a socket (TASK_SENT; traces with metadata
    #: ``blocking.step_sends``), in time order
    sent: list[int] = dataclasses.field(default_factory=list)
    #: when its timeouts ran out (TASK_TIMEOUT: ``asyncio.timeout``, ``wait_for``, ``wait``,
    #: aiohttp's ``ClientTimeout``), each cancelling the wait it was in, in time order
    timeouts: list[int] = dataclasses.field(default_factory=list)

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
    #: ``busy`` as columns, when the builder made them (None: read the intervals)
    busy_columns: IntervalColumns | None = dataclasses.field(default=None, repr=False, compare=False)


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
    """A ``ThreadPoolExecutor`` (or ``ProcessPoolExecutor``) seen through its jobs (the executors source).

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
    #: a ProcessPoolExecutor (POOL_PROCESSES): its jobs ran in other processes, ``workers``
    #: is empty, and a job "began" when its manager thread handed it to the workers' queue
    processes: bool = False

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
    blocks: list[Block] = dataclasses.field(default_factory=list)
    #: THREAD_EXCEPTION and TRIGGER events (DATA_LOSS and SOURCE_DISABLED: ``data_loss``)
    marks: list[Event] = dataclasses.field(default_factory=list)

    @property
    def duration(self) -> int:
        return self.end - self.start

    def all_tasks(self) -> list[TaskTimeline]:
        """Every asyncio task, including those whose id was reused by a later task."""
        return self.finished_tasks + list(self.tasks.values())


def build(trace: Trace, progress: Callable[[float], None] | None = None) -> Model:
    """Derive the model of ``trace`` (see docs/analysis.md and ``analysis/builder.py``).
    Never raises on odd traces."""
    # Millions of small acyclic objects: the cyclic GC would rescan the trace's events
    # again and again (as in the reader), so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        from pyflight.analysis.builder import Builder
        from pyflight.analysis.cpu import mark_gil_waits

        builder = Builder(trace)
        builder.run(progress)
        model = builder.finish()

        mark_gil_waits(model)
        return model
    finally:
        from pyflight.analysis.own_frames import clear_cache

        clear_cache()  # holds the trace's stacks only for the build
        if gc_was_enabled:
            gc.enable()
