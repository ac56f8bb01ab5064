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

import struct
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from pyflight.analysis.model import Sample
from pyflight.analysis.timeline import ArgValue, Slice, TrackKey, build_timeline, nest_lanes
from pyflight.export import build_model, gc_paused
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

__all__ = ["export_perfetto"]


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
    tl = build_timeline(build_model(trace))
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

    interned = _add_samples(tl.model.samples if tl.model is not None else [], tl.pid, packets)

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


def _add_samples(model_samples: list[Sample], pid: int, packets: _Packets) -> Message:
    """The model's stack samples (the program's frames) as PerfSample packets; returns the
    InternedData of their callstacks."""
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
    for smp in model_samples:
        stack = smp.stack
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
        samples.append((smp.time, smp.tid, cs))
    pid_field = Message().varint(2, pid).bytes()  # PerfSample.pid
    for t, tid, cs in samples:
        ps = Message().varint(3, tid).varint(4, cs).bytes()  # PerfSample.tid, callstack_iid
        packets.add(t, _PERF_SAMPLE, pid_field + ps)
    return interned
