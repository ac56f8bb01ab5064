"""Rule ``cpu-hotspot`` (docs/report.md explains its score)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.rules.base import Rule
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model, Sample
from pyflight.analysis.frames import by_function, is_library
from pyflight.analysis.queries import interval_ns, seconds_since_start, thread_name
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of, stretches
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns, pct


def rule_cpu_hotspot(model: Model) -> list[Finding]:
    from pyflight.analysis.cpu import cpu_samples

    total = 0
    self_w: dict[Frame, float] = defaultdict(float)
    charged = []
    for sample, ns in cpu_samples(model):  # measured CPU, charged where the thread ran
        total += ns
        frame = next((f for f in sample.stack if not is_library(f)), None)
        if frame is not None:
            self_w[frame] += ns
            charged.append((sample, ns, frame))
    if total <= 0:
        return []
    frame, weight = by_function(self_w)
    if frame is None:
        return []
    span = max(1, model.end - model.start)
    wall_share = weight / span  # in CPUs: 1.0 = one core busy all the time
    cpu_share = weight / total
    if weight < 50 * MS:
        return []
    lines = sorted(
        ((f.line, w) for f, w in self_w.items() if (f.function, f.file) == (frame.function, frame.file)),
        key=lambda lw: -lw[1],
    )
    score = clamp_score(
        min(
            ramp(wall_share, [(0.05, 10), (0.2, 35), (0.5, 55), (0.9, 70)]),
            ramp(cpu_share, [(0.1, 10), (0.3, 40), (0.6, 70)]),
        )
    )
    return [
        Finding(
            rule="cpu-hotspot",
            score=score,
            title=(
                f"CPU hotspot: {frame.function} used {fmt_ns(weight)} of CPU ({pct(cpu_share)} of all CPU)"
            ),
            culprit=Culprit.of(frame),
            moments=_moments(model, charged, frame),
            evidence={
                "cpu_ns": int(weight),
                "cpu_share": round(cpu_share, 4),
                "cores_busy": round(wall_share, 3),
                "total_cpu_ns": total,
                "hot_lines": [{"line": ln, "cpu_ns": int(w)} for ln, w in lines[:5]],
            },
            hint=(
                f"Most CPU time is spent in {frame.function}. Optimise it (a better algorithm, "
                "caching, vectorised libraries), or run it in a process pool so it does not hold "
                "the GIL for the other threads."
            ),
        )
    ]


def _moments(model: Model, charged: list[tuple[Sample, int, Frame]], hot: Frame) -> list[Moment]:
    """The sampled stretches in which threads used CPU in the hot function."""
    interval = interval_ns(model)
    pieces = [
        (s.tid, max(model.start, s.time - (s.span or interval)), s.time, ns)
        for s, ns, frame in charged
        if (frame.function, frame.file) == (hot.function, hot.file)
    ]
    return moments_of(
        [
            Moment(
                seconds_since_start(model, start),
                end - start,
                thread_name(model, tid),
                "",
                f"used {fmt_ns(cpu)} of CPU in {hot.function}",
            )
            for tid, start, end, cpu in stretches(pieces, interval // 2)
        ]
    )


RULE = Rule("cpu-hotspot", ("cpu-hotspot",), rule_cpu_hotspot)
