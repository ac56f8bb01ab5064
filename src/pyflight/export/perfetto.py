"""Perfetto export: a ``Trace`` proto (a stream of TracePackets) written by our encoder.

Layout (field numbers from Perfetto's protos/perfetto/trace/*.proto):

- one process track, a thread track per thread (ThreadDescriptor with the thread name);
- slices on thread tracks: blocks (``blocked: lock`` ...), GC pauses, user regions,
  event-loop callbacks and asyncio task steps; slices that do not nest with the others
  (e.g. a region spanning several task steps) go to a child track of the thread;
- an async track per asyncio task (its lifetime, steps, awaits, ready-to-run delays)
  and per ``pyflight.task`` user task;
- flows from the thread that released a lock / notified / ended to the woken thread
  (instants ``wake`` -> ``woken``), and from WAKE events to the woken asyncio task;
- counter tracks for COUNTER events; logs, stalls, exceptions and triggers as instants;
- stack samples as PerfSample packets with interned callstacks (frames named after the
  Python function, mapped to the source file, rel_pc = line number).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import struct
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any, NamedTuple

from pyflight.core.events import BlockReason, Kind, TaskOutcome
from pyflight.export import blocks, gc_paused, task_waits, thread_name
from pyflight.export.protobuf import (
    I64,
    LEN,
    MASK64,
    VARINT,
    Message,
    encode_varint,
    field_key,
    timestamp_varint_encoder,
)
from pyflight.format.reader import Frame, Trace

__all__ = ["Flow", "Instant", "Slice", "Timeline", "build_timeline", "export_perfetto"]

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
    id: int
    source: TrackKey
    source_time: int
    target: TrackKey
    target_time: int
    name: str


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
                        Flow(self.flow_id, self.thread_track(waker), wt, ("task", e[3]), e[1], "wake (task)")
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

_SEQ = 1  # trusted_packet_sequence_id of every packet
_SEQ_INCREMENTAL_STATE_CLEARED = 1
_SEQ_NEEDS_INCREMENTAL_STATE = 2
_TYPE_SLICE_BEGIN, _TYPE_SLICE_END, _TYPE_INSTANT, _TYPE_COUNTER = 1, 2, 3, 4

_TRACE_PACKET = field_key(1, LEN)  # Trace.packet
_TIMESTAMP = field_key(8, VARINT)  # TracePacket.timestamp
_SEQ_ID = field_key(10, VARINT) + encode_varint(_SEQ)  # TracePacket.trusted_packet_sequence_id
_TRACK_EVENT = field_key(11, LEN)  # TracePacket.track_event
_PERF_SAMPLE = field_key(66, LEN)  # TracePacket.perf_sample
_NEEDS_STATE = field_key(13, VARINT) + encode_varint(_SEQ_NEEDS_INCREMENTAL_STATE)  # sequence_flags
# TrackEvent fields
_TE_TYPE = field_key(9, VARINT)
_TE_TRACK = field_key(11, VARINT)
_TE_CATEGORY = 22  # categories (LEN)
_TE_NAME = 23  # name (LEN)
_TE_ANNOTATION = field_key(4, LEN)  # debug_annotations
_TE_FLOW_ID = field_key(47, I64)  # flow_ids (fixed64)
_TE_TERMINATING_FLOW_ID = field_key(48, I64)  # terminating_flow_ids (fixed64)
_TE_COUNTER_VALUE = field_key(30, VARINT)  # counter_value
# DebugAnnotation fields
_DA_NAME = 10
_DA_INT = field_key(4, VARINT)  # int_value
_DA_STRING = 6  # string_value (LEN)


def _string_field(field: int, text: str) -> bytes:
    """A string field, encoded as Message.string does."""
    data = text.encode("utf-8", "surrogatepass")
    return b"".join((field_key(field, LEN), encode_varint(len(data)), data))


class _Packets:
    """The timestamped TracePackets, framed as ``Trace.packet`` fields when added and
    written out in (time, order added) order."""

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes]] = []  # (time, framed packet), in order added
        # encode_varint, faster for timestamps
        self.time_varint: Callable[[int], bytes] = timestamp_varint_encoder()

    def add(self, time: int, key: bytes, payload: bytes) -> None:
        """A packet at ``time`` whose payload field ``key`` holds ``payload``."""
        body = b"".join(
            (
                _TIMESTAMP,
                self.time_varint(time),
                _SEQ_ID,
                key,
                encode_varint(len(payload)),
                payload,
                _NEEDS_STATE,
            )
        )
        self.items.append((time, b"".join((_TRACE_PACKET, encode_varint(len(body)), body))))

    @staticmethod
    def tail(key: bytes, payload: bytes) -> bytes:
        """A packet's fields after its timestamp, for packets that differ only by time."""
        return b"".join((_SEQ_ID, key, encode_varint(len(payload)), payload, _NEEDS_STATE))

    def in_order(self) -> list[bytes]:
        """The packets by time, those at the same time in the order they were added."""
        self.items.sort(key=itemgetter(0))  # stable
        return [p[1] for p in self.items]


class _TrackEvents:
    """Encodes TrackEvent messages, caching the pieces that repeat within one export.

    The caches are keyed by plain strings (one dict lookup on the hot path); a slice's
    name is often unique (``step: Task-123``), so a miss must be cheap too: the fields
    are joined from bytes, not built with Message.
    """

    def __init__(self) -> None:
        self._categories: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        self._int_heads: dict[str, bytes] = {}  # arg name -> DebugAnnotation.name + int_value key
        self._string_args: dict[tuple[str, str], bytes] = {}
        self._int_values: dict[int, bytes] = {}  # value -> varint

    def names(self, category: str | None, name: str | None) -> bytes:
        """The ``categories`` (if ``category``) and ``name`` (if not None) fields."""
        out = b""
        if category:
            field = self._categories.get(category)
            if field is None:
                field = self._categories[category] = _string_field(_TE_CATEGORY, category)
            out = field
        if name is not None:
            field = self._names.get(name)
            if field is None:
                field = self._names[name] = _string_field(_TE_NAME, name)
            out += field
        return out

    def annotations(self, args: dict[str, ArgValue]) -> bytes:
        """``debug_annotations``: ints as ``int_value``, the rest as ``string_value``."""
        if not args:
            return b""
        parts = []
        for name, value in args.items():
            if isinstance(value, int):
                head = self._int_heads.get(name)
                if head is None:
                    head = self._int_heads[name] = _string_field(_DA_NAME, name) + _DA_INT
                v = self._int_values.get(value)  # ids repeat, and are often large
                if v is None:
                    v = self._int_values[value] = encode_varint(int(value))
                parts.append(b"".join((_TE_ANNOTATION, encode_varint(len(head) + len(v)), head, v)))
            else:
                # string values repeat (reasons, outcomes, messages): cache the whole field
                key = (name, str(value))
                field = self._string_args.get(key)
                if field is None:
                    a = _string_field(_DA_NAME, name) + _string_field(_DA_STRING, key[1])
                    field = self._string_args[key] = _TE_ANNOTATION + encode_varint(len(a)) + a
                parts.append(field)
        return b"".join(parts)

    def event(
        self,
        kind: int,
        track: int,
        name: str | None = None,
        category: str | None = None,
        args: dict[str, ArgValue] | None = None,
    ) -> bytes:
        """A TrackEvent of ``kind`` on ``track`` (an instant, a counter...)."""
        head = b"".join((_TE_TYPE, encode_varint(kind), _TE_TRACK, encode_varint(track)))
        return head + self.names(category, name) + (self.annotations(args) if args else b"")


def _add_lane(
    packets: _Packets, events: _TrackEvents, track: int, lane: list[tuple[int, bool, Slice]]
) -> None:
    """The SLICE_BEGIN / SLICE_END packets of one lane: most packets of a trace, so the
    loop builds them inline (what _Packets.add does) instead of calling it, and frames
    each packet in one join by adding up its body's length instead of building it first."""
    track_id = encode_varint(track)
    # TrackEvent{type(9)=SLICE_BEGIN, track_uuid(11), categories(22), name(23), annotations}
    begin_head = _TE_TYPE + encode_varint(_TYPE_SLICE_BEGIN) + _TE_TRACK + track_id
    # an end is always the same packet but for its timestamp: encode the rest once
    end_tail = packets.tail(_TRACK_EVENT, _TE_TYPE + encode_varint(_TYPE_SLICE_END) + _TE_TRACK + track_id)
    end_tail_len = len(_TIMESTAMP) + len(end_tail)
    items, names, annotations = packets.items, events.names, events.annotations
    varint, time_varint = encode_varint, packets.time_varint
    seq_event = _SEQ_ID + _TRACK_EVENT
    begin_fixed_len = len(_TIMESTAMP) + len(seq_event) + len(_NEEDS_STATE)
    for time, is_begin, s in lane:
        ts = time_varint(time)
        if is_begin:
            # the TrackEvent: begin_head + names + args (s.category is never empty for
            # slices, names() would drop an empty one)
            name_fields, args = names(s[4], s[3]), annotations(s[5])
            event_len = varint(len(begin_head) + len(name_fields) + len(args))
            size = begin_fixed_len + len(ts) + len(event_len) + len(begin_head) + len(name_fields) + len(args)
            framed = b"".join(
                (
                    _TRACE_PACKET,
                    varint(size),
                    _TIMESTAMP,
                    ts,
                    seq_event,
                    event_len,
                    begin_head,
                    name_fields,
                    args,
                    _NEEDS_STATE,
                )
            )
        else:
            framed = b"".join((_TRACE_PACKET, varint(end_tail_len + len(ts)), _TIMESTAMP, ts, end_tail))
        items.append((time, framed))


def export_perfetto(trace: Trace, profile: str | None = None) -> bytes:
    """The trace as a Perfetto protobuf trace (``profile`` is ignored)."""
    del profile
    with gc_paused():
        return _export_perfetto(trace)


def _export_perfetto(trace: Trace) -> bytes:
    """Track descriptors (few: built with Message) and the timestamped packets (many:
    see _Packets, _TrackEvents, _add_lane), then both in order: descriptors first."""
    tl = build_timeline(trace)
    packets = _Packets()
    events = _TrackEvents()

    uuids: dict[Any, int] = {}

    def uuid(key: Any) -> int:
        if key not in uuids:
            uuids[key] = len(uuids) + 1
        return uuids[key]

    header: list[Message] = []
    proc_uuid = uuid(("process",))
    header.append(
        Message().message(
            60,
            Message().varint(1, proc_uuid).message(3, Message().varint(1, tl.pid).string(6, tl.process_name)),
        )  # ProcessDescriptor pid, process_name
    )
    by_track: dict[TrackKey, list[Slice]] = {}
    for s in tl.slices:
        by_track.setdefault(s.track, []).append(s)
    lane_uuid: dict[tuple[TrackKey, int], int] = {}
    for key, name in tl.tracks.items():
        u = uuid(key)
        lane_uuid[(key, 0)] = u
        td = Message().varint(1, u).varint(5, proc_uuid)  # uuid, parent_uuid
        if key[0] == "thread":
            td.message(
                4, Message().varint(1, tl.pid).varint(2, int(key[1])).string(5, name)
            )  # ThreadDescriptor
        else:
            td.string(2, name)
        header.append(Message().message(60, td))
    for key, track_slices in by_track.items():
        for index, lane in enumerate(nest_lanes(track_slices)):
            if index == 0:
                u = lane_uuid[(key, 0)]
            else:
                u = uuid((key, index))
                header.append(
                    Message().message(
                        60,
                        Message()
                        .varint(1, u)
                        .varint(5, lane_uuid[(key, 0)])
                        .string(2, f"{tl.tracks[key]} ({index + 1})"),
                    )
                )
            _add_lane(packets, events, u, lane)
    for inst in tl.instants:
        packets.add(
            inst.time,
            _TRACK_EVENT,
            events.event(_TYPE_INSTANT, lane_uuid[(inst.track, 0)], inst.name, inst.category, inst.args),
        )
    for f in tl.flows:
        flow_id = struct.pack("<Q", f.id & MASK64)
        src = events.event(_TYPE_INSTANT, lane_uuid[(f.source, 0)], f.name, "flow")
        packets.add(f.source_time, _TRACK_EVENT, src + _TE_FLOW_ID + flow_id)
        dst = events.event(_TYPE_INSTANT, lane_uuid[(f.target, 0)], "woken", "flow")
        packets.add(f.target_time, _TRACK_EVENT, dst + _TE_TERMINATING_FLOW_ID + flow_id)
    for cname, values in tl.counters.items():
        u = uuid(("counter", cname))
        header.append(
            Message().message(
                60, Message().varint(1, u).varint(5, proc_uuid).string(2, cname).message(8, Message())
            )
        )  # CounterDescriptor
        head = events.event(_TYPE_COUNTER, u)
        for t, v in values:
            packets.add(t, _TRACK_EVENT, head + _TE_COUNTER_VALUE + encode_varint(int(v)))

    interned = _add_samples(trace, tl.pid, packets)

    ordered = packets.in_order()
    start = min(trace.start_ns, packets.items[0][0]) if ordered else trace.start_ns
    ordered.insert(0, _head(start, interned, header))
    return b"".join(ordered)


def _head(start: int, interned: Message, header: list[Message]) -> bytes:
    """The first packets: the interned data, then the descriptors, stamped with ``start``."""
    out = bytearray()
    first = Message().varint(8, start).varint(10, _SEQ)  # timestamp, trusted_packet_sequence_id
    first.varint(13, _SEQ_INCREMENTAL_STATE_CLEARED)  # sequence_flags
    if len(interned):
        first.message(12, interned)  # interned_data
    out += Message().message(1, first).bytes()
    for m in header:
        m.varint(8, start).varint(10, _SEQ).varint(13, _SEQ_NEEDS_INCREMENTAL_STATE)
        out += Message().message(1, m).bytes()
    return bytes(out)


def _add_samples(trace: Trace, pid: int, packets: _Packets) -> Message:
    """Stack samples as PerfSample packets; returns the InternedData of their callstacks."""
    interned = Message()
    strings: dict[tuple[int, str], int] = {}

    def intern_string(field: int, text: str) -> int:
        k = (field, text)
        if k not in strings:
            strings[k] = len(strings) + 1
            interned.message(field, Message().varint(1, strings[k]).string(2, text))  # InternedString
        return strings[k]

    mappings: dict[str, int] = {}
    frames: dict[Frame, int] = {}
    callstacks: dict[tuple[Frame, ...], int] = {}
    build_id = intern_string(16, "python")  # build_ids
    samples: list[tuple[int, int, int]] = []  # time, tid, callstack id
    for e in trace.events:
        if e[0] != _K_SAMPLE:
            continue
        stack: tuple[Frame, ...] = e[5]
        if not stack:
            continue
        cs = callstacks.get(stack)
        if cs is None:
            ids: list[int] = []
            for fr in reversed(stack):  # Callstack.frame_ids: bottom (outermost) frame first
                fid = frames.get(fr)
                if fid is None:
                    mid = mappings.get(fr.file)
                    if mid is None:
                        mid = mappings[fr.file] = len(mappings) + 1
                        path_id = intern_string(17, fr.file or "?")  # mapping_paths
                        interned.message(
                            19, Message().varint(1, mid).varint(2, build_id).repeated_varints(7, [path_id])
                        )  # Mapping
                    name_id = intern_string(5, fr.function or "?")  # function_names
                    fid = frames[fr] = len(frames) + 1
                    interned.message(
                        6,
                        Message().varint(1, fid).varint(2, name_id).varint(3, mid).varint(4, max(0, fr.line)),
                    )  # Frame: iid, function_name_id, mapping_id, rel_pc
                ids.append(fid)
            cs = callstacks[stack] = len(callstacks) + 1
            interned.message(7, Message().varint(1, cs).repeated_varints(2, ids))  # Callstack
        samples.append((e[1], e[3], cs))
    pid_field = Message().varint(2, pid).bytes()  # PerfSample.pid
    for t, tid, cs in samples:
        ps = Message().varint(3, tid).varint(4, cs).bytes()  # PerfSample.tid, callstack_iid
        packets.add(t, _PERF_SAMPLE, pid_field + ps)
    return interned
