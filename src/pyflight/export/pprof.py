"""pprof export: a gzipped ``perftools.profiles.Profile`` (google/pprof proto/profile.proto).

- ``cpu``: sample types ``samples/count`` and ``cpu/nanoseconds`` (samples taken while
  the thread was running, each weighing the sampling interval);
- ``wall``: ``samples/count`` and ``wall/nanoseconds`` (every sample);
- a blocking reason (``lock``, ``condition``, ``io``, ``sleep``, ``join``, ``select``,
  ``await``, ``other``): Go's contention-profile shape, ``contentions/count`` and
  ``delay/nanoseconds``, by the stack where the block began.

Each sample carries a ``thread`` label. Locations are (function, file, line); functions
are (function, file).
"""

from __future__ import annotations

import gzip

from pyflight.analysis.timeline import thread_name
from pyflight.export import DEFAULT_INTERVAL_NS, StackSample, build_model, profile_samples
from pyflight.export.protobuf import Message
from pyflight.format.reader import Frame, Trace

__all__ = ["export_pprof", "sample_types"]


def sample_types(profile: str) -> tuple[tuple[str, str], tuple[str, str]]:
    if profile == "cpu":
        return ("samples", "count"), ("cpu", "nanoseconds")
    if profile == "wall":
        return ("samples", "count"), ("wall", "nanoseconds")
    return ("contentions", "count"), ("delay", "nanoseconds")


def encode_profile(trace: Trace, profile: str, samples: list[StackSample], interval_ns: int) -> bytes:
    """The uncompressed Profile message (``interval_ns``: the sampling period, the model's)."""
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings)
        return strings[text]

    prof = Message()
    types = sample_types(profile)
    for typ, unit in types:
        prof.message(1, Message().varint(1, s(typ)).varint(2, s(unit)))  # sample_type
    agg: dict[tuple[tuple[Frame, ...], int], list[int]] = {}
    for smp in samples:
        values = agg.setdefault((smp.stack, smp.tid), [0, 0])
        values[0] += 1
        values[1] += smp.weight
    locations: dict[Frame, int] = {}
    functions: dict[tuple[str, str], int] = {}
    loc_msgs: list[Message] = []
    fn_msgs: list[Message] = []
    thread_key = s("thread")
    tid_key = s("tid")
    for (stack, tid), values in agg.items():
        ids: list[int] = []
        for fr in stack:  # innermost first: pprof's location_id[0] is the leaf
            lid = locations.get(fr)
            if lid is None:
                fkey = (fr.function, fr.file)
                fid = functions.get(fkey)
                if fid is None:
                    fid = functions[fkey] = len(functions) + 1
                    fn_msgs.append(
                        Message()
                        .varint(1, fid)
                        .varint(2, s(fr.function or "?"))
                        .varint(3, s(fr.function or "?"))
                        .varint(4, s(fr.file))
                    )
                lid = locations[fr] = len(locations) + 1
                loc_msgs.append(
                    Message().varint(1, lid).message(4, Message().varint(1, fid).varint(2, fr.line))
                )
            ids.append(lid)
        smsg = Message().packed_varints(1, ids).packed_varints(2, values)
        smsg.message(3, Message().varint(1, thread_key).varint(2, s(thread_name(trace, tid))))
        smsg.message(3, Message().varint(1, tid_key).varint(3, tid))
        prof.message(2, smsg)  # sample
    for m in loc_msgs:
        prof.message(4, m)  # location
    for m in fn_msgs:
        prof.message(5, m)  # function
    wall = trace.wall_time_ns(trace.start_ns)
    if profile in ("cpu", "wall"):
        period_type, period = types[1], interval_ns
    else:
        period_type, period = types[0], 1
    tail = Message()
    if wall is not None:
        tail.varint(9, wall)  # time_nanos
    tail.varint(10, trace.duration_ns)  # duration_nanos
    tail.message(11, Message().varint(1, s(period_type[0])).varint(2, s(period_type[1])))  # period_type
    tail.varint(12, period)  # period
    tail.varint(14, s(types[1][0]))  # default_sample_type
    for text in strings:  # string_table, in index order ("" first)
        prof.string(6, text)
    return prof.bytes() + tail.bytes()


def export_pprof(trace: Trace, profile: str | None = None) -> bytes:
    """The ``profile`` (default ``cpu``) as a gzipped pprof profile."""
    name = profile or "cpu"
    model = build_model(trace)
    samples = profile_samples(trace, name, model)
    interval = model.sampling_interval_ns or DEFAULT_INTERVAL_NS  # the weight of each sample
    return gzip.compress(encode_profile(trace, name, samples, interval), mtime=0)
