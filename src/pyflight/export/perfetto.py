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

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from pyflight.core.events import BlockReason, Kind, TaskOutcome
from pyflight.export import blocks, task_waits, thread_name
from pyflight.export.protobuf import Message, encode_varint
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


def _reason_name(reason: int) -> str:
    try:
        return BlockReason(reason).name.lower()
    except ValueError:
        return f"reason {reason}"


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


def build_timeline(trace: Trace) -> Timeline:
    """Slices, instants, flows and counters of every thread, task and user task."""
    pid, pname = _process(trace)
    t_end = trace.end_ns
    tracks: dict[TrackKey, str] = {}
    slices: list[Slice] = []
    instants: list[Instant] = []
    flows: list[Flow] = []
    counters: dict[str, list[tuple[int, int]]] = {}

    def thread_track(tid: int) -> TrackKey:
        key: TrackKey = ("thread", tid)
        if key not in tracks:
            tracks[key] = thread_name(trace, tid)
        return key

    for tid in trace.threads:
        thread_track(tid)

    # blocks and the wake-ups that end them
    wakes: dict[tuple[int, int, int], list[int]] = {}  # (waker, target, obj) -> times
    for e in trace.events:
        if e[0] == _K_WAKE and e[4] == 0:
            wakes.setdefault((e[2], e[3], e[6]), []).append(e[1])
    flow_id = 0
    for tid, start, end, reason, obj, waker, _stack in sorted(blocks(trace), key=lambda b: b[1]):
        rname = _reason_name(reason)
        args: dict[str, ArgValue] = {"reason": rname, "obj": obj}
        if waker:
            args["waker"] = waker
        slices.append(Slice(thread_track(tid), start, end, f"blocked: {rname}", "block", args))
        if waker and waker != tid and end < t_end:
            times = [t for t in wakes.get((waker, tid, obj), ()) if t <= end]
            src_time = max(times) if times else end
            flow_id += 1
            flows.append(
                Flow(flow_id, thread_track(waker), src_time, thread_track(tid), end, f"wake ({rname})")
            )

    # GC, regions, callbacks, user tasks, asyncio tasks, counters, instants
    gc_open: dict[int, tuple[int, int]] = {}
    regions_open: dict[tuple[int, str], list[tuple[int, int]]] = {}
    callbacks_open: dict[int, list[tuple[int, str]]] = {}
    steps_open: dict[int, tuple[int, int]] = {}
    ready_at: dict[int, int] = {}
    utask_open: dict[int, tuple[int, str]] = {}
    task_info: dict[int, tuple[str, str, int]] = {}  # id -> name, coro, created
    task_names: dict[int, str] = {}
    for task in trace.tasks.values():
        task_names[task.id] = task.name
    for e in trace.events:
        kind = e[0]
        if kind not in _TIMELINE_KINDS:
            continue
        t, tid = e[1], e[2]
        if kind == _K_GC_BEGIN:
            gc_open[tid] = (t, e[3])
        elif kind == _K_GC_END:
            begin, gen = gc_open.pop(tid, (trace.start_ns, e[3]))
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
            begin, on = opened.pop() if opened else (trace.start_ns, tid)
            slices.append(Slice(thread_track(on), begin, t, e[4], "region", {"user_task": e[3]}))
        elif kind == _K_CALLBACK_BEGIN:
            callbacks_open.setdefault(tid, []).append((t, e[4]))
        elif kind == _K_CALLBACK_END:
            cbs = callbacks_open.get(tid)
            begin, name = cbs.pop() if cbs else (trace.start_ns, "?")
            slices.append(Slice(thread_track(tid), begin, t, f"callback: {name}", "asyncio", {"loop": e[3]}))
        elif kind in (_K_TASK_CREATE, _K_TASK_INFO):
            if kind == _K_TASK_CREATE or e[3] not in task_info:
                task_info[e[3]] = (e[4], e[5], t)
            task_names[e[3]] = e[4]
            if kind == _K_TASK_CREATE and e[6]:
                instants.append(Instant(("task", e[6]), t, f"create {e[4]}", "asyncio", {"task": e[3]}))
        elif kind == _K_TASK_READY:
            ready_at[e[3]] = t
        elif kind == _K_TASK_STEP_BEGIN:
            steps_open[e[3]] = (t, tid)
            ready = ready_at.pop(e[3], None)
            if ready is not None and ready <= t:
                slices.append(Slice(("task", e[3]), ready, t, "ready (scheduling delay)", "asyncio", {}))
        elif kind == _K_TASK_STEP_END:
            begin, on = steps_open.pop(e[3], (trace.start_ns, tid))
            name = task_names.get(e[3], f"task {e[3]}")
            slices.append(Slice(thread_track(on), begin, t, f"step: {name}", "asyncio", {"task": e[3]}))
            slices.append(Slice(("task", e[3]), begin, t, "step", "asyncio", {"thread": on}))
        elif kind == _K_TASK_DONE:
            name, coro, created = task_info.pop(e[3], (task_names.get(e[3], "?"), "", trace.start_ns))
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
            begin, name = utask_open.pop(e[3], (trace.start_ns, ""))
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
                Instant(thread_track(tid), t, "loop stall", "asyncio", {"task": e[4], "duration_ns": e[5]})
            )
        elif kind == _K_THREAD_EXCEPTION:
            instants.append(Instant(thread_track(tid), t, f"exception: {e[4]}", "thread", {"message": e[5]}))
        elif kind in (_K_TRIGGER, _K_DATA_LOSS, _K_SOURCE_DISABLED):
            args2 = dict(zip(("a", "b", "c"), (str(x) for x in e[3:]), strict=False))
            instants.append(Instant(thread_track(tid), t, kind.name.lower(), "pyflight", dict(args2)))
        elif kind == _K_WAKE and e[4]:
            pass  # handled below, needs the task's next READY / STEP_BEGIN
    # open ones at the end of the trace
    for (task_id, _name), opened in regions_open.items():
        for begin, on in opened:
            slices.append(
                Slice(thread_track(on), begin, max(begin, t_end), _name, "region", {"user_task": task_id})
            )
    for uid, (begin, name) in utask_open.items():
        ukey2: TrackKey = ("user_task", uid)
        tracks.setdefault(ukey2, f"task: {name}")
        slices.append(Slice(ukey2, begin, max(begin, t_end), name, "user_task", {"id": uid, "open": 1}))
    for task_id, (name, coro, created) in task_info.items():
        key2: TrackKey = ("task", task_id)
        tracks.setdefault(key2, f"asyncio {name}")
        slices.append(
            Slice(key2, created, max(created, t_end), f"{name} ({coro})" if coro else name, "asyncio", {})
        )
    for tid, (begin, gen) in gc_open.items():
        slices.append(
            Slice(thread_track(tid), begin, max(begin, t_end), f"GC gen {gen}", "gc", {"generation": gen})
        )
    for task_id, (begin, on) in steps_open.items():
        slices.append(Slice(("task", task_id), begin, max(begin, t_end), "step", "asyncio", {"thread": on}))
    for task_id, start, end, reason, what, _stack in task_waits(trace):
        label = what or _reason_name(reason)
        slices.append(
            Slice(
                ("task", task_id), start, end, f"await: {label}", "asyncio", {"reason": _reason_name(reason)}
            )
        )

    # wake-ups of asyncio tasks: WAKE(task) -> the task's next READY or STEP_BEGIN
    pending: dict[int, list[tuple[int, int]]] = {}
    for e in trace.events:
        if e[0] == _K_WAKE and e[4]:
            pending.setdefault(e[4], []).append((e[1], e[2]))
        elif e[0] in (_K_TASK_READY, _K_TASK_STEP_BEGIN) and e[3] in pending:
            for wt, waker in pending.pop(e[3]):
                flow_id += 1
                flows.append(Flow(flow_id, thread_track(waker), wt, ("task", e[3]), e[1], "wake (task)"))

    for s in slices:
        if s.track not in tracks:
            tracks[s.track] = (
                f"asyncio {task_names.get(int(s.track[1]), s.track[1])}"
                if s.track[0] == "task"
                else str(s.track)
            )
    for i in instants:
        if i.track not in tracks:
            tracks[i.track] = f"asyncio {task_names.get(int(i.track[1]), i.track[1])}"
    for f in flows:
        tracks.setdefault(f.target, f"asyncio {task_names.get(int(f.target[1]), f.target[1])}")
    slices.sort(key=lambda s: (s.start, -s.end))
    return Timeline(pid, pname, tracks, slices, instants, flows, counters)


def nest_lanes(slices: Iterable[Slice]) -> list[list[tuple[int, bool, Slice]]]:
    """Split one track's slices (sorted by start, longest first) into lanes in which they
    nest properly; each lane as time-ordered ``(time, is_begin, slice)`` events."""
    lanes: list[list[tuple[int, bool, Slice]]] = []
    stacks: list[list[Slice]] = []
    for s in slices:
        placed = False
        for lane, stack in zip(lanes, stacks, strict=True):
            while stack and stack[-1].end <= s.start:
                done = stack.pop()
                lane.append((done.end, False, done))
            if not stack or s.end <= stack[-1].end:
                stack.append(s)
                lane.append((s.start, True, s))
                placed = True
                break
        if not placed:
            lanes.append([(s.start, True, s)])
            stacks.append([s])
    for lane, stack in zip(lanes, stacks, strict=True):
        while stack:
            done = stack.pop()
            lane.append((done.end, False, done))
    return lanes


# --------------------------------------------------------------------------------------
# Encoding

_SEQ = 1  # trusted_packet_sequence_id of every packet
_SEQ_INCREMENTAL_STATE_CLEARED = 1
_SEQ_NEEDS_INCREMENTAL_STATE = 2
_TYPE_SLICE_BEGIN, _TYPE_SLICE_END, _TYPE_INSTANT, _TYPE_COUNTER = 1, 2, 3, 4


_NAME_FIELDS: dict[tuple[int, str], bytes] = {}


def _string_field(field: int, text: str) -> bytes:
    """An encoded string field, cached (names and categories repeat a lot)."""
    key = (field, text)
    out = _NAME_FIELDS.get(key)
    if out is None:
        out = _NAME_FIELDS[key] = Message().string(field, text).bytes()
    return out


# TracePacket{timestamp(8)=ts, trusted_packet_sequence_id(10)=1, track_event(11)=..., sequence_flags(13)=2}
def _event_packet(ts: int, track_event: bytes) -> bytes:
    return (
        b"\x40"
        + encode_varint(ts)
        + b"\x50\x01\x5a"
        + encode_varint(len(track_event))
        + track_event
        + b"\x68\x02"
    )


def _slice_begin(track: int, name: str, category: str, args: dict[str, ArgValue]) -> bytes:
    ev = b"\x48\x01\x58" + encode_varint(track) + _string_field(22, category) + _string_field(23, name)
    if args:
        m = Message()
        _annotations(m, args)
        ev += m.bytes()
    return ev


def _slice_end(track: int) -> bytes:
    return b"\x48\x02\x58" + encode_varint(track)


def _packet(timestamp: int | None = None) -> Message:
    p = Message()
    if timestamp is not None:
        p.varint(8, timestamp)  # timestamp
    p.varint(10, _SEQ)  # trusted_packet_sequence_id
    return p


def _annotations(ev: Message, args: dict[str, ArgValue]) -> None:
    for name, value in args.items():
        a = Message().string(10, name)  # DebugAnnotation.name
        if isinstance(value, int):
            a.varint(4, value)  # int_value
        else:
            a.string(6, str(value))  # string_value
        ev.message(4, a)  # TrackEvent.debug_annotations


def _track_event(
    kind: int,
    track: int,
    name: str | None = None,
    category: str | None = None,
    args: dict[str, ArgValue] | None = None,
) -> Message:
    ev = Message().varint(9, kind).varint(11, track)  # type, track_uuid
    if category:
        ev.string(22, category)  # categories
    if name is not None:
        ev.string(23, name)  # name
    if args:
        _annotations(ev, args)
    return ev


def export_perfetto(trace: Trace, profile: str | None = None) -> bytes:
    """The trace as a Perfetto protobuf trace (``profile`` is ignored)."""
    del profile
    tl = build_timeline(trace)
    packets: list[tuple[int, int, bytes]] = []  # (time, order, TracePacket bytes)
    order = 0

    def add(time: int, packet: Message) -> None:
        nonlocal order
        order += 1
        packets.append((time, order, packet.varint(13, _SEQ_NEEDS_INCREMENTAL_STATE).bytes()))

    def add_event(time: int, track_event: bytes) -> None:
        nonlocal order
        order += 1
        packets.append((time, order, _event_packet(time, track_event)))

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
            for time, is_begin, s in lane:
                if is_begin:
                    add_event(time, _slice_begin(u, s.name, s.category, s.args))
                else:
                    add_event(time, _slice_end(u))
    for inst in tl.instants:
        add(
            inst.time,
            _packet(inst.time).message(
                11,
                _track_event(_TYPE_INSTANT, lane_uuid[(inst.track, 0)], inst.name, inst.category, inst.args),
            ),
        )
    for f in tl.flows:
        src = _track_event(_TYPE_INSTANT, lane_uuid[(f.source, 0)], f.name, "flow")
        src.fixed64(47, f.id)  # flow_ids
        add(f.source_time, _packet(f.source_time).message(11, src))
        dst = _track_event(_TYPE_INSTANT, lane_uuid[(f.target, 0)], "woken", "flow")
        dst.fixed64(48, f.id)  # terminating_flow_ids
        add(f.target_time, _packet(f.target_time).message(11, dst))
    for cname, values in tl.counters.items():
        u = uuid(("counter", cname))
        header.append(
            Message().message(
                60, Message().varint(1, u).varint(5, proc_uuid).string(2, cname).message(8, Message())
            )
        )  # CounterDescriptor
        for t, v in values:
            add(t, _packet(t).message(11, Message().varint(9, _TYPE_COUNTER).varint(11, u).varint(30, v)))

    # stack samples: PerfSample with interned callstacks
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
    sample_packets: list[tuple[int, Message]] = []
    for e in trace.events:
        if e[0] != Kind.SAMPLE:
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
        sample_packets.append((e[1], Message().varint(2, tl.pid).varint(3, e[3]).varint(4, cs)))  # PerfSample
    for t, ps in sample_packets:
        add(t, _packet(t).message(66, ps))  # perf_sample

    out = bytearray()
    # descriptors and interned data first, stamped with the trace start
    packets.sort(key=lambda p: (p[0], p[1]))
    start = min(trace.start_ns, packets[0][0]) if packets else trace.start_ns
    first = _packet(start).varint(13, _SEQ_INCREMENTAL_STATE_CLEARED)  # sequence_flags
    if len(interned):
        first.message(12, interned)  # interned_data
    out += Message().message(1, first).bytes()
    for m in header:
        m.varint(8, start).varint(10, _SEQ).varint(13, _SEQ_NEEDS_INCREMENTAL_STATE)
        out += Message().message(1, m).bytes()
    parts = [bytes(out)]
    for _time, _order, body in packets:
        parts.append(b"\x0a" + encode_varint(len(body)) + body)  # Trace.packet
    return b"".join(parts)
