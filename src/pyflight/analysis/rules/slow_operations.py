"""Rule ``slow-operations``: a route / ``pyflight.task`` / region that is slow on every
call and covers much of the window.

``slow-tasks`` only flags outliers against the median, so an endpoint that always takes
300 ms got "No problems found". This rule scores an operation by its typical latency
(p50) and by the share of the window during which it was in progress, both needed: a
20 ms route that is always in flight is a busy service, not a slow one, and a 1 s job run
once in a minute is not where the time goes.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pyflight.analysis.frames import by_function
from pyflight.analysis.operations import Operation, operations
from pyflight.analysis.queries import seconds_since_start, thread_name
from pyflight.analysis.rules.base import Rule
from pyflight.analysis.rules.finding import MIN_SCORE, Culprit, Finding, Moment, moments_of
from pyflight.analysis.rules.scoring import ramp
from pyflight.analysis.rules.slow_tasks import _asyncio_task_at, _culprit_in_window, _task_culprit
from pyflight.analysis.units import fmt_ns

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
    from pyflight.format.reader import Frame

__all__ = ["RULE", "RULE_IDS", "rule_slow_operations"]

RULE_IDS = ("slow-operations",)
MS = 1_000_000
#: An operation needs this many instances to be called "slow on every call".
MIN_COUNT = 3
#: The culprit is looked for in at most this many of the longest instances.
CULPRIT_INSTANCES = 40


def score_operation(p50_ns: int, share: float) -> int:
    """Warning (>= 75) from p50 >= ~250 ms with the operation in progress >= ~45% of the
    window; both ramps must agree, the lower one is the score."""
    by_latency = ramp(p50_ns / MS, [(30, 0), (50, 15), (100, 40), (250, 78), (1000, 90)])
    by_share = ramp(share, [(0.05, 0), (0.15, 25), (0.3, 55), (0.45, 78), (0.8, 92)])
    return max(0, min(100, round(min(by_latency, by_share))))


def _culprit(model: Model, op: Operation) -> Frame | None:
    """Where the longest instances spent their time (weighted by their durations)."""
    weights: Counter[Frame] = Counter()
    longest = sorted(op.instances, key=lambda it: it[0] - it[1])[:CULPRIT_INSTANCES]
    for start, end, tid, _ in longest:
        task = _asyncio_task_at(model, tid, start, end)
        frame = _task_culprit(model, task, start, end) if task is not None else None
        if frame is None and task is None:
            # on an event loop's thread the samples of a suspended task are the loop's
            # idle select under main(): they say nothing about where the task waited
            frame = _culprit_in_window(model, tid, start, end)
        if frame is not None:
            weights[frame] += end - start
    frame, _ = by_function(dict(weights))
    return frame


def _task_name(model: Model, task: int) -> str:
    ut = model.user_tasks.get(task) if task else None
    return ut.name if ut is not None else ""


def _threads(model: Model, op: Operation) -> str:
    names = Counter(thread_name(model, tid) for _, _, tid, _ in op.instances)
    shown = [name for name, _ in names.most_common(3)]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def rule_slow_operations(model: Model) -> list[Finding]:
    out: list[Finding] = []
    window = max(model.end - model.start, 1)
    for op in operations(model):
        # instances lasting the whole window are a worker's or a session's life, not a latency
        instances = [it for it in op.instances if it[1] - it[0] < 0.8 * window]
        if len(instances) < MIN_COUNT:
            continue
        op = Operation(op.kind, op.name, instances, op.covered, op.window)
        p50 = op.quantile(0.5)
        score = score_operation(p50, op.share)
        if score < MIN_SCORE:
            continue
        frame = _culprit(model, op)
        label = "Route/task" if op.kind == "task" else "Region"
        title = (
            f"{label} {op.name!r} is slow on every call: median {fmt_ns(p50)} over "
            f"{op.count} calls, in progress {100 * op.share:.0f}% of the "
            f"{fmt_ns(window)} window"
        )
        if frame is not None:
            title += f"; time goes to {frame.function}"
        out.append(
            Finding(
                rule="slow-operations",
                score=score,
                title=title,
                culprit=Culprit.of(frame),
                evidence={
                    "kind": op.kind,
                    "name": op.name,
                    "calls": op.count,
                    "p50_ns": p50,
                    "p90_ns": op.quantile(0.9),
                    "p99_ns": op.quantile(0.99),
                    "max_ns": op.maximum,
                    "total_ns": op.total,
                    "share_of_window": f"{100 * op.share:.0f}%",
                    "threads": _threads(model, op),
                },
                moments=moments_of(
                    [
                        Moment(
                            seconds_since_start(model, start),
                            end - start,
                            thread_name(model, tid),
                            op.name if op.kind == "task" else _task_name(model, task),
                            f"{op.kind} {op.name}",
                        )
                        for start, end, tid, task in op.instances
                    ]
                ),
                hint=(
                    "This operation is slow every time, not now and then: make the culprit "
                    "line cheaper (cache its result, batch or index the query, move the work "
                    "out of the request), or run it concurrently. The latency table of the "
                    "report lists every operation's p50/p90/p99."
                ),
            )
        )
    # a region nested in a slow route usually has the same culprit: keep the stronger one
    best: dict[Culprit | None, Finding] = {}
    for finding in out:
        key = finding.culprit
        if key is None or key not in best or best[key].score < finding.score:
            best[key if key is not None else Culprit("", str(id(finding)), 0)] = finding
    return list(best.values())


RULE = Rule("slow-operations", RULE_IDS, rule_slow_operations)
