"""The event loops of a model: busy intervals (steps and callbacks) assigned to the loop
running on their thread at the time, idle waits, and stalls with their stacks."""

from __future__ import annotations

import itertools
import operator
from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyflight.analysis.model import (
    Interval,
    IntervalColumns,
    LoopTimeline,
    Sample,
    Stall,
    State,
    TaskTimeline,
)

if TYPE_CHECKING:
    from pyflight.analysis.builder import Builder

RUNNING, IDLE = State.RUNNING, State.IDLE
#: ``Interval`` without the NamedTuple's Python-level ``__new__`` (as in builder.py)
_new: Callable[[type[Interval], tuple[Any, ...]], Interval] = tuple.__new__  # type: ignore[assignment]


def _loop_of(loops: dict[int, LoopTimeline], loop: int, tid: int) -> LoopTimeline:
    tl = loops.get(loop)
    if tl is None:
        tl = loops[loop] = LoopTimeline(loop, tid, [], [], [], [])
    return tl


def loop_timelines(builder: Builder, tasks: dict[int, TaskTimeline]) -> dict[int, LoopTimeline]:
    """Busy intervals per thread, assigned to the loop running on it at the time (with
    their columns: a busy loop has a busy interval per step, half a million on a big
    trace)."""
    end = builder.end
    loops: dict[int, LoopTimeline] = {}
    columns: dict[int, tuple[list[int], list[int]]] = {}  # loop -> starts, ends of its busy
    names: dict[int, str] = {}  # task id -> its name
    for tid, th in builder.threads.items():
        if th.open_step is not None:
            th.busy.append((th.open_step[0], end, th.open_step[1], ""))
        if th.open_cb is not None:
            th.busy.append((th.open_cb[0], end, 0, th.open_cb[1]))
        if not th.busy:
            continue
        marks = th.loop_marks
        mark_times = [m[0] for m in marks]
        current: int | None = None
        add = add_start = add_end = None
        for b_start, b_end, task_id, cb_name in th.busy:
            if len(marks) > 1:
                loop = marks[max(bisect_right(mark_times, b_start) - 1, 0)][1]
            elif marks:
                loop = marks[0][1]
            else:
                loop = -tid  # steps seen, loop never named: one anonymous loop per thread
            if loop != current or add is None:
                current = loop
                add = _loop_of(loops, loop, tid).busy.append
                cols = columns.get(loop)
                if cols is None:
                    cols = columns[loop] = ([], [])
                add_start, add_end = cols[0].append, cols[1].append
            if task_id:
                detail = names.get(task_id)
                if detail is None:
                    tt = tasks.get(task_id)
                    detail = names[task_id] = tt.name if tt is not None else str(task_id)
            else:
                detail = cb_name
            add(_new(Interval, (b_start, b_end, RUNNING, None, task_id, (), detail)))
            add_start(b_start)  # type: ignore[misc]
            add_end(b_end)  # type: ignore[misc]
    for loop, idle in builder.idle_by_loop.items():
        _loop_of(loops, loop, builder.loop_tid.get(loop, 0)).idle.extend(idle)
    for loop, began in builder.idle_open.items():
        idle_iv = Interval(began, end, IDLE, None, loop, (), "")
        _loop_of(loops, loop, builder.loop_tid.get(loop, 0)).idle.append(idle_iv)
    lag = [(t, v * 1000) for t, v in builder.counters.get("loop_lag_us", [])]
    for lt in loops.values():
        starts, ends = columns.get(lt.loop, ([], []))
        if len(starts) == len(lt.busy) and all(map(operator.lt, starts, itertools.islice(starts, 1, None))):
            # already in order (sorting would keep it): the columns stand
            n = len(starts)
            lt.busy_columns = IntervalColumns(starts, ends, [RUNNING] * n, [None] * n)
        else:
            lt.busy.sort()
        lt.idle.sort()
        lt.lag = lag
    return loops


def attach_stalls(builder: Builder, loops: dict[int, LoopTimeline]) -> dict[int, list[int]]:
    """LOOP_STALL events -> ``Stall``s on their loops, widened to the busy interval
    they fall in, with the samples taken during them; returns sample times by thread."""
    sample_times: dict[int, list[int]] = {}
    sample_lists: dict[int, list[Sample]] = {}
    for s in builder.samples:
        lst = sample_lists.get(s.tid)
        if lst is None:
            lst = sample_lists[s.tid] = []
            sample_times[s.tid] = []
        lst.append(s)
        sample_times[s.tid].append(s.time)

    stalls: dict[tuple[int, int, int], list[Any]] = {}  # (loop, start, task) -> [end, stacks]
    busy_starts: dict[int, list[int]] = {}
    for t, loop, task_id, duration, stack in builder.stall_events:
        known = loops.get(loop)
        s_start, s_end = max(builder.start, t - duration), t
        if known is not None:
            starts = busy_starts.get(loop)
            if starts is None:
                starts = busy_starts[loop] = [b.start for b in known.busy]
            i = bisect_right(starts, t) - 1
            if i >= 0 and known.busy[i].end >= t - 1:
                s_start, s_end = known.busy[i].start, known.busy[i].end
        key = (loop, s_start, task_id)
        entry = stalls.get(key)
        if entry is None:
            stalls[key] = [s_end, [stack] if stack else []]
        else:
            entry[0] = max(entry[0], s_end)
            if stack:
                entry[1].append(stack)
    for (loop, s_start, task_id), (s_end, stacks) in sorted(stalls.items()):
        lt = loops.get(loop) or _loop_of(loops, loop, builder.loop_tid.get(loop, 0))
        times = sample_times.get(lt.tid)
        if times:
            lo_i = bisect_right(times, s_start - 1)
            hi_i = bisect_right(times, s_end)
            stacks = stacks + [s.stack for s in sample_lists[lt.tid][lo_i:hi_i] if s.stack]
        lt.stalls.append(Stall(s_start, s_end, task_id, s_end - s_start, stacks))
    return sample_times
