"""``pyflight report --html OUT``: one self-contained HTML file.

Everything is generated here, server-side: inline CSS, inline SVG (flame graphs, latency
histograms, timeline overview), no script needed and nothing fetched, so the file opens
from disk and reads the same when mailed. Every string that comes from a trace goes
through ``html.escape``.
"""

from __future__ import annotations

import html
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pyflight.analysis.cpu import UNTRACED
from pyflight.analysis.operations import operations
from pyflight.analysis.rules import Finding
from pyflight.analysis.units import fmt_ns
from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame
from pyflight.report import Report
from pyflight.report.evidence import evidence_text

__all__ = ["flame_svg", "histogram_svg", "render", "timeline_svg"]

WIDTH = 1000
ROW = 16


_SURROGATES = re.compile("[\ud800-\udfff]")


def esc(value: object) -> str:
    """HTML-escaped text that can be written as UTF-8: trace strings may hold lone
    surrogates (a non-UTF-8 file path or name decoded with ``surrogateescape``), shown as U+FFFD."""
    return _SURROGATES.sub("\ufffd", html.escape(str(value), quote=True))


CSS = """
body{font:14px/1.4 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:16px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:14px 0 4px}
.meta{color:#555}.finding{border-left:6px solid #999;background:#f7f7f7;padding:8px 12px;margin:10px 0}
.finding.warning{border-color:#d33;background:#fff1f0}.finding.info{border-color:#e6a700;background:#fffbe6}
.score{font-weight:bold;display:inline-block;min-width:3em}.culprit{font-family:monospace}
.hint{margin-top:4px}.ev{font-size:12px;color:#444;margin:4px 0 0;padding-left:18px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{padding:2px 8px;border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0;text-align:left}
svg text{font:11px monospace}.legend span{display:inline-block;padding:0 6px;margin-right:6px;font-size:12px}
.legend span[title],th[title]{cursor:help;text-decoration:underline dotted}
code{font-size:12px}
"""

STATE_COLORS = {
    "RUNNING": "#4caf50",
    "READY": "#ffc107",
    "BLOCKED": "#e57373",
    "GC": "#9c27b0",
    "IDLE": "#d7dde3",
    "UNKNOWN": "#ffffff",
}
REASON_COLORS = {
    BlockReason.LOCK: "#d32f2f",
    BlockReason.CONDITION: "#ef6c00",
    BlockReason.SLEEP: "#90a4ae",
    BlockReason.JOIN: "#8d6e63",
    BlockReason.IO: "#1e88e5",
    BlockReason.SELECT: "#64b5f6",
    BlockReason.AWAIT: "#bdbdbd",
    BlockReason.OTHER: "#e377c2",
}
#: What a legend entry means where its name does not say it (its tooltip): "blocked:
#: other" is mostly a wait found from the samples, in the words of the model's detail.
LEGEND_NOTES = {"blocked: other": UNTRACED}


def _state_name(state: Any) -> str:
    return str(getattr(state, "name", state))


def _color(iv: Any) -> str:
    name = _state_name(iv.state)
    if name == "BLOCKED" and iv.reason is not None:
        return REASON_COLORS.get(BlockReason(iv.reason), STATE_COLORS["BLOCKED"])
    return STATE_COLORS.get(name, "#ccc")


def _frame_color(frame: Frame) -> str:
    h = zlib.crc32(frame.function.encode("utf-8", "replace"))
    if "/lib/python3" in frame.file or frame.file.startswith("<"):
        return f"hsl({200 + h % 30},45%,{70 + h % 12}%)"
    return f"hsl({10 + h % 40},{70 + h % 20}%,{58 + h % 12}%)"


# ---------------------------------------------------------------- flame graph


class _Node:
    """One box: a function (by name and file) under one chain of callers."""

    __slots__ = ("children", "frame", "lines", "total")

    def __init__(self, frame: Frame | None) -> None:
        self.frame = frame
        self.total = 0
        self.lines: dict[int, int] = {}
        self.children: dict[tuple[str, str], _Node] = {}

    def hottest_line(self) -> int:
        return max(self.lines.items(), key=lambda kv: (kv[1], -kv[0]))[0] if self.lines else 0


def flame_svg(stacks: dict[tuple[Frame, ...], int], unit: str = "nanoseconds", max_depth: int = 48) -> str:
    """An icicle graph (callers on top): one rect per function under each chain of callers,
    width = share of the weight. Lines of one function share its box (split by line, a
    hot loop's function falls apart into slivers too narrow to name); the tooltip gives
    the line that weighs most."""
    root = _Node(None)
    for stack, weight in stacks.items():
        if weight <= 0:
            continue
        root.total += weight
        node = root
        for frame in reversed(stack[-max_depth:] if len(stack) > max_depth else stack):
            key = (frame.function, frame.file)
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(frame)
            child.total += weight
            child.lines[frame.line] = child.lines.get(frame.line, 0) + weight
            node = child
    if root.total == 0:
        return '<p class="meta">No samples.</p>'
    parts: list[str] = []
    depth_max = 0
    scale = WIDTH / root.total

    def amount(w: int) -> str:
        return fmt_ns(w) if unit == "nanoseconds" else f"{w} {unit}"

    def walk(node: _Node, x: float, depth: int) -> None:
        nonlocal depth_max
        for child in sorted(node.children.values(), key=lambda n: n.frame.function if n.frame else ""):
            w = child.total * scale
            if w >= 0.5 and child.frame is not None:
                depth_max = max(depth_max, depth)
                f = child.frame
                share = 100 * child.total / root.total
                tip = f"{f.function} ({f.file}:{child.hottest_line()}) {amount(child.total)}, {share:.1f}%"
                y = depth * ROW
                parts.append(
                    f'<g><title>{esc(tip)}</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" '
                    f'height="{ROW - 1}" fill="{_frame_color(f)}"/>'
                )
                chars = int((w - 4) / 6.6)
                if chars >= 3:
                    label = f.function if len(f.function) <= chars else f.function[: chars - 1] + "…"
                    parts.append(f'<text x="{x + 2:.2f}" y="{y + ROW - 4}">{esc(label)}</text>')
                parts.append("</g>")
                walk(child, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    height = (depth_max + 1) * ROW
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {WIDTH} {height}" '
        f'preserveAspectRatio="xMinYMin meet" role="img">{"".join(parts)}</svg>'
    )


# ---------------------------------------------------------------- histograms


def histogram_svg(durations: Sequence[int], width: int = 480, height: int = 110) -> str:
    """Latencies on log-scaled bins (x: duration, y: count)."""
    if not durations:
        return ""
    lo = max(1, min(durations))
    hi = max(durations)
    lo_l, hi_l = math.log10(lo), math.log10(max(hi, lo * 1.01))
    nbins = 24
    counts = [0] * nbins
    for d in durations:
        i = int((math.log10(max(d, 1)) - lo_l) / (hi_l - lo_l) * nbins)
        counts[min(nbins - 1, max(0, i))] += 1
    peak = max(counts)
    bw = width / nbins
    plot_h = height - 20
    parts = []
    for i, c in enumerate(counts):
        if not c:
            continue
        h = max(1.0, plot_h * c / peak)
        edge = 10 ** (lo_l + (hi_l - lo_l) * i / nbins)
        edge2 = 10 ** (lo_l + (hi_l - lo_l) * (i + 1) / nbins)
        parts.append(
            f'<g><title>{fmt_ns(edge)} - {fmt_ns(edge2)}: {c}</title><rect x="{i * bw:.1f}" '
            f'y="{plot_h - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" fill="#5c8dd6"/></g>'
        )
    parts.append(f'<text x="0" y="{height - 4}">{fmt_ns(lo)}</text>')
    parts.append(f'<text x="{width}" y="{height - 4}" text-anchor="end">{fmt_ns(hi)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


# ---------------------------------------------------------------- timeline


def _bucket_rects(intervals: Iterable[Any], start: int, span: int, y: int, buckets: int = WIDTH) -> list[str]:
    """Dominant colour per pixel bucket, consecutive equal buckets merged into one rect."""
    weight: list[dict[str, int]] = [defaultdict(int) for _ in range(buckets)]
    per = span / buckets
    for iv in intervals:
        color = _color(iv)
        if color == STATE_COLORS["UNKNOWN"]:
            continue
        a = max(0, int((iv.start - start) / per))
        b = min(buckets - 1, int((iv.end - start) / per))
        for i in range(a, b + 1):
            lo = max(iv.start, start + i * per)
            hi = min(iv.end, start + (i + 1) * per)
            if hi > lo:
                weight[i][color] += int(hi - lo) or 1
    rects = []
    run_color, run_start = "", 0
    for i in range(buckets + 1):
        color = max(weight[i].items(), key=lambda kv: kv[1])[0] if i < buckets and weight[i] else ""
        if color != run_color:
            if run_color:
                rects.append(
                    f'<rect x="{run_start * WIDTH / buckets:.1f}" y="{y}" '
                    f'width="{(i - run_start) * WIDTH / buckets:.1f}" height="{ROW - 3}" fill="{run_color}"/>'
                )
            run_color, run_start = color, i
    return rects


def timeline_svg(report: Report, max_rows: int = 40) -> str:
    model = report.model
    start, span = model.start, max(1, model.end - model.start)
    label_w = 180
    rows: list[str] = []
    y = 0
    threads = sorted((t for t in model.threads.values() if not t.is_pyflight), key=lambda t: t.start)
    for thread in threads[:max_rows]:
        rows.append(f'<text x="0" y="{y + ROW - 5}">{esc((thread.name or str(thread.tid))[:24])}</text>')
        rects = _bucket_rects(thread.intervals, start, span, y)
        rows.append(f'<g transform="translate({label_w},0)">{"".join(rects)}</g>')
        y += ROW
    for loop in model.loops.values():
        rows.append(f'<text x="0" y="{y + ROW - 5}">loop {esc(loop.loop)}</text>')
        rects = _bucket_rects(list(loop.idle) + list(loop.busy), start, span, y)
        stall_rects = [
            f'<rect x="{(s.start - start) * WIDTH / span:.1f}" y="{y}" '
            f'width="{max(1.0, (s.end - s.start) * WIDTH / span):.1f}" height="{ROW - 3}" fill="#b71c1c">'
            f"<title>stall {esc(fmt_ns(s.end - s.start))}</title></rect>"
            for s in loop.stalls
        ]
        rows.append(f'<g transform="translate({label_w},0)">{"".join(rects + stall_rects)}</g>')
        y += ROW
    if len(threads) > max_rows:
        rows.append(f'<text x="0" y="{y + ROW - 5}">... {len(threads) - max_rows} more threads</text>')
        y += ROW
    gc = "".join(
        f'<rect x="{(p.start - start) * WIDTH / span:.1f}" y="{y}" '
        f'width="{max(1.0, (p.end - p.start) * WIDTH / span):.1f}"'
        f' height="{ROW - 3}" fill="{STATE_COLORS["GC"]}"/>'
        for p in model.gc_pauses
    )
    rows.append(f'<text x="0" y="{y + ROW - 5}">gc</text><g transform="translate({label_w},0)">{gc}</g>')
    y += ROW
    rows.append(f'<text x="{label_w}" y="{y + 12}">0 s</text>')
    rows.append(f'<text x="{label_w + WIDTH}" y="{y + 12}" text-anchor="end">{esc(fmt_ns(span))}</text>')
    total_w = label_w + WIDTH
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {total_w} {y + 16}" '
        f'role="img">{"".join(rows)}</svg>'
    )


def _legend() -> str:
    items = [(name.lower(), c) for name, c in STATE_COLORS.items() if name not in ("BLOCKED", "UNKNOWN")]
    items += [(f"blocked: {r.name.lower()}", c) for r, c in REASON_COLORS.items()]
    items.append(("loop stall", "#b71c1c"))
    return '<p class="legend">' + "".join(_legend_item(n, c) for n, c in items) + "</p>"


def _legend_item(name: str, color: str) -> str:
    return f'<span style="background:{color}"{_title(LEGEND_NOTES.get(name))}>{esc(name)}</span>'


def _title(note: str | None) -> str:
    """A tooltip attribute, or nothing."""
    return f' title="{esc(note)}"' if note else ""


# ---------------------------------------------------------------- page


def _finding_html(finding: Finding) -> str:
    parts = [
        f'<div class="finding {esc(finding.severity)}"><span class="score">{finding.score}</span> '
        f"<b>{esc(finding.title)}</b> <small>({esc(finding.rule)})</small>"
    ]
    if finding.culprit is not None:
        c = finding.culprit
        parts.append(f'<div class="culprit">culprit: {esc(c.function)} — {esc(c.file)}:{c.line}</div>')
    if finding.evidence:
        items = []
        for key, value in finding.evidence.items():
            text = evidence_text(key, value)
            if text is not None:
                items.append(f"<li>{esc(key)}: {esc(text[:300])}</li>")
        parts.append(f'<ul class="ev">{"".join(items)}</ul>')
    if finding.moments:
        parts.append(_moments_html(finding))
    if finding.hint:
        parts.append(f'<div class="hint">{esc(finding.hint)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _moments_html(finding: Finding) -> str:
    """The stretches of the trace the finding was derived from, to check it by."""
    rows = "".join(
        f'<tr><td class="n">{m.at_s:.3f} s</td><td class="n">{esc(fmt_ns(m.duration_ns))}</td>'
        f"<td>{esc(m.thread)}</td><td>{esc(m.task)}</td><td>{esc(m.what[:200])}</td></tr>"
        for m in finding.moments
    )
    return (
        f'<details class="moments"><summary>{len(finding.moments)} moment(s) it was derived from'
        '</summary><table><tr><th class="n">at</th><th class="n">lasting</th><th>thread</th>'
        f"<th>task</th><th>what</th></tr>{rows}</table></details>"
    )


def _breakdown_html(rows: Sequence[Any], limit: int = 50) -> str:
    reasons = sorted({r for row in rows for r, ns in row.blocked.items() if ns})
    things = sorted({t for row in rows for t, ns in row.waiting_for.items() if ns})
    head = ["name", "count", "total", "running", "ready"]
    head += [f"blocked: {BlockReason(r).name.lower()}" for r in reasons]
    head += [f"waiting for: {t}" for t in things] + ["gc", "idle", "unknown"]
    out = [
        "<table><tr>"
        + "".join(
            f'<th class="{"" if i == 0 else "n"}"{_title(LEGEND_NOTES.get(h))}>{esc(h)}</th>'
            for i, h in enumerate(head)
        )
    ]
    out.append("</tr>")
    for row in rows[:limit]:
        values = [row.total, row.running, row.ready, *[row.blocked.get(r, 0) for r in reasons]]
        values += [row.waiting_for.get(t, 0) for t in things]
        values += [row.gc, row.idle, row.unknown]
        total = row.total or 1
        cells = "".join(
            f'<td class="n" title="{100 * v / total:.1f}%">{esc(fmt_ns(v)) if v else "-"}</td>'
            for v in values
        )
        out.append(f'<tr><td>{esc(row.name)}</td><td class="n">{row.count}</td>{cells}</tr>')
    out.append("</table>")
    if len(rows) > limit:
        out.append(f'<p class="meta">... {len(rows) - limit} more rows</p>')
    return "".join(out)


def _latency_table_html(report: Report, limit: int = 30) -> str:
    """Per route / task / region: count, p50/p90/p99, max, total, share of the window."""
    ops = operations(report.model)
    if not ops:
        return ""
    head = ["operation", "kind", "count", "p50", "p90", "p99", "max", "total", "share"]
    out = [
        "<table><tr>"
        + "".join(f'<th class="{"" if i < 2 else "n"}">{esc(h)}</th>' for i, h in enumerate(head))
        + "</tr>"
    ]
    for op in ops[:limit]:
        values = [op.quantile(0.5), op.quantile(0.9), op.quantile(0.99), op.maximum, op.total]
        cells = "".join(f'<td class="n">{esc(fmt_ns(v))}</td>' for v in values)
        out.append(
            f'<tr><td>{esc(op.name)}</td><td>{esc(op.kind)}</td><td class="n">{op.count}</td>{cells}'
            f'<td class="n">{100 * op.share:.0f}%</td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def _histograms(report: Report, limit: int = 8) -> str:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for ut in report.model.user_tasks.values():
        if ut.end is not None:
            groups[("task", ut.name)].append(ut.end - ut.start)
    for region in report.model.regions:
        if region.end is not None:
            groups[("region", region.name)].append(region.end - region.start)
    if not groups:
        return '<p class="meta">No user tasks or regions in this trace (pyflight.task, pyflight.region).</p>'
    out = []
    for (kind, name), durations in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:limit]:
        durations.sort()
        p50 = durations[len(durations) // 2]
        p99 = durations[min(len(durations) - 1, int(0.99 * len(durations)))]
        out.append(
            f"<h3>{esc(kind)} {esc(name)}</h3><p class='meta'>{len(durations)} done, "
            f"median {esc(fmt_ns(p50))}, "
            f"p99 {esc(fmt_ns(p99))}, max {esc(fmt_ns(durations[-1]))}</p>{histogram_svg(durations)}"
        )
    return "".join(out)


def render(report: Report) -> str:
    s = report.summary
    title = f"pyflight report — {s.get('file') or 'trace'}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{s["duration_s"]:.3f} s · {s["threads"]} threads · {s["tasks"]} asyncio tasks · '
        f"{s['user_tasks']} user tasks · {s['events']:,} events · {s['generations']} generations · "
        f"{s['samples']:,} samples · python {esc(s.get('python') or '?')} · pid {esc(s.get('pid'))}</p>",
        "<h2>Findings</h2>",
    ]
    shown = [f for f in report.findings if f.score >= 25]
    body.extend(_finding_html(f) for f in shown)
    if not shown:
        body.append("<p>No problems found.</p>")
    minor = [f for f in report.findings if f.score < 25]
    if minor:
        body.append("<details><summary>Minor findings</summary>")
        body.extend(_finding_html(f) for f in minor)
        body.append("</details>")
    body.append("<h2>Timeline</h2>" + _legend() + timeline_svg(report))
    body.append("<h2>Threads</h2>" + _breakdown_html(report.threads))
    if report.tasks:
        body.append("<h2>Asyncio tasks by coroutine</h2>" + _breakdown_html(report.tasks))
    body.append(
        "<h2>Latency of user tasks and regions</h2>" + _latency_table_html(report) + _histograms(report)
    )
    body.append(
        "<h2>CPU flame graph</h2><p class='meta'>Callers on top; width = CPU time. Hover for details.</p>"
        + flame_svg(report.cpu.stacks, report.cpu.unit)
    )
    body.append(
        "<h2>Wall-clock flame graph</h2><p class='meta'>All samples of the program's threads, "
        "running or waiting.</p>" + flame_svg(report.wall.stacks, report.wall.unit)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
