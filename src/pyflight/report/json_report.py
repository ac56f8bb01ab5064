"""``pyflight report --json``: one JSON object (DESIGN.md's contract).

``{"summary": {...}, "findings": [{"rule", "score", "severity", "title", "culprit":
{"function", "file", "line"} | null, "evidence", "hint"}, ...] (highest score first),
"threads": [...], "tasks": [...], "top_stacks": {"cpu": [...], "wall": [...]}}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pyflight.report import Report

if TYPE_CHECKING:
    from pyflight.analysis.breakdown import BreakdownRow
    from pyflight.analysis.profiles import Profile

__all__ = ["dumps", "row_dict", "to_json", "top_stacks"]


def row_dict(row: BreakdownRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "count": row.count,
        "total_ns": row.total,
        "running_ns": row.running,
        "ready_ns": row.ready,
        "blocked_ns": {reason.name.lower(): ns for reason, ns in sorted(row.blocked.items()) if ns},
        # blocks inside a library call that names what they waited for ("subprocess")
        "waiting_for_ns": {thing: ns for thing, ns in sorted(row.waiting_for.items()) if ns},
        "gc_ns": row.gc,
        "idle_ns": row.idle,
        "unknown_ns": row.unknown,
    }


def top_stacks(profile: Profile, n: int = 10) -> list[dict[str, Any]]:
    items = sorted(profile.stacks.items(), key=lambda kv: -kv[1])[:n]
    total = profile.total or 1
    return [
        {
            "weight": weight,
            "share": round(weight / total, 4),
            "stack": [{"function": f.function, "file": f.file, "line": f.line} for f in stack],
        }
        for stack, weight in items
    ]


def to_json(report: Report) -> dict[str, Any]:
    return {
        "summary": report.summary,
        "findings": [f.to_dict() for f in report.findings],
        "threads": [row_dict(r) for r in report.threads],
        "tasks": [row_dict(r) for r in report.tasks],
        "top_stacks": {
            "unit": report.cpu.unit,
            "cpu": top_stacks(report.cpu),
            "wall": top_stacks(report.wall),
        },
    }


def dumps(report: Report) -> str:
    return json.dumps(to_json(report), indent=2, default=str)
