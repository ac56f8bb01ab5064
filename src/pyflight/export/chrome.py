"""Chrome Trace Event Format (JSON) export, for chrome://tracing, Perfetto UI and others.

The same timeline as the Perfetto export: ``M`` metadata names the process and threads,
complete (``X``) events for slices on threads, async (``b``/``e``) events for asyncio
tasks and user tasks, flow (``s``/``f``) events for wake-ups, ``C`` counters, ``i``
instants, and stack samples as ``samples`` + ``stackFrames``. ``ts``/``dur`` are
microseconds from the start of the trace.

The document is what ``json.dumps(doc, separators=(",", ":"))`` makes of the
dictionaries described in the comments below, byte for byte, but the millions of
events are written straight to JSON text from templates (building a dict per event
and encoding it took most of a 1M-event export): strings go through the ``json``
module's own string encoder, numbers through ``int.__repr__`` / ``float.__repr__``
as ``json`` does, anything else through ``json.dumps``.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _json_string  # what json.dumps uses
from typing import Any

from pyflight.analysis.frames import frame_label
from pyflight.analysis.model import Model
from pyflight.analysis.timeline import ArgValue, Slice, Timeline, TrackKey, build_timeline, nest_lanes
from pyflight.export import DEFAULT_INTERVAL_NS, build_model, gc_paused
from pyflight.format.reader import Frame, Trace

__all__ = ["export_chrome"]

_SEPARATORS = (",", ":")
_int_repr = int.__repr__


def _json(value: object) -> str:
    """``json.dumps(value)`` (compact), with fast paths for strings and ints."""
    if type(value) is str:
        return _json_string(value)
    if type(value) is int:
        return _int_repr(value)
    return json.dumps(value, separators=_SEPARATORS)


def _json_args(args: dict[str, ArgValue]) -> str:
    """``json.dumps(args)`` of an event's ``args`` (str keys, int or str values)."""
    if not args:
        return "{}"
    return "{" + ",".join([_json_string(k) + ":" + _json(v) for k, v in args.items()]) + "}"


def _us(ns: int) -> str:
    """``json.dumps(round(ns / 1000, 3))``: ``ns`` nanoseconds as microseconds.

    Written out from the integer: below 10**15 ns (11 days) a float keeps every
    nanosecond, so ``round(ns / 1000, 3)`` is the double nearest to the exact
    ``q.rrr`` and its repr (the shortest string that reads back as it) is that decimal
    without trailing zeros; formatting it directly is twice as fast as round + repr.
    """
    if 0 <= ns < 1_000_000_000_000_000:
        q, r = divmod(ns, 1000)
        if r == 0:
            return f"{q}.0"
        return f"{q}.{r:03d}".rstrip("0")
    return float.__repr__(round(ns / 1000, 3))


def export_chrome(trace: Trace, profile: str | None = None) -> bytes:
    """The trace as Trace Event JSON (``profile`` is ignored)."""
    del profile
    with gc_paused():
        model = build_model(trace)
        tl = build_timeline(model)
        events = _timeline_events(tl, trace.start_ns)
        stack_frames, samples = _samples(model, tl.pid)
        other = {k: v for k, v in trace.meta.items() if k in ("pyflight.version", "python", "pid", "reason")}
        # {"traceEvents": [...], "displayTimeUnit": "ns", "stackFrames": {...},
        #  "samples": [...], "otherData": {...}}
        parts = ['{"traceEvents":[', ",".join(events), '],"displayTimeUnit":"ns","stackFrames":']
        parts.append(json.dumps(stack_frames, separators=_SEPARATORS))
        parts += [',"samples":[', ",".join(samples), '],"otherData":']
        parts.append(json.dumps(other, separators=_SEPARATORS))
        parts.append("}")
        return "".join(parts).encode()


def _timeline_events(tl: Timeline, t0: int) -> list[str]:
    """The ``traceEvents``, each as its JSON text."""
    pid = _int_repr(tl.pid)

    def metadata(name: str, tid: int, value: str) -> str:
        doc = {"ph": "M", "name": name, "pid": tl.pid, "tid": tid, "args": {"name": value}}
        return json.dumps(doc, separators=_SEPARATORS)

    events = [metadata("process_name", 0, tl.process_name)]
    # async tracks (tasks, user tasks) need a tid too: give each a pseudo thread
    tid_of: dict[TrackKey, int] = {}
    for key, name in tl.tracks.items():
        if key[0] == "thread":
            tid_of[key] = int(key[1])
            events.append(metadata("thread_name", int(key[1]), name))
    by_track: dict[TrackKey, list[Slice]] = {}
    for s in tl.slices:
        by_track.setdefault(s.track, []).append(s)
    for key, slices in by_track.items():
        if key[0] == "thread":
            for index, lane in enumerate(nest_lanes(slices)):
                tid = int(key[1])
                if index:  # overlapping slices: a pseudo thread beside the real one
                    tid = -(abs(tid) * 16 + index)
                    events.append(metadata("thread_name", tid, f"{tl.tracks[key]} ({index + 1})"))
                begun = [s for _t, is_begin, s in lane if is_begin]
                _complete_events(events, pid, tid, t0, begun)
        else:
            # b/e pairs of one id must nest: slices that overlap without nesting (a wait
            # that begins inside a step) go to a second id, as to a second Perfetto lane
            for index, lane in enumerate(nest_lanes(slices)):
                ident = f"{key[0]}:{key[1]}" + (f"#{index + 1}" if index else "")
                _async_events(events, pid, ident, tl.tracks[key], t0, lane)
    for inst in tl.instants:
        tid = tid_of.get(inst.track, 0)
        scope = '"t"' if tid else '"p"'  # thread or process
        # {"ph": "i", "s": scope, "name", "cat", "pid", "tid", "ts", "args"}
        events.append(
            f'{{"ph":"i","s":{scope},"name":{_json(inst.name)},"cat":{_json(inst.category)},'
            f'"pid":{pid},"tid":{_int_repr(tid)},"ts":{_us(inst.time - t0)},"args":{_json_args(inst.args)}}}'
        )
    for f in tl.flows:
        src = f'"pid":{pid},"tid":{_int_repr(tid_of.get(f.source, 0))},"ts":{_us(f.source_time - t0)}'
        # flows join thread slices only: an arrow to a task ends on the thread that saw it woken
        dst_tid = tid_of.get(f.target, f.target_thread)
        dst = f'"pid":{pid},"tid":{_int_repr(dst_tid)},"ts":{_us(f.target_time - t0)}'
        name, flow_id = _json(f.name), _json(f.id)
        # an instant and the flow's start on the waker, an instant and its end on the woken
        events.append(f'{{"ph":"i","s":"t","name":{name},"cat":"flow",{src}}}')
        events.append(f'{{"ph":"s","id":{flow_id},"name":{name},"cat":"flow",{src}}}')
        events.append(f'{{"ph":"i","s":"t","name":"woken","cat":"flow",{dst}}}')
        events.append(f'{{"ph":"f","bp":"e","id":{flow_id},"name":{name},"cat":"flow",{dst}}}')
    for cname, values in tl.counters.items():
        # {"ph": "C", "name", "pid", "tid": 0, "ts", "args": {"value": v}}
        head = f'{{"ph":"C","name":{_json(cname)},"pid":{pid},"tid":0,"ts":'
        for t, v in values:
            events.append(f'{head}{_us(t - t0)},"args":{{"value":{_json(v)}}}}}')
    return events


def _complete_events(events: list[str], pid: str, tid: int, t0: int, slices: list[Slice]) -> None:
    """``X`` events: {"ph": "X", "name", "cat", "pid", "tid", "ts", "dur", "args"}."""
    where = f'"pid":{pid},"tid":{_int_repr(tid)},"ts":'
    append, us, json_value, json_args = events.append, _us, _json, _json_args
    for s in slices:
        _track, start, end, name, category, args = s
        append(
            f'{{"ph":"X","name":{json_value(name)},"cat":{json_value(category)},{where}{us(start - t0)},'
            f'"dur":{us(end - start)},"args":{json_args(args)}}}'
        )


def _async_events(
    events: list[str],
    pid: str,
    ident: str,
    track_name: str,
    t0: int,
    lane: list[tuple[int, bool, Slice]],
) -> None:
    """A ``b`` and an ``e`` event per slice of one lane of an async track, in the lane's
    order (inner ends before outer ones at the same time, as viewers pair them):
    {"cat", "pid", "tid": 0, "id2": {"local": ident}, "name", "ph": "b", "ts", "args":
    {"track": ..., **args}} and the same with "ph": "e", "ts" and no args."""
    where = f'"pid":{pid},"tid":0,"id2":{{"local":{_json(ident)}}}'
    track_arg = f'{{"track":{_json(track_name)}'  # the b event's args begin with it
    append, us, json_value, json_args = events.append, _us, _json, _json_args
    for time, is_begin, s in lane:
        _track, _start, _end, name, category, args = s
        common = f'{{"cat":{json_value(category)},{where},"name":{json_value(name)}'
        if not is_begin:
            append(f'{common},"ph":"e","ts":{us(time - t0)}}}')
            continue
        if not args:
            b_args = track_arg + "}"
        elif "track" not in args:
            b_args = track_arg + "," + json_args(args)[1:]
        else:  # (no slice has a "track" arg; if one did, its value would replace ours)
            b_args = json_args({"track": track_name, **args})
        append(f'{common},"ph":"b","ts":{us(time - t0)},"args":{b_args}}}')


def _samples(model: Model, pid: int) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``stackFrames`` (keyed by id, each with its parent (outer) frame) and ``samples``:
    {"cpu": 0, "pid", "tid", "ts", "name": "sample", "sf", "weight"}: the model's samples
    (the program's frames), each weighing the model's sampling interval. ``pid`` is not
    in Chrome's sample format, but speedscope names a thread's profile by it ("pid NaN"
    without); catapult ignores it."""
    frames: dict[tuple[Frame, ...], str] = {}
    stack_frames: dict[str, dict[str, Any]] = {}

    def frame_id(stack: tuple[Frame, ...]) -> str:  # stack: outermost first
        fid = frames.get(stack)
        if fid is None:
            fid = frames[stack] = str(len(frames) + 1)
            node: dict[str, Any] = {"name": frame_label(stack[-1]), "category": "python"}
            if len(stack) > 1:
                node["parent"] = frame_id(stack[:-1])
            stack_frames[fid] = node
        return fid

    weight = _json(model.sampling_interval_ns or DEFAULT_INTERVAL_NS)
    pid_json = _json(pid)
    t0 = model.trace.start_ns
    samples = [
        f'{{"cpu":0,"pid":{pid_json},"tid":{_json(smp.tid)},"ts":{_us(smp.time - t0)},"name":"sample",'
        f'"sf":{_json(frame_id(tuple(reversed(smp.stack))))},"weight":{weight}}}'
        for smp in model.samples
        if smp.stack
    ]
    return stack_frames, samples
