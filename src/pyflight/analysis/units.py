"""Units for humans: durations (``fmt_ns``), percentages, quantiles; the renderers use them too."""

from __future__ import annotations

from collections.abc import Sequence

MS = 1_000_000
SECOND = 1_000_000_000


def fmt_ns(ns: float) -> str:
    """Human duration: 1.25 s, 340 ms, 12 us."""
    if ns >= SECOND:
        return f"{ns / SECOND:.2f} s"
    if ns >= MS:
        return f"{ns / MS:.0f} ms" if ns >= 10 * MS else f"{ns / MS:.1f} ms"
    return f"{ns / 1000:.0f} us"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.1f}%"


def quantile(values: Sequence[int], q: float) -> int:
    ordered = sorted(values)
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
