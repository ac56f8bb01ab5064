"""Profiles: stacks weighted by samples or by time, in the shape pprof, flame graphs and
folded-stack tools want (CPU, wall clock, blocking per reason, scheduling delay, stalls)."""

from __future__ import annotations

import dataclasses
import operator

from pyflight.analysis.frames import frame_label
from pyflight.analysis.model import Model, Sample, Stack, State
from pyflight.core.events import BlockReason, ThreadState
from pyflight.format.reader import Frame

__all__ = [
    "Profile",
    "blocking_profile",
    "cpu_profile",
    "frame_label",
    "scheduling_profile",
    "stall_profile",
    "wall_profile",
    "wall_samples",
]


@dataclasses.dataclass
class Profile:
    """``stacks``: stack (innermost frame first) -> value in ``unit``."""

    name: str
    unit: str
    sample_type: str
    stacks: dict[Stack, int] = dataclasses.field(default_factory=dict)

    def add(self, stack: Stack, value: int) -> None:
        if value > 0:
            self.stacks[stack] = self.stacks.get(stack, 0) + value

    @property
    def total(self) -> int:
        return sum(self.stacks.values())

    def top(self, n: int = 10) -> list[tuple[Stack, int]]:
        """The ``n`` heaviest stacks, heaviest first."""
        return sorted(self.stacks.items(), key=lambda kv: -kv[1])[:n]

    def folded(self) -> list[str]:
        """``outer;...;inner value`` lines (Brendan Gregg's collapsed-stack format)."""
        lines = []
        for stack, value in sorted(self.stacks.items(), key=lambda kv: -kv[1]):
            path = ";".join(frame_label(f) for f in reversed(stack)) if stack else "(no stack)"
            lines.append(f"{path} {value}")
        return lines


_TIME = operator.attrgetter("time")


def _interval(model: Model) -> int:
    return model.sampling_interval_ns or 10_000_000


def cpu_profile(model: Model) -> Profile:
    """The CPU each of the program's threads (not the recorder's) used, by the stack it
    ran at: measured per thread and charged where it was on a CPU, not where it waited
    for the GIL (see :mod:`pyflight.analysis.cpu`)."""
    from pyflight.analysis.cpu import cpu_samples

    prof = Profile("cpu", "nanoseconds", "cpu")
    for sample, ns in cpu_samples(model):
        prof.add(sample.stack, ns)
    return prof


def wall_samples(model: Model) -> list[tuple[Sample, int]]:
    """The samples of the program's threads (not the recorder's, nor a thread's exit
    sample), in time order, each with the wall time it stands for: the time since its
    thread's previous sample (the nominal interval for a thread's first). Not the nominal
    interval for all: a sampler slowed by load, or shed by its budget, takes fewer
    samples of the same time, and a thread's samples must still add up to the time it
    was watched."""
    nominal = _interval(model)
    ours = {tid for tid, tl in model.threads.items() if tl.is_pyflight}
    kept = [s for s in model.samples if s.tid not in ours and s.os_state is not ThreadState.ZOMBIE]
    kept.sort(key=_TIME)  # stable: a tick's samples keep their order
    previous: dict[int, int] = {}
    out = []
    for s in kept:
        before = previous.get(s.tid)
        previous[s.tid] = s.time
        out.append((s, nominal if before is None else s.time - before))
    return out


def wall_profile(model: Model) -> Profile:
    """Every sample of the program's threads (not the recorder's), whatever they did,
    weighing the wall time it stands for (``wall_samples``)."""
    prof = Profile("wall", "nanoseconds", "wall")
    for sample, ns in wall_samples(model):
        prof.add(sample.stack, ns)
    return prof


def _task_stack(coro: str, stack: Stack) -> Stack:
    """A task interval without a recorded stack still names its coroutine."""
    return stack if stack else (Frame(coro or "<task>", "", 0),)


def blocking_profile(model: Model, reason: BlockReason) -> Profile:
    """Time blocked for ``reason`` by the stack where each block began (Go's
    sync/network/syscall profiles); for AWAIT, asyncio tasks' awaiting stacks."""
    prof = Profile(f"blocking-{reason.name.lower()}", "nanoseconds", "delay")
    for tl in model.threads.values():
        if tl.is_pyflight:
            continue
        for i in tl.intervals:
            if i.state is State.BLOCKED and i.reason == reason:
                prof.add(i.stack, i.end - i.start)
    if reason == BlockReason.AWAIT:
        for task in model.all_tasks():
            for i in task.intervals:
                if i.state is State.BLOCKED and i.reason == reason:
                    prof.add(_task_stack(task.coro, i.stack), i.end - i.start)
    return prof


def scheduling_profile(model: Model) -> Profile:
    """asyncio scheduling delay (READY time) by the stack the task was waiting at."""
    prof = Profile("scheduling", "nanoseconds", "delay")
    for task in model.all_tasks():
        previous: Stack = ()
        for i in task.intervals:
            if i.state is State.READY:
                prof.add(_task_stack(task.coro, i.stack or previous), i.end - i.start)
            previous = i.stack
    return prof


def stall_profile(model: Model) -> Profile:
    """Stacks seen during event-loop stalls, each stall's duration shared among them."""
    prof = Profile("stalls", "nanoseconds", "stall")
    for loop in model.loops.values():
        for stall in loop.stalls:
            if not stall.stacks:
                continue
            share = stall.duration // len(stall.stacks)
            for stack in stall.stacks:
                prof.add(stack, share)
    return prof
