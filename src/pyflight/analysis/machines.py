"""The per-thread and per-task state machines the model builder advances (builder.py).

A thread's machine keeps a stack of nested states (a GC pause inside a block, a block
inside a loop's idle wait) and cuts its timeline into segments at every change; a task's
machine keeps its open interval and the block a step announced (TASK_BLOCK), applied when
the step ends.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from pyflight.analysis.model import Interval, IntervalColumns, Stack, State, Step
from pyflight.core.events import BlockReason, TaskOutcome

RUNNING, READY, BLOCKED, UNKNOWN = State.RUNNING, State.READY, State.BLOCKED, State.UNKNOWN
#: ``Interval`` without the NamedTuple's Python-level ``__new__`` (as in builder.py)
_new: Callable[[type[Interval], tuple[Any, ...]], Interval] = tuple.__new__  # type: ignore[assignment]


class ThreadMachine:
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
        self.early = False  # an end without its begin came first: alive before the window

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

    def on_loop(self, t: int, loop: int) -> None:
        """A loop event: remember which loop runs on this thread from ``t``."""
        if not self.loop_marks or self.loop_marks[-1][1] != loop:
            self.loop_marks.append((t, loop))


class TaskMachine:
    """Per-task state machine; ``open``: [start, state, reason, obj, stack, detail, post_step].

    Closed intervals go through ``add``, which keeps their columns and splits a wait
    that ends in a step at the last time the task's loop woke from idle in it: a loop
    only sleeps in its selector when nothing is ready, so the task became ready after
    that wake-up at the earliest, and from there to its step is (an estimate of) its
    scheduling delay, e.g. the loop thread waiting for the GIL or other steps running.
    ``idle_delays`` are the scheduling delays of the result (READY, then RUNNING); a
    task whose thread never woke its loop from idle keeps ``delays`` instead. Done as
    the intervals are made: a pass over them afterwards cost ~0.5 s per million (they
    are scattered over the heap)."""

    __slots__ = (
        "columns",
        "coro",
        "created",
        "delays",
        "done",
        "error",
        "first",
        "id",
        "idle_delays",
        "idle_ends_of",
        "intervals",
        "name",
        "open",
        "outcome",
        "parent",
        "pending",
        "sent",
        "step_open",
        "steps",
        "stop",
        "thread",
        "timeouts",
    )

    def __init__(
        self,
        task_id: int,
        t: int,
        state: State,
        name: str,
        coro: str,
        parent: int,
        thread: int,
        idle_ends_of: dict[int, list[int]],
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
        self.idle_delays: list[int] = []
        self.columns = IntervalColumns([], [], [], [])
        #: thread -> the times its loop woke from idle, so far (the builder's, shared)
        self.idle_ends_of = idle_ends_of
        self.open: list[Any] = [t, state, None, 0, (), "", False]
        self.step_open: int | None = None
        self.stop: int | None = None  # its id was reused by a new task at this time
        self.sent: list[int] | None = None  # the ends of its steps that sent on a socket (TASK_SENT)
        self.timeouts: list[int] | None = None  # when its timeouts ran out (TASK_TIMEOUT)
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
            self.add(_new(Interval, (o[0], t, o[1], o[2], o[3], o[4], o[5])))
            if o[1] is READY and state is RUNNING:
                self.delays.append(t - o[0])
        o[0], o[1], o[2], o[3], o[4], o[5], o[6] = t, state, reason, obj, stack, detail, False

    def add(self, iv: Interval) -> None:
        """Append the closed interval ``iv`` (see the class docstring)."""
        intervals, columns = self.intervals, self.columns
        if iv[2] is RUNNING and intervals:
            prev = intervals[-1]
            state = prev[2]
            if state is BLOCKED:
                ends = self.idle_ends_of.get(self.thread)
                if ends:
                    start, end = prev[0], prev[1]
                    j = bisect_left(ends, end) - 1
                    if j >= 0 and ends[j] > start:
                        woke = ends[j]
                        intervals[-1] = _new(
                            Interval, (start, woke, state, prev[3], prev[4], prev[5], prev[6])
                        )
                        intervals.append(_new(Interval, (woke, end, READY, None, 0, prev[5], prev[6])))
                        columns.ends[-1] = woke
                        columns.starts.append(woke)
                        columns.ends.append(end)
                        columns.states.append(READY)
                        columns.reasons.append(None)
                        self.idle_delays.append(end - woke)
            elif state is READY:
                self.idle_delays.append(prev[1] - prev[0])
        intervals.append(iv)
        columns.starts.append(iv[0])
        columns.ends.append(iv[1])
        columns.states.append(iv[2])
        columns.reasons.append(iv[3])
