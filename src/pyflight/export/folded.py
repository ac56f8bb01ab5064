"""Collapsed ("folded") stacks, as read by flamegraph.pl, inferno and speedscope:
one line per distinct stack, ``outer;...;inner N`` with N in nanoseconds of the chosen
profile (default ``cpu``), heaviest first. Frames are ``function (file:line)``; a sample
without a stack is ``(no stack)``. The lines are those of the analysis model's
``Profile.folded()`` for the same profile.
"""

from __future__ import annotations

from pyflight.analysis.profiles import frame_label
from pyflight.export import profile_samples
from pyflight.format.reader import Trace

__all__ = ["export_folded", "folded_lines"]


def folded_lines(trace: Trace, profile: str = "cpu") -> list[str]:
    totals: dict[str, int] = {}
    for smp in profile_samples(trace, profile):
        key = ";".join(frame_label(fr) for fr in reversed(smp.stack)) if smp.stack else "(no stack)"
        totals[key] = totals.get(key, 0) + smp.weight
    return [f"{key} {value}" for key, value in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]


def export_folded(trace: Trace, profile: str | None = None) -> bytes:
    lines = folded_lines(trace, profile or "cpu")
    # names decoded with surrogateescape (or holding a lone surrogate) are written escaped
    return ("\n".join(lines) + "\n" if lines else "").encode("utf-8", "backslashreplace")
