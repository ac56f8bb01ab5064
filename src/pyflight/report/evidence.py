"""How a finding's evidence reads in the text and HTML reports (the JSON keeps raw values).

Shares are percentages, durations are durations, and object ids (a loop's, a lock's, a
pool's: what ``id()`` gave in the recorded program) read as the addresses Python's own
reprs show, ``0x7f...``, rather than 15-digit decimals.
"""

from __future__ import annotations

from pyflight.analysis.units import fmt_ns

#: Evidence keys whose value is an object id in the recorded program.
OBJECT_IDS = frozenset({"loop", "lock", "pool_id"})


def evidence_text(key: str, value: object) -> str | None:
    """The value as a report shows it; None for an empty one (not shown)."""
    if value is None or value == [] or value == {} or value == "":
        return None
    if isinstance(value, bool):
        return str(value)
    if key in OBJECT_IDS and isinstance(value, int):
        return hex(value)
    if key.endswith("_ns") and isinstance(value, int):
        return fmt_ns(value)
    if (key.endswith("_share") or key == "ratio") and isinstance(value, float):
        return f"{100 * value:.1f}%"
    if key.endswith("_s") and isinstance(value, float):
        return f"{value:.3f} s"
    return str(value)
