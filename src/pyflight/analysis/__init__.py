"""Analysis of a recorded trace: timelines, breakdowns and profiles (docs/analysis.md).

The recording side never imports this package; it only reads ``pyflight.format``.
"""

from __future__ import annotations

from pyflight.analysis.breakdown import BreakdownRow, task_breakdown, thread_breakdown
from pyflight.analysis.model import (
    GCPause,
    Interval,
    Log,
    LoopTimeline,
    Model,
    Region,
    Sample,
    Stall,
    State,
    Step,
    TaskTimeline,
    ThreadTimeline,
    UserTask,
    Wake,
    build,
)
from pyflight.analysis.profiles import (
    Profile,
    blocking_profile,
    cpu_profile,
    frame_label,
    scheduling_profile,
    stall_profile,
    wall_profile,
)

__all__ = [
    "BreakdownRow",
    "GCPause",
    "Interval",
    "Log",
    "LoopTimeline",
    "Model",
    "Profile",
    "Region",
    "Sample",
    "Stall",
    "State",
    "Step",
    "TaskTimeline",
    "ThreadTimeline",
    "UserTask",
    "Wake",
    "blocking_profile",
    "build",
    "cpu_profile",
    "frame_label",
    "scheduling_profile",
    "stall_profile",
    "task_breakdown",
    "thread_breakdown",
    "wall_profile",
]
