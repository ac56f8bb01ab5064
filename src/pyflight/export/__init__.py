"""Exports of a trace to other tools' formats (docs/export.md).

``pyflight export FILE --format F -o OUT`` with F one of :data:`FORMATS`. Every exporter
is a function ``(trace, profile) -> bytes``. The timelines (perfetto, chrome) are drawn
from the raw events of a :class:`~pyflight.format.reader.Trace`; the stack profiles
(pprof, folded, speedscope) are the analysis model's (``pyflight.analysis``), kept per
sample or interval by :func:`profile_samples` so their totals equal the model's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from pyflight.core.events import BlockReason, Kind, ThreadState
from pyflight.format.reader import Frame, Trace

if TYPE_CHECKING:
    from pyflight.analysis.model import Model

__all__ = [
    "FORMATS",
    "PROFILES",
    "PROFILE_FORMATS",
    "StackSample",
    "build_model",
    "frame_label",
    "gc_paused",
    "is_pyflight_thread",
    "profile_samples",
    "sampling_interval_ns",
    "thread_name",
]

FORMATS = ("perfetto", "chrome", "pprof", "folded", "speedscope")
#: Formats holding one stack profile (chosen with ``--profile``).
PROFILE_FORMATS = ("pprof", "folded", "speedscope")
#: ``cpu`` and ``wall`` come from samples; the others are time blocked per BlockReason.
PROFILES = ("cpu", "wall", *(r.name.lower() for r in BlockReason), "scheduling", "stall")

DEFAULT_INTERVAL_NS = 10_000_000

# plain ints: comparing an event's kind with these is cheaper than with enum attributes
_BLOCK_BEGIN, _BLOCK_END = int(Kind.BLOCK_BEGIN), int(Kind.BLOCK_END)
_TASK_WAIT = int(Kind.TASK_WAIT)
_TASK_BLOCK = int(Kind.TASK_BLOCK)
_TASK_STEP_END = int(Kind.TASK_STEP_END)
_TASK_WAIT_ENDS = frozenset(
    int(k) for k in (Kind.TASK_READY, Kind.TASK_STEP_BEGIN, Kind.TASK_DONE, Kind.TASK_CREATE)
)


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


def is_pyflight_thread(trace: Trace, tid: int) -> bool:
    info = trace.threads.get(tid)
    return info is not None and info.name.startswith("pyflight-")


def thread_name(trace: Trace, tid: int) -> str:
    info = trace.threads.get(tid)
    return info.name if info is not None and info.name else f"thread {tid}"


def frame_label(frame: Frame) -> str:
    """``function (file:line)`` with ``;`` and newlines made harmless, as the report's
    folded stacks (``pyflight.analysis.profiles.frame_label``)."""
    return f"{frame.function} ({frame.file}:{frame.line})".replace(";", ":").replace("\n", " ")


def sampling_interval_ns(trace: Trace) -> int:
    """The sampler's interval as the analysis model computes it: the median
    ``sampler_interval_us`` counter, else the median gap between consecutive samples of
    one thread, else 10 ms."""
    values = [e[4] for e in trace.events if e[0] == Kind.COUNTER and e[3] == "sampler_interval_us"]
    if values:
        return int(statistics.median(values)) * 1000 or DEFAULT_INTERVAL_NS
    last: dict[int, int] = {}
    gaps: list[int] = []
    for e in trace.events:
        if e[0] == Kind.SAMPLE:
            tid = e[3]
            if tid in last and e[1] > last[tid]:
                gaps.append(e[1] - last[tid])
            last[tid] = e[1]
    return int(statistics.median(gaps)) if gaps else DEFAULT_INTERVAL_NS


@dataclasses.dataclass
class _OpenBlock:
    start: int
    reason: int
    stack: tuple[Frame, ...]


def blocks(trace: Trace) -> Iterator[tuple[int, int, int, int, int, int, tuple[Frame, ...]]]:
    """Thread blocks as ``(tid, start, end, reason, obj, waker, stack)``, in end order.

    BLOCK_END closes the innermost open block of its reason on that thread; a block
    still open at the end of the trace ends there (waker 0); an end with no begin in
    the window starts at the trace start (stack unknown).
    """
    open_: dict[int, list[_OpenBlock]] = {}
    for e in trace.events:
        kind = e[0]
        if kind == _BLOCK_BEGIN:
            open_.setdefault(e[2], []).append(_OpenBlock(e[1], e[3], e[5]))
        elif kind == _BLOCK_END:
            stack = open_.get(e[2], [])
            for i in range(len(stack) - 1, -1, -1):
                if stack[i].reason == e[3]:
                    b = stack.pop(i)
                    yield (e[2], b.start, e[1], e[3], e[4], e[5], b.stack)
                    break
            else:
                yield (e[2], trace.start_ns, e[1], e[3], e[4], e[5], ())
    for tid, stack in open_.items():
        for b in stack:
            yield (tid, b.start, max(b.start, trace.end_ns), b.reason, 0, 0, b.stack)


def task_waits(trace: Trace) -> Iterator[tuple[int, int, int, int, str, tuple[Frame, ...]]]:
    """Asyncio task waits ``(task, start, end, reason, what, stack)``: from TASK_WAIT (or
    the end of a step that recorded a TASK_BLOCK: an asyncio lock or queue, whose reason,
    name and stack then win) to the task's next READY, STEP_BEGIN or DONE (or the trace
    end). A TASK_BLOCK without a stack borrows the last one of its site."""
    waiting: dict[int, tuple[int, int, str, tuple[Frame, ...]]] = {}
    blocking: dict[int, tuple[int, str, tuple[Frame, ...]]] = {}  # TASK_BLOCK, until the step ends
    from_block: set[int] = set()
    site_stacks: dict[int, tuple[Frame, ...]] = {}
    for e in trace.events:
        kind = e[0]
        if kind == _TASK_BLOCK:
            stack = e[8] or site_stacks.get(e[7], ())
            if e[8]:
                site_stacks[e[7]] = e[8]
            blocking[e[3]] = (e[4], e[6], stack)
        elif kind == _TASK_STEP_END:
            block = blocking.pop(e[3], None)
            if block is not None:
                waiting[e[3]] = (e[1], *block)
                from_block.add(e[3])
        elif kind == _TASK_WAIT:
            if e[3] not in from_block:
                waiting[e[3]] = (e[1], e[4], e[5], e[6])
        elif kind in _TASK_WAIT_ENDS:
            from_block.discard(e[3])
            w = waiting.pop(e[3], None)
            if w is not None:
                yield (e[3], w[0], e[1], w[1], w[2], w[3])
    for task, w in waiting.items():
        yield (task, w[0], max(w[0], trace.end_ns), w[1], w[2], w[3])


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

    ``cpu``: samples taken on a CPU; ``wall``: every sample of the program's threads;
    each weighing the sampling interval. A reason (``lock``, ``condition``, ``io``,
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
        weight = m.sampling_interval_ns or DEFAULT_INTERVAL_NS
        ours = {tid for tid, tl in m.threads.items() if tl.is_pyflight}
        for smp in m.samples:
            if smp.tid not in ours and smp.os_state is not ThreadState.ZOMBIE:  # nor threads' exits
                out.append(StackSample(smp.time, smp.tid, smp.stack, weight))
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
