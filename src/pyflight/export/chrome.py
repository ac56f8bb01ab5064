"""Chrome Trace Event Format (JSON) export, for chrome://tracing, Perfetto UI and others.

The same timeline as the Perfetto export: ``M`` metadata names the process and threads,
complete (``X``) events for slices on threads, async (``b``/``e``) events for asyncio
tasks and user tasks, flow (``s``/``f``) events for wake-ups, ``C`` counters, ``i``
instants, and stack samples as ``samples`` + ``stackFrames``. ``ts``/``dur`` are
microseconds from the start of the trace.
"""

from __future__ import annotations

import json
from typing import Any

from pyflight.core.events import Kind
from pyflight.export import frame_label, sampling_interval_ns
from pyflight.export.perfetto import TrackKey, build_timeline, nest_lanes
from pyflight.format.reader import Frame, Trace

__all__ = ["export_chrome"]


def export_chrome(trace: Trace, profile: str | None = None) -> bytes:
    """The trace as Trace Event JSON (``profile`` is ignored)."""
    del profile
    tl = build_timeline(trace)
    t0 = trace.start_ns
    pid = tl.pid

    def us(t: int) -> float:
        return round((t - t0) / 1000, 3)

    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": tl.process_name}}
    ]
    # async tracks (tasks, user tasks) need a tid too: give each a pseudo thread
    tid_of: dict[TrackKey, int] = {}
    for key, name in tl.tracks.items():
        if key[0] == "thread":
            tid_of[key] = int(key[1])
            events.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": int(key[1]), "args": {"name": name}}
            )
    by_track: dict[TrackKey, list[Any]] = {}
    for s in tl.slices:
        by_track.setdefault(s.track, []).append(s)
    for key, slices in by_track.items():
        if key[0] == "thread":
            lanes = nest_lanes(slices)
            for index, lane in enumerate(lanes):
                tid = int(key[1])
                if index:  # overlapping slices: a pseudo thread beside the real one
                    tid = -(abs(tid) * 16 + index)
                    events.append(
                        {
                            "ph": "M",
                            "name": "thread_name",
                            "pid": pid,
                            "tid": tid,
                            "args": {"name": f"{tl.tracks[key]} ({index + 1})"},
                        }
                    )
                for _t, is_begin, s in lane:
                    if is_begin:
                        events.append(
                            {
                                "ph": "X",
                                "name": s.name,
                                "cat": s.category,
                                "pid": pid,
                                "tid": tid,
                                "ts": us(s.start),
                                "dur": round((s.end - s.start) / 1000, 3),
                                "args": s.args,
                            }
                        )
        else:
            ident = f"{key[0]}:{key[1]}"
            for s in slices:
                common = {"cat": s.category, "pid": pid, "tid": 0, "id2": {"local": ident}, "name": s.name}
                events.append(
                    {**common, "ph": "b", "ts": us(s.start), "args": {"track": tl.tracks[key], **s.args}}
                )
                events.append({**common, "ph": "e", "ts": us(s.end)})
    for inst in tl.instants:
        tid = tid_of.get(inst.track, 0)
        events.append(
            {
                "ph": "i",
                "s": "t" if tid else "p",
                "name": inst.name,
                "cat": inst.category,
                "pid": pid,
                "tid": tid,
                "ts": us(inst.time),
                "args": inst.args,
            }
        )
    for f in tl.flows:
        src_tid = tid_of.get(f.source, 0)
        dst_tid = tid_of.get(f.target, 0)
        events.append(
            {
                "ph": "i",
                "s": "t",
                "name": f.name,
                "cat": "flow",
                "pid": pid,
                "tid": src_tid,
                "ts": us(f.source_time),
            }
        )
        events.append(
            {
                "ph": "s",
                "id": f.id,
                "name": f.name,
                "cat": "flow",
                "pid": pid,
                "tid": src_tid,
                "ts": us(f.source_time),
            }
        )
        events.append(
            {
                "ph": "i",
                "s": "t",
                "name": "woken",
                "cat": "flow",
                "pid": pid,
                "tid": dst_tid,
                "ts": us(f.target_time),
            }
        )
        events.append(
            {
                "ph": "f",
                "bp": "e",
                "id": f.id,
                "name": f.name,
                "cat": "flow",
                "pid": pid,
                "tid": dst_tid,
                "ts": us(f.target_time),
            }
        )
    for cname, values in tl.counters.items():
        for t, v in values:
            events.append({"ph": "C", "name": cname, "pid": pid, "tid": 0, "ts": us(t), "args": {"value": v}})

    # samples: stackFrames keyed by id, each with its parent (outer) frame
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

    samples: list[dict[str, Any]] = []
    weight = sampling_interval_ns(trace)
    for e in trace.events:
        if e[0] == Kind.SAMPLE and e[5]:
            samples.append(
                {
                    "cpu": 0,
                    "tid": e[3],
                    "ts": us(e[1]),
                    "name": "sample",
                    "sf": frame_id(tuple(reversed(e[5]))),
                    "weight": weight,
                }
            )
    doc = {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "stackFrames": stack_frames,
        "samples": samples,
        "otherData": {
            k: v for k, v in trace.meta.items() if k in ("pyflight.version", "python", "pid", "reason")
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()
