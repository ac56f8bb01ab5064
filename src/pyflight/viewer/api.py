"""The JSON API of the interactive timeline, drawn from the one analysis model.

``TimelineApi(model)`` lists the model's rows (threads, event loops, asyncio tasks
grouped by coroutine, user tasks and regions in lanes, GC, counters, samples) and lays
each out with its levels of detail (:mod:`pyflight.viewer.lod`) on its first use; each
method answers one request.
It needs only the model, so the timeline is served while the rules still run: the
findings are handed over later (:meth:`TimelineApi.set_findings`).
Times sent to the browser are ns since the start of the trace (monotonic ns since boot
do not fit a JavaScript number after 104 days of uptime); every string is the trace's own
text, which the page shows with ``textContent`` only.
"""

from __future__ import annotations

import collections
import functools
import gc
import heapq
import itertools
import operator
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyflight.analysis.cpu import UNTRACED
from pyflight.analysis.frames import library_wait, wait_name
from pyflight.analysis.model import Interval, IntervalColumns, State
from pyflight.analysis.profiles import frame_label
from pyflight.analysis.queries import within
from pyflight.core.events import IO_SENDS, BlockReason
from pyflight.viewer.lod import FAST, FAST_ERRORS, LodRow

if TYPE_CHECKING:
    from pyflight.analysis.model import LoopTimeline, Model, Sample, TaskTimeline
    from pyflight.analysis.rules.finding import Finding
    from pyflight.format.reader import Frame

__all__ = ["Row", "TimelineApi"]

MAX_WIDTH = 8192  # px: a request for more is answered at this width
MAX_LANES = 12  # user tasks / regions of one name overlapping more than this share the last lane
TASK_ROWS = 30  # a coroutine with more tasks than this gets lanes (tasks one after another), not a row each
MAX_TASK_LANES = 200
WAKE_SLACK = 2_000_000  # ns: a wake-up recorded this long after the end of a wait still counts
FLAME_MAX_NODES = 4_000
#: What a state code means where its name does not say it: the legend's tooltips (the
#: words the model's detail uses)
CODE_NOTES = {"blocked:other": UNTRACED}
#: ns: how much farther a finding's worst moment counts a slice on another thread than the
#: one its evidence names, or a slice whose stack lacks its culprit (more than the window
#: searched, so any slice that matches wins)
_MISMATCH_NS = 10_000_000
_START = operator.itemgetter(0)
_GET_START = operator.attrgetter("start")
_GET_END = operator.attrgetter("end")
_GET_STATE = operator.attrgetter("state")
_GET_REASON = operator.attrgetter("reason")


class Row:
    """One timeline row; ``refs[k]`` is the model object behind raw slice ``k``.

    A row's slices are laid out on first use (``lod``, ``refs``, ``owners``: ``make``
    returns them), not when the timeline is served: a big trace has millions of slices,
    and the page's first request needs only the rows on screen. Counter rows have
    ``points`` and no ``lod``."""

    def __init__(
        self,
        id: int,
        kind: str,  # thread | loop | stalls | task | usertask | region | gc | samples | counter
        name: str,
        group: str,
        make: Callable[[], tuple[LodRow, list[Any], list[Any] | None]] | None = None,
        tid: int = 0,  # the thread a thread or samples row is about
        task: int = 0,  # the asyncio task of a task row
        points: list[tuple[int, int]] | None = None,  # counter rows
    ) -> None:
        self.id, self.kind, self.name, self.group = id, kind, name, group
        self.tid, self.task = tid, task
        self.points = points if points is not None else []
        self._make = make
        self._lod: LodRow | None = None
        self._refs: list[Any] = []
        self._owners: list[Any] | None = None  # a lane of tasks: the TaskTimeline of each raw slice
        self._lock = threading.Lock()  # requests and the warm-up build a row once

    def _laid_out(self) -> None:
        if self._make is not None:
            with self._lock:
                make = self._make
                if make is not None:
                    self._lod, self._refs, self._owners = make()
                    self._make = None

    @property
    def lod(self) -> LodRow | None:
        self._laid_out()
        return self._lod

    @property
    def refs(self) -> list[Any]:
        self._laid_out()
        return self._refs

    @property
    def owners(self) -> list[Any] | None:
        self._laid_out()
        return self._owners

    def header(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "group": self.group}


def _lacks(ref: Any, function: str) -> bool:
    """Whether a slice has a stack and ``function`` is not in it (no stack: not known)."""
    stack = getattr(ref, "stack", None)
    if not stack:
        return False
    return all(f.function != function for f in stack)


def _stack(stack: tuple[Frame, ...] | None) -> list[dict[str, Any]]:
    return [{"function": f.function, "file": f.file, "line": f.line} for f in stack or ()]


class TimelineApi:
    def __init__(self, model: Model, findings: list[Finding] | None = None) -> None:
        self.model = model
        #: None while the rules still run
        self.findings_list: list[Finding] | None = None if findings is None else list(findings)
        self.origin = self.model.start
        self.duration = max(1, self.model.end - self.model.start)
        self.codes: list[str] = []
        self._code_of: dict[str, int] = {}
        self.rows: list[Row] = []
        self._thread_row: dict[int, Row] = {}
        self._tasks: list[tuple[Any, int]] = []  # (TaskTimeline, its row), for search
        self._interval_codes: dict[tuple[Any, Any], int] = {}
        self._samples_by_time: list[Sample] = sorted(self.model.samples, key=lambda s: s.time)
        self._sample_times = [s.time for s in self._samples_by_time]
        self._samples_of: dict[int, list[Sample]] = collections.defaultdict(list)
        for sample in self._samples_by_time:
            self._samples_of[sample.tid].append(sample)
        self._wakes_of_thread: dict[int, list[Any]] = collections.defaultdict(list)
        self._wakes_of_task: dict[int, list[Any]] = collections.defaultdict(list)
        for wake in sorted(self.model.wakes, key=lambda w: w.time):
            if wake.task:
                self._wakes_of_task[wake.task].append(wake)
            else:
                self._wakes_of_thread[wake.target].append(wake)
        # lock waits whose holder is known (LOCK_HELD): tid -> sorted (start, end, holder)
        self._held_by: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
        # socket calls that ran into their timeout: tid -> sorted (start, end)
        self._timed_out: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
        for block in self.model.blocks:
            if block.holder:
                self._held_by[block.tid].append((block.start, block.end, block.holder))
            if block.timed_out:
                self._timed_out[block.tid].append((block.start, block.end))
        self._functions: dict[tuple[str, str, int], list[tuple[int, int]]] | None = None
        self._build_rows()

    # ------------------------------------------------------------------ layout

    def code(self, name: str) -> int:
        code = self._code_of.get(name)
        if code is None:
            code = self._code_of[name] = len(self.codes)
            self.codes.append(name)
        return code

    def _register_codes(self) -> None:
        """Every state code a row can use, before any row is laid out: the page reads the
        code table once (``/api/meta``), and rows are laid out later, on first use."""
        for state in State:  # every state has a code, in the legend even if absent
            self.code(state.value)
            for reason in (None, *BlockReason):
                self._state_code(state, reason)
        for name in ("stall", "task", "region"):
            self.code(name)
        for state in State:
            self.code(f"sample:{state.value}")

    def _interval_code(self, iv: Interval) -> int:
        return self._state_code(iv.state, iv.reason)

    def _state_code(self, state_: Any, reason: Any) -> int:
        # keyed by identity: the states and reasons are enum members, whose hash is Python code
        key = (id(state_), id(reason))
        code = self._interval_codes.get(key)
        if code is None:
            state = state_.value if isinstance(state_, State) else str(state_)
            if reason is not None and state_ is State.BLOCKED:
                state = f"{state}:{reason.name.lower()}"
            code = self._interval_codes[key] = self.code(state)
        return code

    def _interval_columns(
        self, intervals: list[Interval], columns: IntervalColumns | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """Starts, ends and state codes of model intervals, as parallel lists (no tuple per
        interval: a big trace has millions; every (state, reason) has its code already),
        from the ``columns`` the builder made with them if given (a pass over the
        intervals themselves costs ~0.2 s per million: they are scattered in memory)."""
        if columns is not None and len(columns.starts) == len(intervals):
            starts, ends = columns.starts, columns.ends
            states, reasons = columns.states, columns.reasons
        else:
            starts = list(map(_GET_START, intervals))
            ends = list(map(_GET_END, intervals))
            states, reasons = list(map(_GET_STATE, intervals)), list(map(_GET_REASON, intervals))
        try:
            if FAST is not None:  # C: one pass, no tuple per interval
                codes = FAST.codes(states, reasons, self._interval_codes)
            else:
                ids = zip(map(id, states), map(id, reasons), strict=True)
                codes = list(map(self._interval_codes.__getitem__, ids))
        except KeyError:  # not a State and a BlockReason: named on the way
            codes = [self._interval_code(iv) for iv in intervals]
        return starts, ends, codes

    def _row(
        self,
        kind: str,
        name: str,
        group: str,
        make: Callable[[], tuple[LodRow, list[Any], list[Any] | None]],
        **kw: Any,
    ) -> Row:
        """A row laid out by ``make`` on first use."""
        row = Row(len(self.rows), kind, name, group, make, **kw)
        self.rows.append(row)
        return row

    def _columns_row(
        self, starts: list[int], ends: list[int], codes: list[int], refs: list[Any]
    ) -> tuple[LodRow, list[Any], list[Any] | None]:
        """A row's slices from parallel lists; sorted here unless already sorted and non-overlapping."""
        durations = _ordered_durations(starts, ends)
        if durations is not None:
            return LodRow(starts, ends, codes, durations), refs, None
        return self._slices_row(list(zip(starts, ends, codes, refs, strict=True)))

    def _intervals_row(
        self, intervals: list[Interval], columns: IntervalColumns | None = None
    ) -> tuple[LodRow, list[Any], list[Any] | None]:
        starts, ends, codes = self._interval_columns(intervals, columns)
        return self._columns_row(starts, ends, codes, list(intervals))

    @staticmethod
    def _slices_row(
        slices: list[tuple[Any, ...]], ordered: bool = False
    ) -> tuple[LodRow, list[Any], list[Any] | None]:
        """A row of ``(start, end, code, ref[, owner task])`` slices (sorted here unless
        ``ordered``: the caller made them sorted and non-overlapping)."""
        if not ordered and not _ordered([s[0] for s in slices], [s[1] for s in slices]):
            slices = sorted((s for s in slices if s[1] > s[0]), key=_START)
        elif slices and slices[-1][1] <= slices[-1][0]:
            slices = slices[:-1]
        starts, ends, codes, refs, *owners = zip(*slices, strict=True) if slices else ((), (), (), ())
        lod = LodRow(list(starts), list(ends), list(codes))
        return lod, list(refs), list(owners[0]) if owners else None

    def _loop_row(self, loop: LoopTimeline) -> tuple[LodRow, list[Any], list[Any] | None]:
        """Steps and callbacks (running) and idle waits of a loop in one row, as
        ``_no_overlap`` cuts them, on columns: a busy loop has a slice per step, and its
        few idle waits are merged into the (sorted) steps by bisection instead of sorting
        them all again."""
        running, idle = self.code("running"), self.code("idle")
        columns = loop.busy_columns
        if columns is not None and len(columns.starts) == len(loop.busy):
            busy_starts, busy_ends = columns.starts, columns.ends  # made with the intervals
        else:
            busy_starts, busy_ends = list(map(_GET_START, loop.busy)), list(map(_GET_END, loop.busy))
        busy_cols = _non_empty(busy_starts, busy_ends, [running] * len(loop.busy), loop.busy)
        idle_cols = _non_empty(
            list(map(_GET_START, loop.idle)),
            list(map(_GET_END, loop.idle)),
            [idle] * len(loop.idle),
            loop.idle,
        )
        if _sorted(busy_cols[0]) and _sorted(idle_cols[0]):
            # where a stable sort of busy + idle by start puts each idle wait
            places = [bisect_right(busy_cols[0], start) for start in idle_cols[0]]
            starts, ends, codes, refs = (
                _interleave(b, i, places) for b, i in zip(busy_cols, idle_cols, strict=True)
            )
        else:
            starts, ends, codes, refs = (b + i for b, i in zip(busy_cols, idle_cols, strict=True))
            order = sorted(range(len(starts)), key=starts.__getitem__)
            starts, ends, codes, refs = (
                list(map(column.__getitem__, order)) for column in (starts, ends, codes, refs)
            )
        durations = _ordered_durations(starts, ends)  # read once, for the levels too
        if durations is None:  # each cut where the next begins
            ends = list(map(min, ends, itertools.chain(itertools.islice(starts, 1, None), (ends[-1],))))
            starts, ends, codes, refs = _non_empty(starts, ends, codes, refs)
        return LodRow(starts, ends, codes, durations), refs, None

    def _build_rows(self) -> None:
        """Every row's header (the page lists them at once); their slices are laid out on
        first use (see ``Row``)."""
        model = self.model
        self._register_codes()
        threads = sorted(model.threads.values(), key=lambda t: (t.is_pyflight, t.start, t.tid))
        for th in threads:
            self._thread_row[th.tid] = self._row(
                "thread",
                th.name or f"thread {th.tid}",
                "pyflight threads" if th.is_pyflight else "threads",
                functools.partial(self._intervals_row, th.intervals),
                tid=th.tid,
            )
        for loop in model.loops.values():
            owner = model.threads.get(loop.tid)
            label = f"loop on {owner.name if owner else loop.tid}"
            self._row("loop", label, "event loops", functools.partial(self._loop_row, loop), tid=loop.tid)
            if loop.stalls:
                stall = self.code("stall")
                stalls = [(s.start, s.end, stall, s) for s in loop.stalls]
                self._row(
                    "stalls", f"stalls: {label}", "event loops", functools.partial(self._slices_row, stalls)
                )
        by_coro: dict[str, list[Any]] = collections.defaultdict(list)
        for tk in model.all_tasks():
            by_coro[tk.coro or tk.name or "task"].append(tk)
        for coro, tasks in sorted(by_coro.items(), key=lambda kv: -len(kv[1])):
            group = f"tasks: {coro}"
            if len(tasks) <= TASK_ROWS:
                for tk in sorted(tasks, key=lambda t: t.created):
                    make = functools.partial(self._intervals_row, tk.intervals, tk.columns)
                    row = self._row(
                        "task", tk.name or f"task {tk.id}", group, make, task=tk.id, tid=tk.thread
                    )
                    self._tasks.append((tk, row.id))
                continue
            lifetimes = [(tk.created, max(tk.end, tk.created + 1), 0, tk) for tk in tasks]
            for lane, members in enumerate(_lanes(lifetimes, MAX_TASK_LANES)):
                lane_tasks = [m[3] for m in members]
                make = functools.partial(self._task_lane_row, lane_tasks)
                row = self._row("task", f"{coro} ({lane + 1})", group, make)
                self._tasks.extend((tk, row.id) for tk in lane_tasks)
        user_code = self.code("task")
        by_name: dict[str, list[tuple[int, int, int, Any]]] = collections.defaultdict(list)
        for ut in model.user_tasks.values():
            by_name[ut.name].append((ut.start, ut.end if ut.end is not None else model.end, user_code, ut))
        for name, items in sorted(by_name.items()):
            for lane, slices in enumerate(_lanes(items)):
                make = functools.partial(self._slices_row, slices)
                self._row("usertask", name if lane == 0 else "", "user tasks", make)
        region_code = self.code("region")
        regions: dict[str, list[tuple[int, int, int, Any]]] = collections.defaultdict(list)
        for rg in model.regions:
            regions[rg.name].append((rg.start, rg.end if rg.end is not None else model.end, region_code, rg))
        for name, items in sorted(regions.items()):
            for lane, slices in enumerate(_lanes(items)):
                self._row(
                    "region",
                    name if lane == 0 else "",
                    "regions",
                    functools.partial(self._slices_row, slices),
                )
        if model.gc_pauses:
            gc_code = self.code(State.GC.value)
            for lane, slices in enumerate(_lanes([(p.start, p.end, gc_code, p) for p in model.gc_pauses])):
                self._row(
                    "gc", "GC pauses" if lane == 0 else "", "GC", functools.partial(self._slices_row, slices)
                )
        for tid, samples in self._samples_of.items():
            owner = model.threads.get(tid)
            make = functools.partial(self._samples_row, samples)
            self._row("samples", f"samples: {owner.name if owner else tid}", "samples", make, tid=tid)
        for name, points in sorted(model.counters.items()):
            self.rows.append(Row(len(self.rows), "counter", name, "counters", points=sorted(points)))

    def _task_lane_row(self, tasks: list[TaskTimeline]) -> tuple[LodRow, list[Any], list[Any] | None]:
        """Tasks of one coroutine that never overlap in time, in one row (``owners``: each
        slice's task): the tasks' columns one after the other (a lane of 6,000 short tasks
        is ~40,000 intervals: no tuple each) when that is in order, as it is unless tasks
        overlap where the lanes ran out."""
        starts: list[int] = []
        ends: list[int] = []
        codes: list[int] = []
        refs: list[Any] = []
        owners: list[Any] = []
        for tk in tasks:
            columns = self._interval_columns(tk.intervals, tk.columns)
            starts += columns[0]
            ends += columns[1]
            codes += columns[2]
            refs += tk.intervals
            owners += [tk] * len(tk.intervals)
        durations = _ordered_durations(starts, ends) if starts else None
        if durations is not None:  # what _no_overlap keeps as it is
            return LodRow(starts, ends, codes, durations), refs, owners
        slices = [(iv.start, iv.end, self._interval_code(iv), iv, tk) for tk in tasks for iv in tk.intervals]
        return self._slices_row(_no_overlap(slices), ordered=True)

    def _samples_row(self, samples: list[Sample]) -> tuple[LodRow, list[Any], list[Any] | None]:
        """One slice per sample, until the next one (at most the sampling interval)."""
        width = max(1, self.model.sampling_interval_ns or 1_000_000)
        slices = []
        for k, s in enumerate(samples):
            nxt = samples[k + 1].time if k + 1 < len(samples) else s.time + width
            slices.append((s.time, min(s.time + width, nxt), self.code(f"sample:{s.state.value}"), s))
        return self._slices_row(slices)

    def warm_up(self) -> None:
        """Lay out every row and build its levels of detail, top rows first (run in a
        background thread: a request for a row not built yet builds it itself)."""
        # the model is millions of long-lived objects: without this, the collections the
        # levels' allocations trigger walk all of them, again and again (seconds each)
        gc.freeze()
        for row in self.rows:
            if row.lod is not None:
                row.lod.levels  # noqa: B018 (built on first access)

    # ------------------------------------------------------------------ requests

    def meta(self) -> dict[str, Any]:
        trace = self.model.trace
        return {
            "name": getattr(trace, "path", "") or "",
            "duration": self.duration,
            "codes": self.codes,
            "notes": CODE_NOTES,
            "states": [s.value for s in State],
            "rows": [row.header() for row in self.rows],
            "sampling_interval_ns": self.model.sampling_interval_ns,
        }

    def slices(self, t0: int, t1: int, width: int, row_ids: list[int]) -> dict[str, Any]:
        t0, t1 = max(0, t0), min(self.duration, t1)
        width = max(1, min(MAX_WIDTH, width))
        ns_per_px = max(1.0, (t1 - t0) / width)
        out: dict[str, Any] = {}
        for rid in row_ids:
            if not 0 <= rid < len(self.rows):
                continue
            row = self.rows[rid]
            if row.lod is None:
                out[str(rid)] = {
                    "p": _downsample(row.points, t0 + self.origin, t1 + self.origin, ns_per_px, self.origin)
                }
                continue
            got = row.lod.query(t0 + self.origin, t1 + self.origin, ns_per_px, self.origin)
            out[str(rid)] = {
                "s": got.starts,
                "e": got.ends,
                "c": got.codes,
                "n": got.counts,
                "i": got.raw,
                "l": [self._label(row, k) if k >= 0 else "" for k in got.raw],
            }
        return {"t0": t0, "t1": t1, "ns_per_px": ns_per_px, "rows": out}

    def _label(self, row: Row, k: int) -> str:
        ref = row.refs[k]
        if isinstance(ref, Interval):
            if ref.detail:
                return ref.detail
            if ref.reason is not None and ref.state is State.BLOCKED:
                return wait_name(ref.reason, ref.stack)  # "select", or what it waited for
            return ref.state.value
        name = getattr(ref, "name", None)
        if isinstance(name, str):
            return name
        if row.kind == "samples" and ref.stack:
            return str(ref.stack[0].function)
        if row.kind == "gc":
            return f"gen {ref.generation}"
        return ""

    def slice_details(self, rid: int, k: int) -> dict[str, Any] | None:
        if not 0 <= rid < len(self.rows):
            return None
        row = self.rows[rid]
        if row.lod is None or not 0 <= k < len(row.refs):
            return None
        raw = row.lod.raw
        start, end = raw.starts[k], raw.ends[k]
        ref = row.refs[k]
        out: dict[str, Any] = {
            "row": rid,
            "i": k,
            "row_name": row.name,
            "kind": row.kind,
            "state": self.codes[raw.codes[k]],
            "label": self._label(row, k),
            "start": start - self.origin,
            "end": end - self.origin,
            "duration": end - start,
            "stack_start": [],
            "stack_end": [],
        }
        if isinstance(ref, Interval):
            out["reason"] = ref.reason.name.lower() if ref.reason is not None else None
            out["detail"] = ref.detail
            if not ref.detail and ref.state is State.BLOCKED:
                waited = library_wait(ref.stack) if ref.stack else None
                if waited is not None:  # the library call it waited in, and who called it
                    out["detail"] = waited.what + (
                        f", called at {frame_label(waited.site)}" if waited.site else ""
                    )
            out["object"] = ref.obj
            if ref.reason is BlockReason.IO and ref.obj and self.model.trace.meta.get("blocking.io_sends"):
                out["object"] = ref.obj & ~IO_SENDS  # the socket; the bit says which way
                out["detail"] = out["detail"] or ("sending" if ref.obj & IO_SENDS else "receiving")
            thread_io = ref.reason is BlockReason.IO and row.kind == "thread"
            if thread_io and within(self._timed_out.get(row.tid), start):
                out["detail"] = (out["detail"] + ", " if out["detail"] else "") + "ran into its timeout"
            out["stack_start"] = _stack(ref.stack)
            out["stack_end"] = _stack(self._stack_near_end(row, k))
            if ref.state is State.BLOCKED or ref.state is State.READY:
                task = row.owners[k].id if row.owners is not None else row.task
                out["waker"] = self._waker(row, task, start, end)
            if ref.state is State.BLOCKED and row.kind == "thread":
                out["holder"] = self._holder(row.tid, start)
            if row.owners is not None:  # ids of finished tasks are reused: the object names it
                owner = row.owners[k]
                out["task"] = owner.name or f"task {owner.id}"
        elif row.kind == "samples":
            out["stack_start"] = _stack(ref.stack)
            out["reason"] = ref.reason.name.lower() if ref.reason is not None else None
        elif row.kind == "stalls":
            stacks = ref.stacks or []
            out["stack_start"] = _stack(stacks[0] if stacks else ())
            out["stack_end"] = _stack(stacks[-1] if stacks else ())
        elif row.kind == "gc":
            out["detail"] = (
                f"generation {ref.generation}, {ref.collected} collected, {ref.uncollectable} uncollectable"
            )
        elif row.kind in ("usertask", "region"):
            logs = getattr(ref, "logs", None) or []
            out["logs"] = [{"time": t - self.origin, "category": c, "message": m} for t, c, m in logs[:200]]
        return out

    def _stack_near_end(self, row: Row, k: int) -> tuple[Frame, ...]:
        """The stack at the end of raw slice ``k``: the last sample inside it, else the
        stack of the slice that follows (the event that ended it)."""
        raw = row.lod.raw if row.lod else None
        if raw is None:
            return ()
        start, end = raw.starts[k], raw.ends[k]
        samples = self._samples_of.get(row.tid, []) if row.kind == "thread" else []
        if samples:
            times = [s.time for s in samples]  # small per thread; bisect on a copy is fine
            j = bisect_right(times, end) - 1
            if j >= 0 and samples[j].time >= start and samples[j].stack:
                return tuple(samples[j].stack)
        if k + 1 < len(row.refs):
            nxt = row.refs[k + 1]
            if isinstance(nxt, Interval):
                return nxt.stack
        return ()

    def _waker(self, row: Row, task: int, start: int, end: int) -> dict[str, Any] | None:
        wakes = (
            self._wakes_of_task.get(task, [])
            if row.kind == "task"
            else self._wakes_of_thread.get(row.tid, [])
        )
        times = [w.time for w in wakes]
        j = bisect_right(times, end + WAKE_SLACK) - 1
        while j >= 0 and wakes[j].time >= start:
            wake = wakes[j]
            if wake.time <= end + WAKE_SLACK:
                return self._wake_dict(wake)
            j -= 1
        return None

    def _holder(self, tid: int, start: int) -> dict[str, Any] | None:
        """Who held the lock a wait of ``tid`` covering ``start`` was for (a slice is a
        piece of its block: a GC pause or a wake-up cuts it), with their slice then."""
        blocks = self._held_by.get(tid)
        if not blocks:
            return None
        j = bisect_right(blocks, (start, 1 << 62, 0)) - 1
        if j < 0 or not blocks[j][0] <= start < blocks[j][1]:
            return None
        holder = blocks[j][2]
        holder_row = self._thread_row.get(holder)
        name = holder_row.name if holder_row else str(holder)
        out: dict[str, Any] = {"thread": name, "row": None, "i": None}
        if holder_row is not None and holder_row.lod is not None:
            raw = holder_row.lod.raw
            i = bisect_right(raw.starts, start) - 1
            if i >= 0:
                out["row"], out["i"] = holder_row.id, i
        return out

    def _wake_dict(self, wake: Any) -> dict[str, Any]:
        waker_row = self._thread_row.get(wake.waker)
        out: dict[str, Any] = {
            "time": wake.time - self.origin,
            "thread": waker_row.name if waker_row else str(wake.waker),
            "reason": wake.reason.name.lower() if wake.reason is not None else None,
            "row": None,
            "i": None,
        }
        if waker_row is not None and waker_row.lod is not None:
            raw = waker_row.lod.raw
            j = bisect_right(raw.starts, wake.time) - 1
            # the waker's slice then; or its last one: a wake-up is dated when the waiter
            # resumed, which on a busy machine can be well after the waker released the
            # lock and its thread ended
            if j >= 0 and (wake.time <= raw.ends[j] + WAKE_SLACK or j == len(raw.starts) - 1):
                out["row"], out["i"] = waker_row.id, j
                out["slice_start"] = raw.starts[j] - self.origin
                out["slice_end"] = raw.ends[j] - self.origin
        return out

    def range_summary(self, t0: int, t1: int, row_ids: list[int] | None = None) -> dict[str, Any]:
        """Per-state totals of each row and of all, and the flame graph of the samples in ``[t0, t1)``."""
        t0, t1 = max(0, t0), min(self.duration, t1)
        a, b = t0 + self.origin, t1 + self.origin
        rows = [self.rows[r] for r in row_ids if 0 <= r < len(self.rows)] if row_ids else self.rows
        per_row = []
        overall: dict[str, int] = {}
        for row in rows:
            if (not row_ids and row.kind not in ("thread", "task", "loop")) or row.lod is None:
                continue
            totals = row.lod.totals(a, b)
            if not totals:
                continue
            named = {self.codes[c]: ns for c, ns in totals.items()}
            per_row.append({"row": row.id, "name": row.name, "kind": row.kind, "totals": named})
            if row.kind == "thread":
                for name, ns in named.items():
                    overall[name] = overall.get(name, 0) + ns
        tids = {row.tid for row in rows if row.kind in ("thread", "samples")} if row_ids else None
        lo, hi = bisect_left(self._sample_times, a), bisect_left(self._sample_times, b)
        samples = [s for s in self._samples_by_time[lo:hi] if tids is None or s.tid in tids]
        return {
            "t0": t0,
            "t1": t1,
            "totals": overall,
            "rows": per_row,
            "samples": len(samples),
            "flame": _flame(samples, self.model.sampling_interval_ns or 1),
        }

    def search(self, query: str, limit: int = 100) -> list[dict[str, Any]]:
        """Rows (threads, tasks, user tasks) by name, functions on stacks, log text."""
        q = query.strip().lower()
        if not q:
            return []
        hits: list[dict[str, Any]] = []
        for tk, rid in self._tasks:
            if q in (tk.name or "").lower() or q in (tk.coro or "").lower():
                hits.append(
                    {
                        "kind": "task",
                        "text": tk.name or f"task {tk.id}",
                        "detail": self.rows[rid].group,
                        "row": rid,
                        "t0": tk.created - self.origin,
                        "t1": max(tk.end, tk.created + 1) - self.origin,
                    }
                )
                if len(hits) >= limit:
                    return hits
        for row in self.rows:
            if row.kind != "task" and q in row.name.lower():
                first = row.lod.raw if row.lod and len(row.lod.raw) else None
                t0 = first.starts[0] - self.origin if first else 0
                t1 = first.ends[-1] - self.origin if first else self.duration
                hits.append(
                    {
                        "kind": row.kind,
                        "text": row.name,
                        "detail": row.group,
                        "row": row.id,
                        "t0": t0,
                        "t1": t1,
                    }
                )
                if len(hits) >= limit:
                    return hits
        for (function, file, line), places in self._function_index().items():
            if q in function.lower():
                rid, k = max(places, key=lambda p: self._raw_duration(*p))
                raw = self.rows[rid].lod.raw  # type: ignore[union-attr]
                hits.append(
                    {
                        "kind": "function",
                        "text": function,
                        "detail": f"{file}:{line} on {self.rows[rid].name}",
                        "row": rid,
                        "i": k,
                        "t0": raw.starts[k] - self.origin,
                        "t1": raw.ends[k] - self.origin,
                    }
                )
                if len(hits) >= limit:
                    return hits
        for log in self.model.logs:
            if q in log.message.lower() or q in log.category.lower():
                writer = self._thread_row.get(log.thread)
                t = log.time - self.origin
                hits.append(
                    {
                        "kind": "log",
                        "text": log.message,
                        "detail": log.category,
                        "row": writer.id if writer else None,
                        "t0": t,
                        "t1": t + 1,
                    }
                )
                if len(hits) >= limit:
                    break
        return hits

    def _raw_duration(self, rid: int, k: int) -> int:
        raw = self.rows[rid].lod.raw  # type: ignore[union-attr]
        return raw.ends[k] - raw.starts[k]

    def _function_index(self) -> dict[tuple[str, str, int], list[tuple[int, int]]]:
        """(function, file, line) -> (row, raw slice) places whose stack holds it (a few each)."""
        if self._functions is None:
            index: dict[tuple[str, str, int], list[tuple[int, int]]] = {}
            seen: dict[int, list[tuple[str, str, int]]] = {}
            for row in self.rows:
                if row.kind not in ("thread", "task", "samples"):
                    continue
                for k, ref in enumerate(row.refs):
                    stack = getattr(ref, "stack", None)
                    if not stack:
                        continue
                    names = seen.get(id(stack))
                    if names is None:
                        # in stack order (a set's order would follow the hash seed: search
                        # hits in another order on each run)
                        names = seen[id(stack)] = list(
                            dict.fromkeys((f.function, f.file, f.line) for f in stack)
                        )
                    for name in names:
                        places = index.setdefault(name, [])
                        if len(places) < 16:
                            places.append((row.id, k))
            self._functions = index
        return self._functions

    def set_findings(self, findings: list[Finding]) -> None:
        self.findings_list = list(findings)

    def findings(self) -> list[dict[str, Any]] | dict[str, Any]:
        """The findings, each with its worst moment; ``{"loading": true}`` while the rules run."""
        if self.findings_list is None:
            return {"loading": True}
        out = []
        for finding in self.findings_list:
            item = finding.to_dict()
            item.update(self._worst_moment(finding))
            out.append(item)
        return out

    def _worst_moment(self, finding: Finding) -> dict[str, Any]:
        """Where the finding's worst moment is: the slice that matches its evidence
        (``worst_at_s``, ``worst_ns``), else the longest slice whose stack holds the culprit."""
        evidence = finding.evidence or {}
        at_s, worst_ns = evidence.get("worst_at_s"), evidence.get("worst_ns")
        if isinstance(at_s, (int, float)):
            t = self.origin + int(at_s * 1e9)
            length = int(worst_ns) if isinstance(worst_ns, (int, float)) and worst_ns > 0 else 0
            # ``worst_at_s`` is rounded to the millisecond, so two slices can match it as
            # well (a lock holder's sleep that began as the waiter blocked): the one on the
            # thread the evidence names, with the culprit in its stack, is the finding's
            who = evidence.get("worst_waiter") or evidence.get("worst_thread")
            culprit_function = finding.culprit.function if finding.culprit is not None else None
            best: tuple[int, int, int] | None = None  # (badness, row, k)
            for row in self.rows:
                if row.kind not in ("thread", "task", "stalls", "gc", "loop") or row.lod is None:
                    continue
                raw = row.lod.raw
                elsewhere = _MISMATCH_NS if who and row.kind == "thread" and row.name != who else 0
                lo, hi = raw.span(t - 1_000_000, t + 1_000_000)
                for k in range(lo, hi):
                    if self.codes[raw.codes[k]] in ("running", "idle") and row.kind != "stalls":
                        continue
                    badness = (
                        abs(raw.starts[k] - t)
                        + (abs(raw.ends[k] - raw.starts[k] - length) if length else 0)
                        + elsewhere
                        + (_MISMATCH_NS if culprit_function and _lacks(row.refs[k], culprit_function) else 0)
                    )
                    if best is None or badness < best[0]:
                        best = (badness, row.id, k)
            if best is not None:
                raw = self.rows[best[1]].lod.raw  # type: ignore[union-attr]
                k = best[2]
                return {
                    "at": [raw.starts[k] - self.origin, raw.ends[k] - self.origin],
                    "row": best[1],
                    "i": k,
                }
            return {"at": [t - self.origin, t - self.origin + max(length, 1_000)], "row": None, "i": None}
        if finding.culprit is not None:
            culprit = finding.culprit
            places = self._function_index().get((culprit.function, culprit.file, culprit.line))
            if places is None:
                places = [
                    p for key, ps in self._function_index().items() if key[0] == culprit.function for p in ps
                ]
            if places:
                rid, k = max(places, key=lambda p: self._raw_duration(*p))
                raw = self.rows[rid].lod.raw  # type: ignore[union-attr]
                return {"at": [raw.starts[k] - self.origin, raw.ends[k] - self.origin], "row": rid, "i": k}
        return {"at": [0, self.duration], "row": None, "i": None}

    def histograms(self, limit: int = 5_000) -> list[dict[str, Any]]:
        """Durations of the finished user tasks of each name, each run's place for a zoom."""
        rows_of: dict[int, tuple[int, int]] = {}
        for row in self.rows:
            if row.kind == "usertask":
                for k, ref in enumerate(row.refs):
                    rows_of[id(ref)] = (row.id, k)
        groups: dict[str, list[list[int]]] = collections.defaultdict(list)
        for ut in self.model.user_tasks.values():
            if ut.end is None or ut.clipped:
                continue
            rid, k = rows_of.get(id(ut), (-1, -1))
            groups[ut.name].append([ut.end - ut.start, ut.start - self.origin, ut.end - self.origin, rid, k])
        out = []
        for name, runs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            runs.sort()
            if len(runs) > limit:  # keep the slowest runs and an even spread of the rest
                step = len(runs) / limit
                runs = [runs[int(i * step)] for i in range(limit - 100)] + runs[-100:]
            out.append({"name": name, "runs": runs})
        return out


def _ordered(starts: list[int], ends: list[int]) -> bool:
    """Each slice non-empty and ending before the next begins (checked at C speed)."""
    return all(map(operator.lt, starts, ends)) and all(
        map(operator.le, ends[:-1], itertools.islice(starts, 1, None))
    )


def _ordered_durations(starts: list[int], ends: list[int]) -> list[int] | None:
    """``_ordered``, with the slices' durations if so: a pass that reads every start and
    end (~0.15 us a slice on a big trace: the ints are scattered over the heap) is done
    once, for both this and the levels of detail. Where each slice ends with the very
    object the next one starts with (a model timeline's intervals) they touch: no need
    to read them again. In C if ``FAST`` (one pass instead of three)."""
    if FAST is not None:
        try:
            return FAST.ordered_durations(starts, ends)  # type: ignore[no-any-return]
        except FAST_ERRORS:
            pass
    return _ordered_durations_py(starts, ends)


def _ordered_durations_py(starts: list[int], ends: list[int]) -> list[int] | None:
    """``_ordered_durations`` in Python (the reference)."""
    durations = list(map(operator.sub, ends, starts))
    if durations and min(durations) <= 0:
        return None
    if all(map(operator.is_, ends, itertools.islice(starts, 1, None))) or all(
        map(operator.le, ends, itertools.islice(starts, 1, None))
    ):
        return durations
    return None


def _sorted(values: list[int]) -> bool:
    return all(map(operator.le, values, itertools.islice(values, 1, None)))


def _non_empty(
    starts: list[int], ends: list[int], codes: list[int], refs: list[Any]
) -> tuple[list[int], list[int], list[int], list[Any]]:
    """The columns without their empty slices (as is if there are none)."""
    keep = list(map(operator.lt, starts, ends))
    if all(keep):
        return starts, ends, codes, list(refs)
    return (
        list(itertools.compress(starts, keep)),
        list(itertools.compress(ends, keep)),
        list(itertools.compress(codes, keep)),
        list(itertools.compress(refs, keep)),
    )


def _interleave(first: list[Any], second: list[Any], places: list[int]) -> list[Any]:
    """``first`` with ``second[k]`` inserted before ``first[places[k]]`` (places sorted)."""
    out: list[Any] = []
    done = 0
    for item, place in zip(second, places, strict=True):
        out += first[done:place]
        out.append(item)
        done = place
    out += first[done:]
    return out


def _no_overlap(slices: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Sorted, each slice cut where the next begins (a row never overlaps itself)."""
    if _ordered([s[0] for s in slices], [s[1] for s in slices]):  # the usual case: as is
        return slices
    slices = [s for s in slices if s[1] > s[0]]
    if _ordered([s[0] for s in slices], [s[1] for s in slices]):  # only empty slices were in the way
        return slices
    slices.sort(key=_START)
    out = []
    for k, s in enumerate(slices):
        end = s[1]
        if k + 1 < len(slices) and slices[k + 1][0] < end:
            end = slices[k + 1][0]
        if end > s[0]:
            out.append((s[0], end, *s[2:]))
    return out


def _lanes(items: list[tuple[Any, ...]], most: int = MAX_LANES) -> list[list[tuple[Any, ...]]]:
    """Overlapping slices spread over lanes (the first that is free; a heap of lane ends);
    past ``most`` lanes, the last lane takes the rest (and cuts them)."""
    lanes: list[list[tuple[Any, ...]]] = []
    free: list[tuple[int, int]] = []  # (end, lane) heap
    for item in sorted(items, key=lambda s: (s[0], -s[1])):
        if free and free[0][0] <= item[0]:
            _, n = heapq.heappop(free)
        elif len(lanes) < most:
            n = len(lanes)
            lanes.append([])
        else:
            n = len(lanes) - 1
            free = [(end, lane) for end, lane in free if lane != n]
            heapq.heapify(free)
        lanes[n].append(item)
        heapq.heappush(free, (item[1], n))
    return [_no_overlap(lane) for lane in lanes]


def _downsample(
    points: list[tuple[int, int]], t0: int, t1: int, ns_per_px: float, origin: int
) -> list[list[int]]:
    """Counter points in ``[t0, t1]`` (and the one before), at most ~2 per pixel (min and max)."""
    times = [p[0] for p in points]
    lo = max(0, bisect_right(times, t0) - 1)
    hi = min(len(points), bisect_right(times, t1) + 1)
    out: list[list[int]] = []
    bucket = -1
    low = high = None
    for t, v in points[lo:hi]:
        b = int((t - t0) // ns_per_px)
        if b != bucket:
            if low is not None and high is not None:
                out.extend([low, high] if low != high else [low])
            bucket, low, high = b, [t - origin, v], [t - origin, v]
        else:
            if low is not None and v < low[1]:
                low = [t - origin, v]
            if high is not None and v > high[1]:
                high = [t - origin, v]
    if low is not None and high is not None:
        out.extend([low, high] if low != high else [low])
    out.sort()
    return out


def _flame(samples: list[Sample], weight: int) -> dict[str, Any]:
    """Samples as a tree ``{"name", "value", "children": [...]}``, root first (value in ns)."""
    root: dict[str, Any] = {"name": "all", "value": 0, "children": {}}
    nodes = 1
    for sample in samples:
        root["value"] += weight
        node = root
        for frame in reversed(sample.stack or ()):
            label = frame_label(frame)
            child = node["children"].get(label)
            if child is None:
                if nodes >= FLAME_MAX_NODES:
                    break
                child = node["children"][label] = {"name": label, "value": 0, "children": {}}
                nodes += 1
            child["value"] += weight
            node = child

    def finish(node: dict[str, Any]) -> dict[str, Any]:
        kids = sorted(node["children"].values(), key=lambda c: -c["value"])
        return {"name": node["name"], "value": node["value"], "children": [finish(c) for c in kids]}

    return finish(root)
