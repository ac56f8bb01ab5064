"""Rule ``data-loss`` (docs/report.md explains its score)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pyflight.analysis.rules.base import Rule
from pyflight.core.events import Kind

if TYPE_CHECKING:
    from pyflight.analysis.model import Model
from pyflight.analysis.queries import seconds_since_start, thread_name
from pyflight.analysis.rules.finding import MAX_MOMENTS, Finding, Moment
from pyflight.analysis.rules.scoring import clamp_score, ramp


def rule_data_loss(model: Model) -> list[Finding]:
    trace = model.trace
    lost_events = 0
    sources: Counter[str] = Counter()
    disabled: list[str] = []
    reasons: list[str] = []
    moments: list[Moment] = []
    for event in model.data_loss:
        if event.kind == Kind.DATA_LOSS:
            n = int(event.arg("events", 0) or 0)
            lost_events += n
            sources[str(event.arg("source", "?"))] += n
            reason = str(event.arg("reason", "") or "")
            if reason and reason not in reasons:
                reasons.append(reason)
            what = f"{n} event(s) of {event.arg('source', '?')} lost" + (f": {reason}" if reason else "")
            moments.append(
                Moment(seconds_since_start(model, event.time), 0, thread_name(model, event.thread), "", what)
            )
        elif event.kind == Kind.SOURCE_DISABLED:
            disabled.append(f"{event.arg('source', '?')}: {event.arg('reason', '')}")
            moments.append(
                Moment(
                    seconds_since_start(model, event.time),
                    0,
                    thread_name(model, event.thread),
                    "",
                    f"source {event.arg('source', '?')} disabled: {event.arg('reason', '')}",
                )
            )
    bytes_lost = int(getattr(trace, "bytes_lost", 0) or 0)
    warnings = list(getattr(trace, "warnings", []) or [])
    if not (lost_events or disabled or bytes_lost or warnings or sources):
        return []
    n_events = max(1, len(getattr(trace, "events", [])))
    lost_share = lost_events / (lost_events + n_events)
    score = clamp_score(
        ramp(lost_share, [(0.0, 30), (0.01, 45), (0.1, 75), (0.3, 90)]) if lost_events else 0,
        60 if disabled else 0,
        75 if bytes_lost else 0,
        40 if warnings else 0,
        30 if sources else 0,
    )
    parts = []
    if lost_events:
        parts.append(f"{lost_events} events lost")
    if disabled:
        parts.append(f"{len(disabled)} source(s) disabled")
    if bytes_lost:
        parts.append(f"{bytes_lost} bytes of the file damaged")
    if warnings and not bytes_lost:
        parts.append(f"{len(warnings)} reader warning(s)")
    foreign_loop = any("not an asyncio.BaseEventLoop" in r or "not BaseEventLoops" in r for r in reasons)
    if not parts:
        parts.append(
            "asyncio steps and tasks not traced (uvloop: sampling only)"
            if foreign_loop and set(sources) == {"asyncio"}
            else "reduced coverage: " + ", ".join(sorted(sources))
        )
    return [
        Finding(
            rule="data-loss",
            score=score,
            title="Recording incomplete: " + ", ".join(parts),
            culprit=None,
            # the first ones (each moment is an instant: where coverage began to be lost)
            moments=sorted(moments, key=lambda m: m.at_s)[:MAX_MOMENTS],
            evidence={
                "lost_events": lost_events,
                "lost_share": round(lost_share, 4),
                "by_source": dict(sources),
                "reasons": reasons[:5],
                "disabled_sources": disabled,
                "bytes_lost": bytes_lost,
                "reader_warnings": warnings[:5],
            },
            hint=(
                "Parts of the trace are missing, so other findings may understate problems. "
                "Raise max_bytes or lower min_age if events were dropped, and check the warnings "
                "printed by the program for disabled sources."
                + (
                    " The event loop is not asyncio's own (uvloop): its steps, tasks and stalls "
                    "cannot be recorded, only sampled (blocking calls made in its steps are "
                    "still seen: loop-blocked). To see them, run on asyncio's loop while "
                    "you investigate (`uvicorn --loop asyncio`, or without `uvloop.install()` / "
                    "`loop_factory=uvloop.new_event_loop`)."
                    if foreign_loop
                    else ""
                )
            ),
        )
    ]


RULE = Rule("data-loss", ("data-loss",), rule_data_loss)
