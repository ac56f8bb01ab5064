"""Score ramps: how a measured fraction or duration becomes a 0-100 score (docs/report.md)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def ramp(x: float, points: Sequence[tuple[float, float]]) -> float:
    """Piecewise-linear interpolation through ``points`` (sorted by x), clamped at the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def clamp_score(*values: float) -> int:
    return max(0, min(100, round(max(values, default=0.0))))
