"""Exports of a trace to other tools' formats (docs/export.md).

``pyflight export FILE --format F -o OUT`` with F one of :data:`FORMATS`; from Python,
:func:`export`. Every exporter is a function ``(trace, profile) -> bytes``. The timelines
(perfetto, chrome) draw ``pyflight.analysis.timeline``; the stack profiles (pprof,
folded, speedscope) are the analysis model's (``pyflight.analysis``), kept per sample or
interval by :func:`profile_samples` so their totals equal the model's.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from pyflight.core.events import BlockReason
from pyflight.format.reader import Frame, Trace

if TYPE_CHECKING:
    from pyflight.analysis.model import Model

__all__ = [
    "FORMATS",
    "PROFILES",
    "PROFILE_FORMATS",
    "StackSample",
    "build_model",
    "export",
    "gc_paused",
    "profile_samples",
]

FORMATS = ("perfetto", "chrome", "pprof", "folded", "speedscope")
#: Formats holding one stack profile (chosen with ``--profile``).
PROFILE_FORMATS = ("pprof", "folded", "speedscope")
#: ``cpu`` and ``wall`` come from samples; the others are time blocked per BlockReason.
PROFILES = ("cpu", "wall", *(r.name.lower() for r in BlockReason), "scheduling", "stall")

DEFAULT_INTERVAL_NS = 10_000_000


def _exporter(fmt: str) -> Callable[[Trace, str | None], bytes]:
    """The exporter of ``fmt``, imported when first used."""
    if fmt == "perfetto":
        from pyflight.export.perfetto import export_perfetto

        return export_perfetto
    if fmt == "chrome":
        from pyflight.export.chrome import export_chrome

        return export_chrome
    if fmt == "pprof":
        from pyflight.export.pprof import export_pprof

        return export_pprof
    if fmt == "folded":
        from pyflight.export.folded import export_folded

        return export_folded
    from pyflight.export.speedscope import export_speedscope

    return export_speedscope


def export(trace: Trace, fmt: str, profile: str | None = None) -> bytes:
    """The bytes of ``trace`` exported as ``fmt`` (ValueError for an unknown format or
    profile); ``profile`` applies to the :data:`PROFILE_FORMATS` (default ``cpu``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    return _exporter(fmt)(trace, profile)


class StackSample(NamedTuple):
    """One weighted stack: a sample (weight = sampling interval) or a block (its length)."""

    time: int
    tid: int
    stack: tuple[Frame, ...]  # innermost first, as recorded
    weight: int  # nanoseconds


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: an export allocates millions of small acyclic objects (slices,
    encoded packets, JSON pieces) and the collector would rescan the trace's events again
    and again (it doubled the time of a 1M-event export), as in the reader and the model."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _reason_of(profile: str) -> BlockReason:
    try:
        return BlockReason[profile.upper()]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})") from None


def build_model(trace: Trace) -> Model:
    from pyflight.analysis import build

    return build(trace)


def profile_samples(trace: Trace, profile: str, model: Model | None = None) -> list[StackSample]:
    """The weighted stacks of one profile, in time order: the samples and intervals that
    ``pyflight.analysis.profiles`` sums, kept apart (with thread and time) so that pprof
    can count them and speedscope can show them in order. Totals per stack equal the
    analysis model's profile of the same name.

    ``cpu``: the CPU each thread measured, by where it ran; ``wall``: every sample of the
    program's threads, each weighing the wall time since its thread's previous one
    (``analysis.profiles.wall_samples``). A reason (``lock``, ``condition``, ``io``,
    ``sleep``, ``join``, ``select``, ``await``, ``other``): time blocked, by the stack
    where the block began. ``scheduling``: asyncio tasks' ready-to-run delay;
    ``stall``: stacks sampled during event-loop stalls, the stall's time shared by them.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    from pyflight.analysis.model import State

    m = model if model is not None else build_model(trace)
    out: list[StackSample] = []
    if profile == "cpu":  # measured CPU, where each thread ran (analysis.cpu)
        from pyflight.analysis.cpu import cpu_samples

        out.extend(StackSample(smp.time, smp.tid, smp.stack, ns) for smp, ns in cpu_samples(m))
    elif profile == "wall":
        from pyflight.analysis.profiles import wall_samples

        out.extend(StackSample(smp.time, smp.tid, smp.stack, ns) for smp, ns in wall_samples(m))
    elif profile == "scheduling":
        for task in m.all_tasks():
            previous: tuple[Frame, ...] = ()
            for i in task.intervals:
                if i.state is State.READY and i.end > i.start:
                    stack = _task_stack(task.coro, i.stack or previous)
                    out.append(StackSample(i.start, task.thread, stack, i.end - i.start))
                previous = i.stack
    elif profile == "stall":
        for loop in m.loops.values():
            for stall in loop.stalls:
                if stall.stacks and stall.duration // len(stall.stacks) > 0:
                    share = stall.duration // len(stall.stacks)
                    out.extend(StackSample(stall.start, loop.tid, stack, share) for stack in stall.stacks)
    else:
        reason = _reason_of(profile)
        for tid, tl in m.threads.items():
            if tl.is_pyflight:
                continue
            for i in tl.intervals:
                if i.state is State.BLOCKED and i.reason == reason and i.end > i.start:
                    out.append(StackSample(i.start, tid, i.stack, i.end - i.start))
        if reason == BlockReason.AWAIT:
            for task in m.all_tasks():
                for i in task.intervals:
                    if i.state is State.BLOCKED and i.reason == reason and i.end > i.start:
                        out.append(
                            StackSample(
                                i.start, task.thread, _task_stack(task.coro, i.stack), i.end - i.start
                            )
                        )
    out.sort(key=lambda smp: smp.time)
    return out


def _task_stack(coro: str, stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """A task interval without a recorded stack still names its coroutine (as the model)."""
    return stack if stack else (Frame(coro or "<task>", "", 0),)
