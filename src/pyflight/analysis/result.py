"""``analyze(trace)``: the one entry point from a trace to everything shown about it.

It builds the model once, runs the rules and takes the breakdown tables and profiles (a
``Report``); the report renderers, the viewer and the exports start from it.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyflight.analysis.rules import Finding, find
from pyflight.format.reader import Trace

if TYPE_CHECKING:
    from pyflight.analysis.breakdown import BreakdownRow
    from pyflight.analysis.model import Model
    from pyflight.analysis.profiles import Profile

__all__ = ["Report", "analyze", "report_of", "summary"]


@dataclass
class Report:
    trace: Trace
    model: Model
    findings: list[Finding]
    threads: list[BreakdownRow]
    tasks: list[BreakdownRow]
    cpu: Profile
    wall: Profile
    summary: dict[str, Any]


def analyze(trace: Trace, progress: Callable[[float], None] | None = None) -> Report:
    """Build the model (progress gets 0..0.9 of it), run the rules, take the tables."""
    # the model is millions of long-lived objects: collections during the analysis would
    # walk all of them again and again for nothing
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _analyze(trace, progress)
    finally:
        if gc_was_enabled:
            gc.enable()


def _analyze(trace: Trace, progress: Callable[[float], None] | None) -> Report:
    from pyflight.analysis.model import build

    def model_progress(done: float) -> None:
        if progress is not None:
            progress(0.9 * done)

    model = build(trace, progress=model_progress if progress is not None else None)
    report = report_of(model)
    if progress is not None:
        progress(1.0)
    return report


def report_of(model: Model) -> Report:
    """The rules, tables and profiles of a model already built: the viewer shows the
    timeline from the model while this runs (call it with automatic GC paused, as
    :func:`analyze` does: the model is millions of long-lived objects)."""
    from pyflight.analysis.breakdown import task_breakdown, thread_breakdown
    from pyflight.analysis.profiles import cpu_profile, wall_profile

    report = Report(
        trace=model.trace,
        model=model,
        findings=find(model),
        threads=thread_breakdown(model),
        tasks=task_breakdown(model),
        cpu=_without_recorder(model, cpu_profile(model)),
        wall=wall_profile(model),
        summary={},
    )
    report.summary = summary(report)
    return report


def _without_recorder(model: Model, profile: Profile) -> Profile:
    """The profile without the samples of pyflight's own threads (they only wait)."""
    from pyflight.analysis.profiles import Profile

    ours = {tid for tid, t in model.threads.items() if t.is_pyflight}
    if not ours:
        return profile
    mine = Profile(profile.name, profile.unit, profile.sample_type)
    keep = {s.stack for s in model.samples if s.tid not in ours}
    for stack, value in profile.stacks.items():
        if stack in keep:
            mine.add(stack, value)
    return mine


def _meta_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def summary(report: Report) -> dict[str, Any]:
    trace, model = report.trace, report.model
    meta = trace.meta
    data_loss = 0
    for event in trace.data_loss:
        data_loss += int(event.arg("events", 0) or 0)
    start_wall = trace.wall_time_ns(model.start)
    counts: dict[str, int] = {}
    for finding in report.findings:
        counts[finding.severity] = counts.get(finding.severity, 0) + 1
    threads = [t for t in model.threads.values() if not t.is_pyflight]
    return {
        "file": trace.path,
        "duration_ns": model.end - model.start,
        "duration_s": round((model.end - model.start) / 1e9, 6),
        "start_ns": model.start,
        "end_ns": model.end,
        "start_wall_ns": start_wall,
        "pid": _meta_json(meta.get("pid")),
        "python": meta.get("python"),
        "core": meta.get("core"),
        "argv": _meta_json(meta.get("argv")),
        "reason": meta.get("reason"),
        "threads": len(threads),
        "pyflight_threads": len(model.threads) - len(threads),
        "tasks": len(model.tasks) + len(getattr(model, "finished_tasks", []) or []),
        "loops": len(model.loops),
        "user_tasks": len(model.user_tasks),
        "regions": len(model.regions),
        "events": len(trace.events),
        "generations": len(trace.generations),
        "samples": len(model.samples),
        "sampling_interval_ns": model.sampling_interval_ns,
        "gc_pauses": len(model.gc_pauses),
        "gc_pause_ns": sum(p.end - p.start for p in model.gc_pauses),
        "data_loss": {
            "events": data_loss,
            "records": len(trace.data_loss),
            "bytes_lost": trace.bytes_lost,
            "warnings": list(trace.warnings),
        },
        "findings": {"warning": counts.get("warning", 0), "info": counts.get("info", 0)},
    }
