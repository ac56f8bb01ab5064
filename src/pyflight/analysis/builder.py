"""How the model is built: one pass over the events, one small handler per event kind.

As in Go's ``internal/trace/order.go``: a table maps each ``Kind`` to the handler that
advances the per-thread, per-task and per-loop state machines; a kind without a handler
only marks its thread alive. Each handler unpacks its event by the vocabulary's argument
names (``pyflight.core.events.ARGS``: an event of a known kind is exactly
``(kind, time, thread, *args)``, the reader guarantees it), so nothing here reads an event
by position. After the pass, ``finish()`` closes what is still open and returns the
``Model``. Traces are windows cut out of a longer run and may be damaged: an end without
its begin means "since before the window", a begin without its end "until the end of the
window", and an event with odd arguments is skipped.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from pyflight.analysis.loops import attach_stalls, loop_timelines
from pyflight.analysis.machines import TaskMachine, ThreadMachine
from pyflight.analysis.model import (
    Block,
    GCPause,
    Interval,
    Log,
    Model,
    Region,
    Sample,
    Stack,
    State,
    Step,
    TaskTimeline,
    ThreadTimeline,
    UserTask,
    Wake,
)
from pyflight.analysis.own_frames import program_stack
from pyflight.analysis.pools import pools_of
from pyflight.analysis.queries import SAMPLER_INTERVAL_COUNTER
from pyflight.core import FORCE_PURE_ENV
from pyflight.core.events import IO_TIMED_OUT, BlockReason, Kind, TaskOutcome, ThreadState
from pyflight.format.reader import Event, Trace

_REASONS: dict[int, BlockReason] = {int(r): r for r in BlockReason}
_OS_STATES: dict[int, ThreadState] = {int(s): s for s in ThreadState}
_OS_STATES[ThreadState.HOLDING_GIL] = ThreadState.RUNNING  # Sample.native says the rest
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
_IO = BlockReason.IO
#: Ends that may close a state begun before the window: they do not by themselves say the
#: thread ran (every other event of a thread does).
_NO_TOUCH = frozenset({Kind.BLOCK_END, Kind.GC_END, Kind.LOOP_IDLE_END})
_ODD_EVENT = (IndexError, TypeError, AttributeError, KeyError, ValueError)
_CHUNK = 1 << 16  # events between progress reports
#: ``_new(Interval, (start, end, ...))`` is ``Interval(start, end, ...)`` without the
#: Python-level ``__new__`` a NamedTuple has: the build makes a million of them
_new: Callable[[type[Interval], tuple[Any, ...]], Interval] = tuple.__new__  # type: ignore[assignment]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class Builder:
    """The state of one pass over a trace's events (see the module docstring)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        events = trace.events
        if trace.generations:
            start, end = trace.start_ns, trace.end_ns
            if events:
                start = min(start, events[0].time)
                end = max(end, events[-1].time)
        elif events:
            start, end = events[0].time, events[-1].time
        else:
            start = end = 0
        self.start = start
        self.end = max(start, end)
        self.last_gen_start = trace.generations[-1].start_ns if trace.generations else start
        self.threads: dict[int, ThreadMachine] = {}
        self.tasks: dict[int, TaskMachine] = {}
        self.finished: list[TaskMachine] = []  # tasks whose id was reused or that ended
        self.announced: set[str] = set()  # coroutines of announced tasks (set in finish)
        self.samples: list[Sample] = []
        self.wakes: list[Wake] = []
        self.counters: dict[str, list[tuple[int, int]]] = {}
        self.logs: list[Log] = []
        self.stall_events: list[tuple[int, int, int, int, Stack]] = []  # time, loop, task, duration, stack
        self.idle_by_loop: dict[int, list[Interval]] = {}
        self.idle_open: dict[int, int] = {}  # loop -> begin time
        self.idle_ends: dict[int, list[int]] = {}  # loop thread -> times its loop woke from idle
        self.loop_tid: dict[int, int] = {}
        self.gc_pauses: list[GCPause] = []
        self.pending_gc: list[
            tuple[ThreadMachine, int, int, int, int]
        ] = []  # retro: thread, end, gen, coll, unc
        self.utasks: dict[int, UserTask] = {}
        self.regions: list[Region] = []
        self.open_regions: dict[tuple[int, int], list[Region]] = {}  # (thread, task) -> open regions
        self.site_stacks: dict[int, Stack] | None = None  # TASK_BLOCK site -> a stack recorded for it
        self.blocks: list[Block] = []
        # LOCK_HELD: Python ident -> native tid (THREAD_START / THREAD_INFO), and the holder
        # of the lock each (thread, wait start) waited for
        self.idents: dict[int, int] = {}
        self.lock_held: dict[int, tuple[int, int]] = {}  # tid -> (obj, holder ident), next wait
        self.holders: dict[tuple[int, int], int] = {}  # (tid, wait start) -> holder ident
        self.marks: list[Event] = []  # THREAD_EXCEPTION, TRIGGER
        self.pool_events: list[Event] = []  # POOL_JOB_QUEUED / BEGIN / END, in time order
        self.handlers = self._handler_table()

    def _handler_table(self) -> dict[Kind, Callable[[Event, ThreadMachine], None]]:
        """Kind -> its handler; kinds not here only mark their thread alive."""

        def pool(e: Event, _th: ThreadMachine) -> None:
            self.pool_events.append(e)

        step_begin, step_end = self._step_handlers()
        return {
            Kind.SAMPLE: self.sample,
            Kind.TASK_STEP_BEGIN: step_begin,
            Kind.TASK_STEP_END: step_end,
            Kind.TASK_WAIT: self.task_wait,
            Kind.TASK_BLOCK: self.task_block,
            Kind.TASK_CREATE: self.task_create,
            Kind.TASK_INFO: self.task_info,
            Kind.TASK_READY: self.task_ready,
            Kind.TASK_DONE: self.task_done,
            Kind.TASK_SENT: self.task_sent,
            Kind.TASK_TIMEOUT: self.task_timeout,
            Kind.CALLBACK_BEGIN: self.callback_begin,
            Kind.CALLBACK_END: self.callback_end,
            Kind.LOOP_IDLE_BEGIN: self.loop_idle_begin,
            Kind.LOOP_IDLE_END: self.loop_idle_end,
            Kind.LOOP_STALL: self.loop_stall,
            Kind.BLOCK_BEGIN: self.block_begin,
            Kind.BLOCK_END: self.block_end,
            Kind.WAKE: self.wake,
            Kind.LOCK_HELD: self.lock_held_by,
            Kind.GC_BEGIN: self.gc_begin,
            Kind.GC_END: self.gc_end,
            Kind.COUNTER: self.counter,
            Kind.THREAD_START: self.thread_start,
            Kind.THREAD_END: self.thread_end,
            Kind.THREAD_INFO: self.thread_info,
            Kind.THREAD_NAME: self.thread_info,
            Kind.USER_TASK_BEGIN: self.user_task_begin,
            Kind.USER_TASK_INFO: self.user_task_info,
            Kind.USER_TASK_END: self.user_task_end,
            Kind.REGION_BEGIN: self.region_begin,
            Kind.REGION_END: self.region_end,
            Kind.LOG: self.log,
            Kind.THREAD_EXCEPTION: self.marks_append,
            Kind.TRIGGER: self.marks_append,
            Kind.POOL_JOB_QUEUED: pool,
            Kind.POOL_JOB_BEGIN: pool,
            Kind.POOL_JOB_END: pool,
            Kind.POOL_PROCESSES: pool,
        }

    def _step_handlers(self) -> tuple[Callable[[Event, ThreadMachine], None], ...]:
        """TASK_STEP_BEGIN and TASK_STEP_END: the C twins of ``task_step_begin`` and
        ``task_step_end`` (``analysis/c/_steps.c``: half the events of asyncio code, ~1 s of
        a 1.5 M-event trace's build in Python) unless PYFLIGHT_PURE_PYTHON=1 or the
        extension is not built. They hand anything but the common case to these."""
        steps = None
        if os.environ.get(FORCE_PURE_ENV, "").strip() in ("", "0"):
            try:
                from pyflight.analysis._steps import Steps  # type: ignore[import-not-found]
            except ImportError:
                pass
            else:
                steps = Steps(
                    self.tasks,
                    self.task_step_begin,
                    self.task_step_end,
                    Interval,
                    Step,
                    RUNNING,
                    READY,
                    BLOCKED,
                    _AWAIT,
                )
        if steps is None:
            return self.task_step_begin, self.task_step_end
        return steps.begin, steps.end

    # ----------------------------------------------------------------------------------
    # the pass

    def thread_of(self, tid: int) -> ThreadMachine:
        th = self.threads.get(tid)
        if th is None:
            th = self.threads[tid] = ThreadMachine(tid)
        return th

    def task_of(self, task_id: int, t: int, tid: int) -> TaskMachine:
        """The live task ``task_id``; a new one if unknown or done (its create was lost)."""
        tk = self.tasks.get(task_id)
        if tk is None or tk.done is not None:
            if tk is not None:
                self.finished.append(tk)
            info = self.trace.tasks.get(task_id)
            if info is not None:
                tk = TaskMachine(task_id, t, UNKNOWN, info.name, info.coro, info.parent, tid, self.idle_ends)
            else:
                tk = TaskMachine(task_id, t, UNKNOWN, "", "", 0, tid, self.idle_ends)
            self.tasks[task_id] = tk
        return tk

    def run(self, progress: Callable[[float], None] | None = None) -> None:
        """Feed every event to its handler, in time order."""
        events = self.trace.events
        n = len(events)
        threads = self.threads
        handlers = self.handlers
        no_touch = _NO_TOUCH
        last_tid = -1  # events come in runs from one thread: skip the dict lookup then
        th = ThreadMachine(-1)
        for lo in range(0, n, _CHUNK):
            if progress is not None and lo:
                _report(progress, lo / n)
            for e in events[lo : lo + _CHUNK]:
                try:
                    kind = e.kind
                    t = e.time
                    tid = e.thread
                    if tid != last_tid:
                        th = threads.get(tid)  # type: ignore[assignment]
                        if th is None:
                            th = threads[tid] = ThreadMachine(tid)
                        last_tid = tid
                    if th.first < 0:
                        th.first = t
                    th.last = t
                    if not th.touched and kind not in no_touch:
                        th.touch(t)
                    handler = handlers.get(kind)
                    if handler is not None:
                        handler(e, th)
                except _ODD_EVENT:
                    continue  # an event with missing or odd arguments: skip it
        if progress is not None:
            _report(progress, 1.0)

    # ----------------------------------------------------------------------------------
    # handlers, one per kind: (event, the recording thread's state machine)

    def sample(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, _tid, target_tid, task, stack, os_state, cpu, span = e
        target = self.threads.get(target_tid)
        if target is None:
            target = self.threads[target_tid] = ThreadMachine(target_tid)
        if target.first < 0:
            target.first = t
        target.last = t
        top = target.stack[-1] if target.stack else None
        state, reason = (target.base, None) if top is None else (top[0], top[1])
        self.samples.append(
            Sample(
                t,
                target_tid,
                task,
                program_stack(stack),
                _OS_STATES.get(os_state, ThreadState.UNKNOWN),
                state,
                reason,
                cpu,
                span,
                os_state == ThreadState.HOLDING_GIL,
            )
        )

    def task_step_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id = e
        tk = self.tasks.get(task_id)
        if tk is None or tk.done is not None:
            tk = self.task_of(task_id, t, tid)
        if not tk.steps and tk.step_open is None:
            tk.thread = tid
        o = tk.open  # tk.switch(t, RUNNING) spelled out: the most frequent event of asyncio code
        if t > o[0]:
            tk.add(_new(Interval, (o[0], t, o[1], o[2], o[3], o[4], o[5])))
            if o[1] is READY:
                tk.delays.append(t - o[0])
        o[:] = (t, RUNNING, None, 0, (), "", False)
        tk.pending = None
        tk.step_open = t
        th.open_step = (t, task_id)

    def task_sent(self, e: Event, _th: ThreadMachine) -> None:
        """TASK_SENT: the task's step that just ended sent on a socket (dated as its END, or
        just after it where it was recorded after a pair: the step's end is kept)."""
        _kind, t, _tid, task_id = e
        tk = self.tasks.get(task_id)
        if tk is not None and tk.done is None:
            if tk.sent is None:
                tk.sent = []
            tk.sent.append(tk.steps[-1].end if tk.steps and tk.steps[-1].end <= t else t)

    def task_timeout(self, e: Event, _th: ThreadMachine) -> None:
        """TASK_TIMEOUT: a timeout of the task ran out; it is cancelled now."""
        _kind, t, _tid, task_id = e
        tk = self.tasks.get(task_id)
        if tk is not None and tk.done is None:
            if tk.timeouts is None:
                tk.timeouts = []
            tk.timeouts.append(t)

    def task_step_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id = e
        tk = self.tasks.get(task_id)
        if tk is None or tk.done is not None:
            tk = self.task_of(task_id, t, tid)
        if tk.step_open is None:
            # begun before the window (or the begin was lost): running since the task's
            # first sign of life if nothing else is known
            if not tk.intervals and tk.open[1] is UNKNOWN:
                if tk.open[0] == t:  # its first sign of life: began before the window
                    tk.open[0] = tk.created = tk.first = self.start
                tk.open[1] = RUNNING
                tk.steps.append(Step(tk.open[0], t, tid))
                if th.open_step is None:
                    th.busy.append((tk.open[0], t, task_id, ""))
        else:
            tk.steps.append(Step(tk.step_open, t, tid))
        tk.step_open = None
        o = tk.open  # tk.switch(t, BLOCKED, ...) spelled out, as in task_step_begin
        if t > o[0]:
            tk.add(_new(Interval, (o[0], t, o[1], o[2], o[3], o[4], o[5])))
        pending = tk.pending
        if pending is None:
            o[:] = (t, BLOCKED, _AWAIT, 0, (), "", True)  # post-step: TASK_WAIT / TASK_DONE refine it
        else:  # blocked on an asyncio lock/queue/...: TASK_WAIT cannot say better
            tk.pending = None
            o[:] = (t, BLOCKED, pending[0], pending[1], pending[2], pending[3], False)
        step = th.open_step
        if step is not None and step[1] == task_id:
            th.busy.append((step[0], t, task_id, ""))
            th.open_step = None

    def task_wait(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, reason, what, stack = e
        tk = self.tasks.get(task_id) or self.task_of(task_id, t, tid)
        if tk.step_open is not None and tk.done is None:
            # recorded inside the step: the wait begins when the step ends (a TASK_BLOCK
            # of the same step says more and wins)
            if tk.pending is None:
                tk.pending = (_REASONS.get(reason, _OTHER), 0, program_stack(stack), _text(what))
            return
        o = tk.open
        if (
            tk.done is None
            and (o[6] or o[1] is BLOCKED or o[1] is UNKNOWN)
            and (o[2] is None or o[2] is _AWAIT)
        ):
            # An empty `what` is a plain Future or a bare yield (the C core records both
            # as ""): the common case, a wait, is assumed.
            # also recorded in the middle of a wait (the asyncio source's look at waiting
            # tasks): it gives the whole wait its stack, and a name it had stays
            o[1], o[2] = BLOCKED, _REASONS.get(reason, _OTHER)
            o[4] = program_stack(stack) or o[4]
            o[5] = _text(what) or o[5]
            o[6] = False

    def task_block(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, reason, obj, what, site, stack = e
        tk = self.tasks.get(task_id) or self.task_of(task_id, t, tid)
        if tk.done is not None:
            return
        frames = program_stack(stack)
        if not frames and site:
            if self.site_stacks is None:
                self.site_stacks = _site_stacks(self.trace.events)
            frames = self.site_stacks.get(site, ())
        block = (_REASONS.get(reason, _OTHER), obj, frames, _text(what))
        if tk.step_open is not None:
            tk.pending = block
        else:  # not inside a step we know of (an eager task's first step)
            tk.switch(t, BLOCKED, block[0], frames, block[3], obj)

    def task_create(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, name, coro, parent = e
        old = self.tasks.get(task_id)
        if old is not None:
            old.stop = t
            self.finished.append(old)
        self.tasks[task_id] = TaskMachine(task_id, t, READY, name, coro, parent, tid, self.idle_ends)

    def task_info(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, name, coro, parent = e
        tk = self.tasks.get(task_id)
        if tk is None:
            self.tasks[task_id] = TaskMachine(task_id, t, UNKNOWN, name, coro, parent, tid, self.idle_ends)
        else:
            tk.name = name or tk.name
            tk.coro = coro or tk.coro
            tk.parent = parent or tk.parent

    def task_ready(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, _tid, task_id = e
        tk = self.tasks.get(task_id)
        if tk is not None and tk.open[1] is not RUNNING and tk.done is None:
            tk.switch(t, READY)

    def task_done(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, outcome, error = e
        tk = self.tasks.get(task_id) or self.task_of(task_id, t, tid)
        if tk.done is not None:
            return
        o = tk.open
        if o[6] and tk.intervals and tk.intervals[-1].state is RUNNING:
            # the done event follows the last step's end: no wait in between
            tk.intervals[-1] = tk.intervals[-1]._replace(end=t)
            tk.columns.ends[-1] = t
            o[0] = t
        if tk.step_open is not None:
            tk.steps.append(Step(tk.step_open, t, tid))
            tk.step_open = None
        tk.switch(t, UNKNOWN)
        tk.done = t
        tk.outcome = _OUTCOMES.get(outcome)
        tk.error = _text(error)

    def callback_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, loop, name = e
        th.on_loop(t, loop)
        self.loop_tid.setdefault(loop, tid)
        th.open_cb = (t, _text(name))

    def callback_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, loop = e
        th.on_loop(t, loop)
        self.loop_tid.setdefault(loop, tid)
        cb = th.open_cb
        if cb is not None:
            th.busy.append((cb[0], t, 0, cb[1]))
            th.open_cb = None

    def loop_idle_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, loop = e
        th.on_loop(t, loop)
        self.loop_tid.setdefault(loop, tid)
        self.idle_open[loop] = t
        th.push(t, [IDLE, None, loop, (), "", t, False])

    def loop_idle_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, loop, _ready_events = e
        th.on_loop(t, loop)
        self.loop_tid.setdefault(loop, tid)
        began = self.idle_open.pop(loop, None)
        ends = self.idle_ends.get(tid)
        if ends is None:
            ends = self.idle_ends[tid] = []
        ends.append(t)
        entry = th.pop(t, IDLE, None)
        if entry is None and th.retro(t, IDLE, None, loop):
            began = self.start
        if began is not None:
            self.idle_by_loop.setdefault(loop, []).append(Interval(began, t, IDLE, None, loop, (), ""))
        if not th.touched:
            th.touch(t)

    def loop_stall(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, _tid, loop, task_id, duration, stack = e
        self.stall_events.append((t, loop, task_id, duration, program_stack(stack)))

    def block_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, reason, obj, stack = e
        th.push(t, [BLOCKED, _REASONS.get(reason, _OTHER), obj, program_stack(stack), "", t, False])
        if self.lock_held:
            held = self.lock_held.pop(tid, None)
            if held is not None and held[0] == obj:
                self.holders[(tid, t)] = held[1]

    def lock_held_by(self, e: Event, th: ThreadMachine) -> None:
        _kind, _t, tid, obj, holder = e
        self.lock_held[tid] = (obj, holder)

    def block_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, reason_v, obj, waker = e
        reason = _REASONS.get(reason_v, _OTHER)
        timed_out = False
        if obj & IO_TIMED_OUT and reason is _IO:  # the socket call ended by its timeout
            obj &= ~IO_TIMED_OUT
            timed_out = True
        entry = th.pop(t, BLOCKED, reason)
        woken = False
        if entry is not None:
            woken = entry[6]
            holder = self._holder(tid, entry[5]) if self.holders else 0
            self.blocks.append(Block(tid, entry[5], t, reason, obj, waker, entry[3], holder, timed_out))
        elif th.retro(t, BLOCKED, reason, obj):
            # -1: the thread's start
            self.blocks.append(Block(tid, -1, t, reason, obj, waker, (), 0, timed_out))
        elif not th.touched:
            th.touch(t)
        if waker and not woken:
            self.wakes.append(Wake(t, waker, tid, 0, reason, obj))

    def wake(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, target_tid, task_id, reason_v, obj = e
        self.wakes.append(Wake(t, tid, target_tid, task_id, _REASONS.get(reason_v, _OTHER), obj))
        if task_id:
            tk = self.tasks.get(task_id)
            if tk is not None and tk.done is None and tk.open[1] is BLOCKED:
                tk.switch(t, READY)
            return
        target = self.threads.get(target_tid)
        if target is not None:
            for entry in reversed(target.stack):
                if entry[0] is BLOCKED and entry[2] == obj:
                    entry[6] = True  # its end is this wake, not a wake of its own
                    break

    def gc_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, _tid, generation = e
        th.push(t, [GC, None, generation, (), "", t, False])

    def gc_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, generation, collected, uncollectable = e
        entry = th.pop(t, GC, None)
        if entry is not None:
            self.gc_pauses.append(GCPause(entry[5], t, generation, collected, uncollectable, tid))
        elif th.retro(t, GC, None, generation):
            self.pending_gc.append((th, t, generation, collected, uncollectable))
        elif not th.touched:
            th.touch(t)

    def counter(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, _tid, name, value = e
        series = self.counters.get(name)
        if series is None:
            series = self.counters[name] = []
        series.append((t, value))

    def _holder(self, tid: int, start: int) -> int:
        """The native tid of the holder of the lock the wait of ``tid`` from ``start`` was
        for (its LOCK_HELD), 0 if not known."""
        ident = self.holders.pop((tid, start), 0)
        return self.idents.get(ident, 0) if ident else 0

    def thread_start(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, target_tid, _name, ident, _parent = e
        if ident:
            self.idents[ident] = target_tid or tid
        target = self.thread_of(target_tid or tid)
        if target.start_evt < 0:
            target.start_evt = t
        target.info_last = t

    def thread_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, target_tid = e
        self.thread_of(target_tid or tid).end_evt = t

    def thread_info(self, e: Event, th: ThreadMachine) -> None:
        """THREAD_INFO and THREAD_NAME: the thread was alive then."""
        target = self.thread_of(e.arg("tid") or e.thread)
        if e.kind is Kind.THREAD_INFO and e.arg("ident"):
            self.idents[e.arg("ident")] = target.tid
        if target.first < 0:
            target.first = e.time
        target.info_last = e.time

    def user_task_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, parent, name = e
        self.utasks[task_id] = UserTask(task_id, name, parent, t, None, tid, [], [])

    def user_task_info(self, e: Event, th: ThreadMachine) -> None:
        _kind, _t, tid, task_id, parent, name = e
        if task_id not in self.utasks:
            self.utasks[task_id] = UserTask(
                task_id, name, parent, self.start, None, tid, [], [], clipped=True
            )

    def user_task_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id = e
        ut = self.utasks.get(task_id)
        if ut is None:
            info = self.trace.user_tasks.get(task_id)
            name, parent = (info.name, info.parent) if info is not None else ("", 0)
            ut = self.utasks[task_id] = UserTask(
                task_id, name, parent, self.start, None, tid, [], [], clipped=True
            )
        if ut.end is None:
            ut.end = t

    def region_begin(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, name = e
        region = Region(name, t, None, tid, task_id)
        self.regions.append(region)
        self.open_regions.setdefault((tid, task_id), []).append(region)

    def region_end(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, name = e
        opened = self.open_regions.get((tid, task_id))
        if opened:
            for i in range(len(opened) - 1, -1, -1):
                if opened[i].name == name:
                    opened.pop(i).end = t
                    return
        self.regions.append(Region(name, self.start, t, tid, task_id, clipped=True))

    def marks_append(self, e: Event, th: ThreadMachine) -> None:
        self.marks.append(e)

    def log(self, e: Event, th: ThreadMachine) -> None:
        _kind, t, tid, task_id, category, message = e
        self.logs.append(Log(t, tid, task_id, category, message))

    # ----------------------------------------------------------------------------------
    # after the pass: close what is still open

    def finish(self) -> Model:
        threads = self._thread_timelines()
        # coroutines of the tasks announced by create_task: an unannounced task's stacks
        # may hold its creator's (an eager first step runs inside the creator's step)
        self.announced = {tk.coro for tk in itertools.chain(self.tasks.values(), self.finished) if tk.coro}
        self.announced.update(info.coro for info in self.trace.tasks.values() if info.coro)
        tasks = {task_id: self._task_timeline(tk) for task_id, tk in self.tasks.items()}
        finished = [self._task_timeline(tk) for tk in self.finished]
        loops = loop_timelines(self, tasks)
        sample_times = attach_stalls(self, loops)
        self._attach_to_user_tasks()
        return Model(
            pools=pools_of(self.pool_events, threads, self.start, self.end),
            trace=self.trace,
            start=self.start,
            end=self.end,
            threads=dict(sorted(threads.items())),
            tasks=tasks,
            finished_tasks=finished,
            loops=loops,
            user_tasks=self.utasks,
            regions=self.regions,
            gc_pauses=self.gc_pauses,
            samples=self.samples,
            wakes=self.wakes,
            counters=self.counters,
            logs=self.logs,
            data_loss=list(self.trace.data_loss),
            sampling_interval_ns=sampling_interval(self.counters, sample_times),
            blocks=self._blocks(threads),
            marks=self.marks,
        )

    def _blocks(self, threads: dict[int, ThreadTimeline]) -> list[Block]:
        """Blocks clipped to their thread's timeline, those still open ending with it."""
        out: list[Block] = []
        for b in self.blocks:
            tl = threads.get(b.tid)
            if tl is not None and (b.start < tl.start or b.end > tl.end):
                b = b._replace(start=max(b.start, tl.start), end=min(max(b.end, tl.start), tl.end))
            out.append(b)
        for tid, th in self.threads.items():
            tl = threads[tid]
            for entry in th.stack:
                if entry[0] is BLOCKED:
                    begin = min(max(entry[5], tl.start), tl.end)
                    holder = self._holder(tid, entry[5]) if self.holders else 0
                    out.append(Block(tid, begin, tl.end, entry[1], entry[2], 0, entry[3], holder))
        out.sort(key=lambda b: b.start)
        return out

    def _thread_timelines(self) -> dict[int, ThreadTimeline]:
        """Each thread's bounds (start/end events, else its first and last sign of life)."""
        start, end = self.start, self.end
        names = self.trace.threads
        out: dict[int, ThreadTimeline] = {}
        for tid, th in self.threads.items():
            signs = [x for x in (th.start_evt, th.first) if x >= 0]
            first = start if th.early else min(signs) if signs else -1
            if first < 0:
                first = th.info_last if th.info_last >= 0 else start
            t_start = max(start, min(first, end))
            if th.end_evt >= 0:
                t_end = th.end_evt
            elif max(th.last, th.info_last) >= self.last_gen_start:
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
            out[tid] = ThreadTimeline(
                tid=tid,
                name=name,
                start=t_start,
                end=t_end,
                intervals=intervals,
                is_loop_thread=bool(th.busy or th.loop_marks or th.open_step or th.open_cb),
                is_pyflight=name.startswith("pyflight-"),
            )
        for th, t, generation, collected, uncollectable in self.pending_gc:
            tl = out[th.tid]
            self.gc_pauses.append(GCPause(min(tl.start, t), t, generation, collected, uncollectable, th.tid))
        self.gc_pauses.sort()
        return out

    def _task_timeline(self, tk: TaskMachine) -> TaskTimeline:
        t_end = tk.done if tk.done is not None else tk.stop if tk.stop is not None else self.end
        if tk.step_open is not None:
            tk.steps.append(Step(tk.step_open, t_end, tk.thread))
        o = tk.open
        if tk.done is None and t_end > o[0]:
            tk.add(Interval(o[0], t_end, o[1], o[2], o[3], o[4], o[5]))
        if self.idle_ends.get(tk.thread):  # its waits were split where the loop woke (TaskMachine.add)
            tk.delays = tk.idle_delays
        info = self.trace.tasks.get(tk.id)
        return TaskTimeline(
            id=tk.id,
            name=tk.name or (info.name if info else ""),
            coro=tk.coro or (info.coro if info else "") or _coro_from_stacks(tk.intervals, self.announced),
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
            columns=tk.columns,
            sent=tk.sent or [],
            timeouts=tk.timeouts or [],
        )

    def _attach_to_user_tasks(self) -> None:
        utasks = self.utasks
        for region in self.regions:
            ut = utasks.get(region.task)
            if ut is not None:
                ut.regions.append(region)
        for log in self.logs:
            if log.task:
                ut = utasks.get(log.task)
                if ut is not None:
                    ut.logs.append((log.time, log.category, log.message))
        for ut in utasks.values():
            info = self.trace.user_tasks.get(ut.id)
            if info is not None and not ut.name:
                ut.name = info.name


#: asyncio's step of a task: the frames outside it are the event loop's, inside it the task's
_STEP_FUNCTIONS = frozenset(("BaseEventLoop._run_once", "Handle._run"))


def _coro_from_stacks(intervals: Sequence[Interval], announced: set[str]) -> str:
    """The coroutine of a task never announced: made with ``asyncio.Task(...)`` directly
    (aiohttp's request handlers on 3.12+), no ``create_task`` to see it. The outermost
    frame its waits' stacks have inside the loop's step, past asyncio's own and past the
    coroutines of announced tasks (an eager first step runs inside its creator's step,
    whose frames are outside it); "" if none of its waits has a stack."""
    for iv in intervals:
        stack = iv.stack
        if not stack:
            continue
        for i in range(len(stack) - 1, 0, -1):
            frame = stack[i]
            if frame.function in _STEP_FUNCTIONS and "asyncio" in frame.file:
                for inner in reversed(stack[:i]):
                    if inner.function not in announced and "/asyncio/" not in inner.file.replace("\\", "/"):
                        return inner.function
                break
    return ""


def _report(progress: Callable[[float], None], fraction: float) -> None:
    try:
        progress(fraction)
    except Exception:
        pass  # a progress bar must not stop the build


def _site_stacks(events: Sequence[Event]) -> dict[int, Stack]:
    """TASK_BLOCK's site -> the first stack recorded with it (most TASK_BLOCKs of a site
    leave the stack out; it is recorded at most once a second per site)."""
    out: dict[int, Stack] = {}
    k_block = Kind.TASK_BLOCK
    for e in events:
        if e.kind is k_block:
            try:
                _kind, _t, _tid, _task, _reason, _obj, _what, site, stack = e
            except ValueError:
                continue
            if site and stack and site not in out:
                out[site] = program_stack(stack)
    return out


def sampling_interval(counters: dict[str, list[tuple[int, int]]], sample_times: dict[int, list[int]]) -> int:
    """The sampler's period: what it said it used, else the typical gap between samples."""
    said = counters.get(SAMPLER_INTERVAL_COUNTER)
    if said:
        return int(statistics.median(v for _t, v in said)) * 1000
    gaps: list[int] = []
    for times in sample_times.values():
        gaps.extend(b - a for a, b in itertools.pairwise(times) if b > a)
        if len(gaps) > 10000:
            break
    return int(statistics.median(gaps)) if gaps else 0
