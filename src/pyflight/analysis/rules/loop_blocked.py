"""Rule ``loop-blocked`` (docs/report.md explains its score)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.loop_foreign import rule_foreign_loop_blocked
from pyflight.analysis.rules.loop_many_steps import rule_loop_many_steps
from pyflight.format.reader import Frame

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
from pyflight.analysis.frames import by_function
from pyflight.analysis.queries import seconds_since_start, thread_name
from pyflight.analysis.rules._loop import long_steps, loop_life
from pyflight.analysis.rules.finding import Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import clamp_score, ramp
from pyflight.analysis.units import MS, fmt_ns


def rule_loop_blocked(model: Model) -> list[Finding]:
    """Event-loop steps that ran for long: a synchronous call blocked the loop."""
    out: list[Finding] = []
    for loop in model.loops.values():
        merged = long_steps(model, loop)
        if not merged:
            continue
        blocked = sum(w.end - w.start for w in merged)
        worst_w = max(merged, key=lambda w: w.end - w.start)
        worst = worst_w.end - worst_w.start
        life = max(1, loop_life(model, loop))
        share = blocked / life
        weights: dict[Frame, float] = defaultdict(float)
        tasks: Counter[str] = Counter()
        running = sleeping = 0
        for w in merged:
            for frame, weight in w.weights.items():
                weights[frame] += weight
            tasks.update(w.tasks)
            running += w.running
            sleeping += w.sleeping
        culprit, _ = by_function(weights)
        worst_a = worst_w.start
        kind = "a CPU-heavy step" if running > sleeping else "a synchronous (blocking) call"
        where = f" in {culprit.function}" if culprit else ""
        score = clamp_score(
            ramp(worst / MS, [(100, 35), (250, 60), (500, 78), (1000, 88), (5000, 95)]),
            ramp(share, [(0.01, 30), (0.05, 60), (0.2, 85), (0.5, 95)]),
        )
        out.append(
            Finding(
                rule="loop-blocked",
                score=score,
                title=f"Event loop blocked for up to {fmt_ns(worst)} by {kind}{where}",
                culprit=Culprit.of(culprit),
                evidence={
                    "loop": loop.loop,
                    "thread": thread_name(model, loop.tid),
                    "long_steps": len(merged),
                    "blocked_ns": blocked,
                    "blocked_share": round(share, 4),
                    "worst_ns": worst,
                    "worst_at_s": seconds_since_start(model, worst_a),
                    "tasks": [name for name, _ in tasks.most_common(3)],
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, w.start),
                            w.end - w.start,
                            thread_name(model, loop.tid),
                            ", ".join(name for name, _ in w.tasks.most_common(2)),
                            "long step",
                        )
                        for w in merged
                    ]
                ),
                hint=(
                    "Nothing else runs on the loop while a step runs. Move the blocking call off "
                    "the loop (await an async equivalent, or `await loop.run_in_executor(None, ...)` "
                    "/ `asyncio.to_thread(...)`); split CPU-heavy work or run it in a process pool."
                ),
            )
        )
    return out


def _long_and_many_medium_steps(model: Model) -> list[Finding]:
    """One long step, or many medium ones (``loop_many_steps``): both a blocked loop; on a
    loop that is not asyncio's own (uvloop), blocking calls made in its steps."""
    return rule_loop_blocked(model) + rule_loop_many_steps(model) + rule_foreign_loop_blocked(model)


RULE = Rule("loop-blocked", ("loop-blocked",), _long_and_many_medium_steps)
