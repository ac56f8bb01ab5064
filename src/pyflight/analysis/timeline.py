"""One timeline of a trace: the slices, instants, flows and counters of every thread,
asyncio task and user task, that the Perfetto and Chrome exports (and any view that
draws a trace over time) all draw.

Blocks and asyncio task waits are paired here and only here (:func:`blocks`,
:func:`task_waits`). The model's thread intervals are flattened states (a GC pause inside
a block cuts it in two, a block carries no waker); the timeline keeps each block whole,
nested with the rest, and the flow from the thread that ended it.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

from pyflight.core.events import BlockReason, Kind, TaskOutcome
from pyflight.format.reader import Frame, Trace

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

# plain ints: comparing an event's kind with these is cheaper than with enum attributes
_BLOCK_BEGIN, _BLOCK_END = int(Kind.BLOCK_BEGIN), int(Kind.BLOCK_END)
_TASK_WAIT = int(Kind.TASK_WAIT)
_TASK_BLOCK = int(Kind.TASK_BLOCK)
_TASK_STEP_END = int(Kind.TASK_STEP_END)
_TASK_WAIT_ENDS = frozenset(
    int(k) for k in (Kind.TASK_READY, Kind.TASK_STEP_BEGIN, Kind.TASK_DONE, Kind.TASK_CREATE)
)


def is_pyflight_thread(trace: Trace, tid: int) -> bool:
    info = trace.threads.get(tid)
    return info is not None and info.name.startswith("pyflight-")


def thread_name(trace: Trace, tid: int) -> str:
    info = trace.threads.get(tid)
    return info.name if info is not None and info.name else f"thread {tid}"


@dataclasses.dataclass
class _OpenBlock:
    start: int
    reason: int
    stack: tuple[Frame, ...]


def blocks(trace: Trace) -> Iterator[tuple[int, int, int, int, int, int, tuple[Frame, ...]]]:
    """Thread blocks as ``(tid, start, end, reason, obj, waker, stack)``, in end order.

    BLOCK_END closes the innermost open block of its reason on that thread; a block
    still open at the end of the trace ends there (waker 0); an end with no begin in
    the window starts at the trace start (stack unknown).
    """
    open_: dict[int, list[_OpenBlock]] = {}
    for e in trace.events:
        kind = e[0]
        if kind == _BLOCK_BEGIN:
            open_.setdefault(e[2], []).append(_OpenBlock(e[1], e[3], e[5]))
        elif kind == _BLOCK_END:
            stack = open_.get(e[2], [])
            for i in range(len(stack) - 1, -1, -1):
                if stack[i].reason == e[3]:
                    b = stack.pop(i)
                    yield (e[2], b.start, e[1], e[3], e[4], e[5], b.stack)
                    break
            else:
                yield (e[2], trace.start_ns, e[1], e[3], e[4], e[5], ())
    for tid, stack in open_.items():
        for b in stack:
            yield (tid, b.start, max(b.start, trace.end_ns), b.reason, 0, 0, b.stack)


def task_waits(trace: Trace) -> Iterator[tuple[int, int, int, int, str, tuple[Frame, ...]]]:
    """Asyncio task waits ``(task, start, end, reason, what, stack)``: from TASK_WAIT (or
    the end of a step that recorded a TASK_BLOCK: an asyncio lock or queue, whose reason,
    name and stack then win) to the task's next READY, STEP_BEGIN or DONE (or the trace
    end). A TASK_BLOCK without a stack borrows the last one of its site."""
    waiting: dict[int, tuple[int, int, str, tuple[Frame, ...]]] = {}
    blocking: dict[int, tuple[int, str, tuple[Frame, ...]]] = {}  # TASK_BLOCK, until the step ends
    from_block: set[int] = set()
    site_stacks: dict[int, tuple[Frame, ...]] = {}
    for e in trace.events:
        kind = e[0]
        if kind == _TASK_BLOCK:
            stack = e[8] or site_stacks.get(e[7], ())
            if e[8]:
                site_stacks[e[7]] = e[8]
            blocking[e[3]] = (e[4], e[6], stack)
        elif kind == _TASK_STEP_END:
            block = blocking.pop(e[3], None)
            if block is not None:
                waiting[e[3]] = (e[1], *block)
                from_block.add(e[3])
        elif kind == _TASK_WAIT:
            if e[3] not in from_block:
                waiting[e[3]] = (e[1], e[4], e[5], e[6])
        elif kind in _TASK_WAIT_ENDS:
            from_block.discard(e[3])
            w = waiting.pop(e[3], None)
            if w is not None:
                yield (e[3], w[0], e[1], w[1], w[2], w[3])
    for task, w in waiting.items():
        yield (task, w[0], max(w[0], trace.end_ns), w[1], w[2], w[3])


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
    """What both the Perfetto and the Chrome exports draw, from a trace's events."""

    pid: int
    process_name: str
    tracks: dict[TrackKey, str]  # key -> display name; ("thread", tid) keys are threads
    slices: list[Slice]
    instants: list[Instant]
    flows: list[Flow]
    counters: dict[str, list[tuple[int, int]]]


_REASON_NAMES = {int(r): r.name.lower() for r in BlockReason}


def _reason_name(reason: int) -> str:
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


_K_CALLBACK_BEGIN = int(Kind.CALLBACK_BEGIN)
_K_CALLBACK_END = int(Kind.CALLBACK_END)
_K_COUNTER = int(Kind.COUNTER)
_K_DATA_LOSS = int(Kind.DATA_LOSS)
_K_GC_BEGIN = int(Kind.GC_BEGIN)
_K_GC_END = int(Kind.GC_END)
_K_LOG = int(Kind.LOG)
_K_LOOP_STALL = int(Kind.LOOP_STALL)
_K_REGION_BEGIN = int(Kind.REGION_BEGIN)
_K_REGION_END = int(Kind.REGION_END)
_K_SAMPLE = int(Kind.SAMPLE)
_K_SOURCE_DISABLED = int(Kind.SOURCE_DISABLED)
_K_TASK_CREATE = int(Kind.TASK_CREATE)
_K_TASK_DONE = int(Kind.TASK_DONE)
_K_TASK_INFO = int(Kind.TASK_INFO)
_K_TASK_READY = int(Kind.TASK_READY)
_K_TASK_STEP_BEGIN = int(Kind.TASK_STEP_BEGIN)
_K_TASK_STEP_END = int(Kind.TASK_STEP_END)
_K_THREAD_EXCEPTION = int(Kind.THREAD_EXCEPTION)
_K_TRIGGER = int(Kind.TRIGGER)
_K_USER_TASK_BEGIN = int(Kind.USER_TASK_BEGIN)
_K_USER_TASK_END = int(Kind.USER_TASK_END)
_K_WAKE = int(Kind.WAKE)
_TIMELINE_KINDS = frozenset(
    (
        _K_CALLBACK_BEGIN,
        _K_CALLBACK_END,
        _K_COUNTER,
        _K_DATA_LOSS,
        _K_GC_BEGIN,
        _K_GC_END,
        _K_LOG,
        _K_LOOP_STALL,
        _K_REGION_BEGIN,
        _K_REGION_END,
        _K_SOURCE_DISABLED,
        _K_TASK_CREATE,
        _K_TASK_DONE,
        _K_TASK_INFO,
        _K_TASK_READY,
        _K_TASK_STEP_BEGIN,
        _K_TASK_STEP_END,
        _K_THREAD_EXCEPTION,
        _K_TRIGGER,
        _K_USER_TASK_BEGIN,
        _K_USER_TASK_END,
        _K_WAKE,
    )
)


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


def build_timeline(trace: Trace) -> Timeline:
    """Slices, instants, flows and counters of every thread, task and user task."""
    b = _TimelineBuilder(trace)
    b.add_blocks()
    b.add_events()
    b.add_unfinished()
    b.add_task_waits()
    b.add_task_wake_flows()
    return b.finish()


class _ThreadTracks(dict[int, TrackKey]):
    """tid -> ``("thread", tid)``, adding the thread's track to ``tracks`` on first use.
    A dict, so that the lookup made for nearly every slice is a hit in C."""

    def __init__(self, trace: Trace, tracks: dict[TrackKey, str]) -> None:
        super().__init__()
        self.trace = trace
        self.tracks = tracks

    def __missing__(self, tid: int) -> TrackKey:
        key: TrackKey = ("thread", tid)
        if key not in self.tracks:
            self.tracks[key] = thread_name(self.trace, tid)
        self[tid] = key
        return key


class _TimelineBuilder:
    """The state of :func:`build_timeline`: one method per pass over the trace's events.

    The passes run over every event of the trace (a million or more), so their loops bind
    what they use to locals and test the most frequent kinds first.
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.tracks: dict[TrackKey, str] = {}
        self.slices: list[Slice] = []
        self.instants: list[Instant] = []
        self.flows: list[Flow] = []
        self.counters: dict[str, list[tuple[int, int]]] = {}
        self.flow_id = 0
        self.task_names: dict[int, str] = {task.id: task.name for task in trace.tasks.values()}
        # what add_events leaves open at the end of the trace, for add_unfinished
        self.gc_open: dict[int, tuple[int, int]] = {}  # tid -> begin, generation
        self.regions_open: dict[tuple[int, str], list[tuple[int, int]]] = {}  # -> [(begin, tid)]
        self.steps_open: dict[int, tuple[int, int]] = {}  # task -> begin, tid
        self.utask_open: dict[int, tuple[int, str]] = {}  # user task -> begin, name
        self.task_info: dict[int, tuple[str, str, int]] = {}  # task -> name, coro, created
        #: tid -> its track's key, naming the track on first use
        self.thread_track: Callable[[int], TrackKey] = _ThreadTracks(trace, self.tracks).__getitem__
        for tid in trace.threads:
            self.thread_track(tid)

    def add_blocks(self) -> None:
        """Blocks, and flows from the thread that ended each to the blocked thread."""
        trace, slices, thread_track = self.trace, self.slices, self.thread_track
        wakes: dict[tuple[int, int, int], list[int]] = {}  # (waker, target, obj) -> times
        for e in trace.events:
            if e[0] == _K_WAKE and e[4] == 0:
                wakes.setdefault((e[2], e[3], e[6]), []).append(e[1])
        for times in wakes.values():
            times.sort()  # for _last_at_or_before's bisection
        t_end = trace.end_ns
        for tid, start, end, reason, obj, waker, _stack in sorted(blocks(trace), key=itemgetter(1)):
            rname = _reason_name(reason)
            args: dict[str, ArgValue] = {"reason": rname, "obj": obj}
            if waker:
                args["waker"] = waker
            slices.append(Slice(thread_track(tid), start, end, f"blocked: {rname}", "block", args))
            if waker and waker != tid and end < t_end:
                src_time = _last_at_or_before(wakes.get((waker, tid, obj)), end)
                self.flow_id += 1
                self.flows.append(
                    Flow(
                        self.flow_id, thread_track(waker), src_time, thread_track(tid), end, f"wake ({rname})"
                    )
                )

    def add_events(self) -> None:
        """GC, regions, callbacks, user tasks, asyncio tasks, counters, instants."""
        trace, tracks, slices, instants = self.trace, self.tracks, self.slices, self.instants
        thread_track, task_names, counters = self.thread_track, self.task_names, self.counters
        gc_open, regions_open, steps_open = self.gc_open, self.regions_open, self.steps_open
        utask_open, task_info = self.utask_open, self.task_info
        callbacks_open: dict[int, list[tuple[int, str]]] = {}
        ready_at: dict[int, int] = {}
        start_ns = trace.start_ns
        for e in trace.events:
            kind = e[0]
            if kind not in _TIMELINE_KINDS:
                continue
            t, tid = e[1], e[2]
            # asyncio task steps first: the most frequent kinds of a busy program
            if kind == _K_TASK_STEP_BEGIN:
                steps_open[e[3]] = (t, tid)
                ready = ready_at.pop(e[3], None)
                if ready is not None and ready <= t:
                    slices.append(Slice(("task", e[3]), ready, t, "ready (scheduling delay)", "asyncio", {}))
            elif kind == _K_TASK_STEP_END:
                begin, on = steps_open.pop(e[3], (start_ns, tid))
                name = task_names.get(e[3], f"task {e[3]}")
                slices.append(Slice(thread_track(on), begin, t, f"step: {name}", "asyncio", {"task": e[3]}))
                slices.append(Slice(("task", e[3]), begin, t, "step", "asyncio", {"thread": on}))
            elif kind == _K_GC_BEGIN:
                gc_open[tid] = (t, e[3])
            elif kind == _K_GC_END:
                begin, gen = gc_open.pop(tid, (start_ns, e[3]))
                slices.append(
                    Slice(
                        thread_track(tid),
                        begin,
                        t,
                        f"GC gen {gen}",
                        "gc",
                        {"generation": gen, "collected": e[4], "uncollectable": e[5]},
                    )
                )
            elif kind == _K_REGION_BEGIN:
                regions_open.setdefault((e[3], e[4]), []).append((t, tid))
            elif kind == _K_REGION_END:
                opened = regions_open.get((e[3], e[4]))
                begin, on = opened.pop() if opened else (start_ns, tid)
                slices.append(Slice(thread_track(on), begin, t, e[4], "region", {"user_task": e[3]}))
            elif kind == _K_CALLBACK_BEGIN:
                callbacks_open.setdefault(tid, []).append((t, e[4]))
            elif kind == _K_CALLBACK_END:
                cbs = callbacks_open.get(tid)
                begin, name = cbs.pop() if cbs else (start_ns, "?")
                slices.append(
                    Slice(thread_track(tid), begin, t, f"callback: {name}", "asyncio", {"loop": e[3]})
                )
            elif kind == _K_TASK_CREATE or kind == _K_TASK_INFO:
                if kind == _K_TASK_CREATE or e[3] not in task_info:
                    task_info[e[3]] = (e[4], e[5], t)
                task_names[e[3]] = e[4]
                if kind == _K_TASK_CREATE and e[6]:
                    instants.append(Instant(("task", e[6]), t, f"create {e[4]}", "asyncio", {"task": e[3]}))
            elif kind == _K_TASK_READY:
                ready_at[e[3]] = t
            elif kind == _K_TASK_DONE:
                name, coro, created = task_info.pop(e[3], (task_names.get(e[3], "?"), "", start_ns))
                try:
                    outcome = TaskOutcome(e[4]).name.lower()
                except ValueError:
                    outcome = str(e[4])
                key: TrackKey = ("task", e[3])
                slices.append(
                    Slice(
                        key,
                        created,
                        t,
                        f"{name} ({coro})" if coro else name,
                        "asyncio",
                        {"outcome": outcome, **({"error": e[5]} if e[5] else {})},
                    )
                )
                tracks.setdefault(key, f"asyncio {name}")
            elif kind == _K_USER_TASK_BEGIN:
                utask_open[e[3]] = (t, e[5])
            elif kind == _K_USER_TASK_END:
                begin, name = utask_open.pop(e[3], (start_ns, ""))
                if not name:
                    info = trace.user_tasks.get(e[3])
                    name = info.name if info is not None else f"user task {e[3]}"
                ukey: TrackKey = ("user_task", e[3])
                tracks.setdefault(ukey, f"task: {name}")
                slices.append(Slice(ukey, begin, t, name, "user_task", {"id": e[3], "thread": tid}))
            elif kind == _K_COUNTER:
                counters.setdefault(e[3], []).append((t, e[4]))
            elif kind == _K_LOG:
                instants.append(
                    Instant(thread_track(tid), t, f"log: {e[4]}", "log", {"message": e[5], "task": e[3]})
                )
            elif kind == _K_LOOP_STALL:
                instants.append(
                    Instant(
                        thread_track(tid), t, "loop stall", "asyncio", {"task": e[4], "duration_ns": e[5]}
                    )
                )
            elif kind == _K_THREAD_EXCEPTION:
                instants.append(
                    Instant(thread_track(tid), t, f"exception: {e[4]}", "thread", {"message": e[5]})
                )
            elif kind == _K_TRIGGER or kind == _K_DATA_LOSS or kind == _K_SOURCE_DISABLED:
                args: dict[str, ArgValue] = dict(zip(("a", "b", "c"), (str(x) for x in e[3:]), strict=False))
                instants.append(Instant(thread_track(tid), t, kind.name.lower(), "pyflight", args))
            # WAKE of a task: add_task_wake_flows (needs the task's next READY / STEP_BEGIN)

    def add_unfinished(self) -> None:
        """What is still open at the end of the trace ends there."""
        t_end, slices, tracks, thread_track = self.trace.end_ns, self.slices, self.tracks, self.thread_track
        for (task_id, name), opened in self.regions_open.items():
            for begin, on in opened:
                slices.append(
                    Slice(thread_track(on), begin, max(begin, t_end), name, "region", {"user_task": task_id})
                )
        for uid, (begin, name) in self.utask_open.items():
            ukey: TrackKey = ("user_task", uid)
            tracks.setdefault(ukey, f"task: {name}")
            slices.append(Slice(ukey, begin, max(begin, t_end), name, "user_task", {"id": uid, "open": 1}))
        for task_id, (name, coro, created) in self.task_info.items():
            key: TrackKey = ("task", task_id)
            tracks.setdefault(key, f"asyncio {name}")
            slices.append(
                Slice(key, created, max(created, t_end), f"{name} ({coro})" if coro else name, "asyncio", {})
            )
        for tid, (begin, gen) in self.gc_open.items():
            slices.append(
                Slice(thread_track(tid), begin, max(begin, t_end), f"GC gen {gen}", "gc", {"generation": gen})
            )
        for task_id, (begin, on) in self.steps_open.items():
            slices.append(
                Slice(("task", task_id), begin, max(begin, t_end), "step", "asyncio", {"thread": on})
            )

    def add_task_waits(self) -> None:
        slices = self.slices
        for task_id, start, end, reason, what, _stack in task_waits(self.trace):
            label = what or _reason_name(reason)
            slices.append(
                Slice(
                    ("task", task_id),
                    start,
                    end,
                    f"await: {label}",
                    "asyncio",
                    {"reason": _reason_name(reason)},
                )
            )

    def add_task_wake_flows(self) -> None:
        """Wake-ups of asyncio tasks: WAKE(task) -> the task's next READY or STEP_BEGIN."""
        pending: dict[int, list[tuple[int, int]]] = {}
        for e in self.trace.events:
            kind = e[0]
            if kind == _K_WAKE and e[4]:
                pending.setdefault(e[4], []).append((e[1], e[2]))
            elif (kind == _K_TASK_READY or kind == _K_TASK_STEP_BEGIN) and e[3] in pending:
                for wt, waker in pending.pop(e[3]):
                    self.flow_id += 1
                    self.flows.append(
                        Flow(
                            self.flow_id,
                            self.thread_track(waker),
                            wt,
                            ("task", e[3]),
                            e[1],
                            "wake (task)",
                            e[2],
                        )
                    )

    def finish(self) -> Timeline:
        """Name the tracks met only in slices, instants and flows; sort the slices."""
        tracks, task_names, slices = self.tracks, self.task_names, self.slices
        # each slice's track once, in order of first appearance (dict.fromkeys: in C)
        for track in dict.fromkeys(map(itemgetter(0), slices)):
            if track not in tracks:
                tracks[track] = (
                    f"asyncio {task_names.get(int(track[1]), track[1])}" if track[0] == "task" else str(track)
                )
        for i in self.instants:
            if i.track not in tracks:
                tracks[i.track] = f"asyncio {task_names.get(int(i.track[1]), i.track[1])}"
        for f in self.flows:
            tracks.setdefault(f.target, f"asyncio {task_names.get(int(f.target[1]), f.target[1])}")
        # by (start, -end), stably, as two stable sorts with C key functions: three
        # times faster than one sort with a Python key building a tuple per slice
        slices.sort(key=itemgetter(2), reverse=True)
        slices.sort(key=itemgetter(1))
        pid, pname = _process(self.trace)
        return Timeline(pid, pname, tracks, slices, self.instants, self.flows, self.counters)


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


# --------------------------------------------------------------------------------------
# Encoding
#
# A 1M-event trace makes about two million TracePackets, so they are not built with
# Message (a bytearray per nested message, a method call per field) but joined from
# pre-encoded pieces: field keys as byte constants, names/categories/track ids encoded
# once and cached per export, and each packet framed as a Trace.packet as soon as it is
# made. Every timestamped packet has the same layout:
#   timestamp(8) trusted_packet_sequence_id(10)=1 <track_event(11) or perf_sample(66)>
#   sequence_flags(13)=SEQ_NEEDS_INCREMENTAL_STATE
# (the layout the Message-based encoder of earlier versions wrote, byte for byte).
