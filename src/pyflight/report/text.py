"""The terminal report: findings first, then the thread and task tables, then top stacks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyflight.analysis.operations import Operation, operations
from pyflight.analysis.rules import INFO, Finding
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason
from pyflight.report import Report
from pyflight.report.evidence import evidence_text

if TYPE_CHECKING:
    from pyflight.analysis.breakdown import BreakdownRow
    from pyflight.analysis.profiles import Profile

__all__ = ["render"]

_MARK = {"warning": "!!", "info": "--", "ok": "  "}
_COLOR = {"warning": "\x1b[1;31m", "info": "\x1b[33m", "ok": "\x1b[2m"}
_RESET = "\x1b[0m"


def _clean(text: object) -> str:
    """Trace strings may hold anything: no control characters on the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [
            c.rjust(w) if i >= right_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _ms(ns: int) -> str:
    return f"{ns / 1e6:,.1f}"


def breakdown_lines(rows: Sequence[BreakdownRow], limit: int = 20) -> list[str]:
    reasons = sorted({r for row in rows for r, ns in row.blocked.items() if ns})
    things = sorted({t for row in rows for t, ns in row.waiting_for.items() if ns})
    header = ["name", "count", "total ms", "running", "ready"]
    header += [f"{BlockReason(r).name.lower()}" for r in reasons] + things + ["gc", "idle", "unknown"]
    body = []
    for row in rows[:limit]:
        cells = [_clean(row.name)[:40], str(row.count), _ms(row.total), _ms(row.running), _ms(row.ready)]
        cells += [_ms(row.blocked.get(r, 0)) for r in reasons]
        cells += [_ms(row.waiting_for.get(t, 0)) for t in things]
        cells += [_ms(row.gc), _ms(row.idle), _ms(row.unknown)]
        body.append(cells)
    lines = _table(header, body, right_from=1)
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more")
    return lines


def latency_lines(ops: Sequence[Operation], limit: int = 15) -> list[str]:
    """Per route / task / region: calls, latency quantiles, total and share of the window."""
    header = ["operation", "kind", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "total ms", "share"]
    body = [
        [
            _clean(op.name)[:40],
            op.kind,
            str(op.count),
            _ms(op.quantile(0.5)),
            _ms(op.quantile(0.9)),
            _ms(op.quantile(0.99)),
            _ms(op.maximum),
            _ms(op.total),
            f"{100 * op.share:.0f}%",
        ]
        for op in ops[:limit]
    ]
    lines = _table(header, body, right_from=2)
    if len(ops) > limit:
        lines.append(f"  ... {len(ops) - limit} more")
    return lines


def finding_lines(finding: Finding, color: bool) -> list[str]:
    sev = finding.severity
    mark = _MARK[sev]
    head = f"{mark} [{finding.score:3d}] {_clean(finding.title)}"
    if color:
        head = f"{_COLOR[sev]}{head}{_RESET}"
    out = [head, f"         rule: {finding.rule}"]
    if finding.culprit is not None:
        c = finding.culprit
        out.append(f"         culprit: {_clean(c.function)} at {_clean(c.file)}:{c.line}")
    for key, value in finding.evidence.items():
        text = evidence_text(key, value)
        if text is not None:
            out.append(f"         {key}: {_clean(text)[:150]}")
    if finding.moments:
        shown = "; ".join(
            f"{m.at_s:.3f} s +{fmt_ns(m.duration_ns)} {_clean(m.thread)}"
            + (f" [{_clean(m.task)}]" if m.task else "")
            for m in finding.moments[:3]
        )
        more = len(finding.moments) - 3
        out.append(f"         moments: {shown}" + (f" (+{more} more in --json/--html)" if more > 0 else ""))
    if finding.hint:
        out.append(f"         hint: {_clean(finding.hint)}")
    return out


def stack_lines(profile: Profile, n: int = 5, depth: int = 6) -> list[str]:
    total = profile.total or 1
    out = []
    for stack, weight in sorted(profile.stacks.items(), key=lambda kv: -kv[1])[:n]:
        share = weight / total
        amount = fmt_ns(weight) if profile.unit == "nanoseconds" else str(weight)
        out.append(f"  {100 * share:5.1f}%  {amount}")
        if not stack:  # a thread in native code, or only pyflight's own frames (a launcher serving)
            out.append("           (no frames of the program)")
        for frame in stack[:depth]:
            out.append(f"           {_clean(frame.function)}  {_clean(frame.file)}:{frame.line}")
        if len(stack) > depth:
            out.append(f"           ... {len(stack) - depth} outer frames")
    return out or ["  (no samples)"]


def render(report: Report, *, color: bool = False, all_findings: bool = False) -> str:
    s = report.summary
    lines = [
        f"pyflight report: {_clean(s.get('file') or '-')}",
        f"  {s['duration_s']:.3f} s, {s['threads']} threads, {s['tasks']} asyncio tasks, "
        f"{s['user_tasks']} user tasks, {s['events']:,} events in {s['generations']} generations, "
        f"{s['samples']:,} samples",
    ]
    loss = s["data_loss"]
    if loss["events"] or loss["bytes_lost"] or loss["records"]:
        lines.append(f"  data loss: {loss['events']} events, {loss['bytes_lost']} bytes unreadable")
    lines.append("")
    shown = [f for f in report.findings if all_findings or f.score >= INFO]
    hidden = len(report.findings) - len(shown)
    lines.append(f"Findings ({s['findings']['warning']} warning, {s['findings']['info']} info)")
    if not shown:
        lines.append("  No problems found.")
    for finding in shown:
        lines.extend(finding_lines(finding, color))
        lines.append("")
    if hidden:
        lines.append(f"  ({hidden} minor findings not shown; --json lists them)")
        lines.append("")
    ops = operations(report.model)
    if ops:
        lines.append("Latency by route / task / region (share: of the window in progress)")
        lines.extend(latency_lines(ops))
        lines.append("")
    lines.append("Threads (ms)")
    lines.extend(breakdown_lines(report.threads) if report.threads else ["  (none)"])
    lines.append("")
    if report.tasks:
        lines.append("Asyncio tasks by coroutine (ms)")
        lines.extend(breakdown_lines(report.tasks))
        lines.append("")
    lines.append("Top CPU stacks (innermost first)")
    lines.extend(stack_lines(report.cpu))
    lines.append("")
    lines.append("Top wall-clock stacks (innermost first)")
    lines.extend(stack_lines(report.wall))
    return "\n".join(lines) + "\n"
