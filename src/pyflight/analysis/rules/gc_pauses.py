"""Rule ``gc`` (docs/report.md explains its score)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.rules.base import Rule
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import GCPause, Model
from pyflight.analysis.frames import by_function, user_frame
from pyflight.analysis.queries import interval_ns, samples_in, seconds_since_start, thread_name
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, SECOND, fmt_ns, pct

#: A collecting thread on a CPU for less than this share of a pause (its CPU clock, from the
#: samples around it) waited for a CPU: a busy machine, not the collector, made it long.
ON_CPU_SHARE = 0.5


def _on_cpu_share(model: Model, pause: GCPause, interval: int) -> float | None:
    """The share of the time around ``pause`` its thread spent on a CPU: the CPU and wall
    time of the samples that cover it (from the first after its start to the first at or
    after its end); None if not measured."""
    cpu = wall = 0
    for sample in samples_in(model, pause.tid, pause.start + 1, pause.end + 2 * interval):
        if sample.span <= 0:
            return None
        cpu += sample.cpu
        wall += sample.span
        if sample.time >= pause.end:
            break
    else:
        return None
    return min(1.0, cpu / wall) if wall else None


def rule_gc(model: Model) -> list[Finding]:
    pauses = list(model.gc_pauses)
    if not pauses:
        return []
    # a pause counts for the time its thread could have been collecting: one stretched by
    # an overloaded machine (the thread off the CPU) counts for its on-CPU share only
    interval = interval_ns(model)
    durations = []
    stretched = 0
    for p in pauses:
        d = p.end - p.start
        share = _on_cpu_share(model, p, interval) if d >= 20 * MS else None
        if share is not None and share < ON_CPU_SHARE:
            stretched += 1
            d = int(d * share)
        durations.append(d)
    total = sum(durations)
    span = max(1, model.end - model.start)
    ratio = total / span
    worst_i = max(range(len(pauses)), key=lambda i: durations[i])
    worst, worst_d = pauses[worst_i], durations[worst_i]
    if total < 50 * MS:
        return []
    per_gen: Counter[int] = Counter()
    per_gen_ns: Counter[int] = Counter()
    for p, d in zip(pauses, durations, strict=True):
        per_gen[p.generation] += 1
        per_gen_ns[p.generation] += d
    # who triggered the collections: samples of the collecting thread during pauses
    weights: dict[Frame, float] = defaultdict(float)
    for p, d in zip(pauses, durations, strict=True):
        for sample in samples_in(model, p.tid, p.start, p.end):
            frame = user_frame(sample.stack)
            if frame is not None:
                weights[frame] += d
    culprit, _ = by_function(weights)
    score = clamp_score(
        ramp(ratio, [(0.03, 10), (0.08, 30), (0.15, 60), (0.25, 80), (0.4, 92)]),
        ramp(worst_d, [(50 * MS, 10), (100 * MS, 30), (300 * MS, 60), (1 * SECOND, 85)]),
    )
    where = f", triggered in {culprit.function}" if culprit else ""
    if stretched:
        where += (
            f" ({stretched} longer pause(s) counted for their time on a CPU only: the "
            "collecting thread waited for a CPU through most of them, a busy machine)"
        )
    return [
        Finding(
            rule="gc-pauses",
            score=score,
            title=(
                f"Garbage collection paused threads for {fmt_ns(total)} ({pct(ratio)} of the trace), "
                f"worst {fmt_ns(worst_d)}{where}"
            ),
            culprit=Culprit.of(culprit),
            evidence={
                "pauses": len(pauses),
                "pause_ns": total,
                "ratio": round(ratio, 4),
                "worst_ns": worst_d,
                "stretched_pauses": stretched,
                "worst_generation": worst.generation,
                "worst_at_s": seconds_since_start(model, worst.start),
                "collections_by_generation": {str(g): n for g, n in sorted(per_gen.items())},
                "pause_ns_by_generation": {str(g): n for g, n in sorted(per_gen_ns.items())},
            },
            moments=moments_of(
                [
                    Moment(
                        seconds_since_start(model, p.start),
                        p.end - p.start,
                        thread_name(model, p.tid),
                        "",
                        f"generation {p.generation} collection",
                    )
                    for p in pauses
                ]
            ),
            hint=(
                "Many container objects are allocated and kept alive. Create fewer cyclic "
                "structures, call gc.freeze() after start-up, or raise gc.set_threshold() for "
                "generation 0; use weakref to break cycles."
            ),
        )
    ]


RULE = Rule("gc-pauses", ("gc-pauses",), rule_gc)
