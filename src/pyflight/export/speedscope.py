"""speedscope export (https://www.speedscope.app/file-format-schema.json).

One ``sampled`` profile per thread for the chosen profile (default ``cpu``), its samples
in time order (outermost frame first) with weights in nanoseconds, so speedscope's
"Time Order" view shows each thread's stacks as they happened and "Left Heavy" the
aggregate.
"""

from __future__ import annotations

import json
from typing import Any

from pyflight import __version__
from pyflight.analysis.timeline import thread_name
from pyflight.export import profile_samples
from pyflight.format.reader import Frame, Trace

__all__ = ["SCHEMA", "export_speedscope"]

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def export_speedscope(trace: Trace, profile: str | None = None) -> bytes:
    name = profile or "cpu"
    frames: list[dict[str, Any]] = []
    index: dict[Frame, int] = {}
    per_thread: dict[int, tuple[list[list[int]], list[int]]] = {}
    for smp in profile_samples(trace, name):
        ids = []
        for fr in reversed(smp.stack):
            i = index.get(fr)
            if i is None:
                i = index[fr] = len(frames)
                entry: dict[str, Any] = {"name": fr.function or "?", "file": fr.file}
                if fr.line > 0:
                    entry["line"] = fr.line
                frames.append(entry)
            ids.append(i)
        stacks, weights = per_thread.setdefault(smp.tid, ([], []))
        stacks.append(ids)
        weights.append(smp.weight)
    profiles = []
    for tid, (stacks, weights) in sorted(per_thread.items(), key=lambda kv: -sum(kv[1][1])):
        profiles.append(
            {
                "type": "sampled",
                "name": f"{thread_name(trace, tid)} ({name})",
                "unit": "nanoseconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": stacks,
                "weights": weights,
            }
        )
    doc = {
        "$schema": SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": f"pyflight {name} profile" + (f" of {trace.path}" if trace.path else ""),
        "activeProfileIndex": 0,
        "exporter": f"pyflight {__version__}",
    }
    return json.dumps(doc, separators=(",", ":")).encode()
