"""Queries over a ``Model`` that several rules ask.

Derived data (samples per thread, their times, a rule's long steps) is computed once per
model and kept in that model's ``Queries`` (``Queries.of(model)``), never in module
globals: two models analysed side by side (the viewer, tests) cannot see each other's.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pyflight.analysis.units import MS, SECOND
from pyflight.core.events import ThreadState

if TYPE_CHECKING:
    from pyflight.analysis.model import Model, Sample, ThreadTimeline

_ATTRIBUTE = "_pyflight_queries"


class Queries:
    """The cached queries of one model; ``memo`` holds what one rule caches for itself."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.memo: dict[str, Any] = {}
        self._by_thread: dict[int, list[Sample]] | None = None
        self._times: dict[int, list[int]] | None = None

    @classmethod
    def of(cls, model: Model) -> Queries:
        """The queries of ``model``, kept on the model itself (dropped by ``forget``)."""
        queries: Queries | None = model.__dict__.get(_ATTRIBUTE)
        if queries is None:
            queries = cls(model)
            model.__dict__[_ATTRIBUTE] = queries
        return queries

    @staticmethod
    def forget(model: Model) -> None:
        """Free what was cached for ``model`` (the rules are done with it)."""
        model.__dict__.pop(_ATTRIBUTE, None)

    def samples_by_thread(self) -> dict[int, list[Sample]]:
        """Samples per thread id, in time order."""
        if self._by_thread is None:
            by_thread: dict[int, list[Sample]] = defaultdict(list)
            for sample in self.model.samples:
                by_thread[sample.tid].append(sample)
            for samples in by_thread.values():
                samples.sort(key=lambda s: s.time)
            self._by_thread = by_thread
        return self._by_thread

    def sampler_ticks(self) -> list[int]:
        """One time per sampler tick, in order (``sampler_ticks``)."""
        ticks: list[int] | None = self.memo.get("sampler_ticks")
        if ticks is None:
            interval = interval_ns(self.model)
            ticks = []
            # a natively read sample is dated before the sampler got the GIL, an ending
            # thread's last one (ZOMBIE) when it ended: neither is a tick
            zombie = ThreadState.ZOMBIE
            for t in sorted(
                {s.time for s in self.model.samples if not s.native and s.os_state is not zombie}
            ):
                if not ticks or t - ticks[-1] >= interval // 4:
                    ticks.append(t)
            self.memo["sampler_ticks"] = ticks
        return ticks

    def cpu_load(self) -> CpuLoad:
        """The program's threads' CPU over time (``CpuLoad``), made once."""
        load: CpuLoad | None = self.memo.get("cpu_load")
        if load is None:
            ours = {tid for tid, t in self.model.threads.items() if t.is_pyflight}
            load = self.memo["cpu_load"] = CpuLoad(self.model.samples, ours)
        return load

    def native_times(self) -> list[int]:
        """Times of the samples read without the GIL (its holder's), in order."""
        times: list[int] | None = self.memo.get("native_times")
        if times is None:
            times = self.memo["native_times"] = sorted(s.time for s in self.model.samples if s.native)
        return times

    def sample_times(self) -> dict[int, list[int]]:
        """The times of ``samples_by_thread``, for bisection."""
        if self._times is None:
            self._times = {
                tid: [s.time for s in samples] for tid, samples in self.samples_by_thread().items()
            }
        return self._times

    def samples_in(self, tid: int, start: int, end: int) -> list[Sample]:
        """Samples of thread ``tid`` taken in [start, end]."""
        samples = self.samples_by_thread().get(tid)
        if not samples:
            return []
        times = self.sample_times()[tid]
        return samples[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]


def samples_by_thread(model: Model) -> dict[int, list[Sample]]:
    return Queries.of(model).samples_by_thread()


def samples_in(model: Model, tid: int, start: int, end: int) -> list[Sample]:
    return Queries.of(model).samples_in(tid, start, end)


def thread_name(model: Model, tid: int) -> str:
    thread = model.threads.get(tid)
    return thread.name if thread is not None and thread.name else f"thread {tid}"


def user_threads(model: Model) -> list[ThreadTimeline]:
    return [t for t in model.threads.values() if not t.is_pyflight]


def lifetime(thread: ThreadTimeline) -> int:
    return max(0, int(thread.end) - int(thread.start))


def seconds_since_start(model: Model, t: int) -> float:
    """Seconds since the start of the trace."""
    return round((t - model.start) / SECOND, 3)


def within(spans: list[tuple[int, int]] | None, t: int) -> bool:
    """``t`` lies in one of ``spans`` (sorted, disjoint ``[start, end)``: one thread's
    blocks of some kind), so a piece of a block cut by a GC pause is found in it too."""
    if not spans:
        return False
    k = bisect.bisect_right(spans, (t, 1 << 62)) - 1
    return k >= 0 and spans[k][0] <= t < spans[k][1]


def interval_ns(model: Model) -> int:
    interval = int(getattr(model, "sampling_interval_ns", 0) or 0)
    return interval if interval > 0 else 10 * MS


def sampler_ticks(model: Model) -> list[int]:
    """When the sampler took its samples (one time per tick, in order)."""
    return Queries.of(model).sampler_ticks()


#: How much the CPUs the program used may add to the share of ticks at which the native
#: reader found the GIL held: a tick can fall in a hand-off between two holders, or be
#: dropped when the holder changed during the read. No more: CPU spent in C code that
#: released the GIL (an sqlite query, zlib, hashing a big buffer) is no GIL held.
HANDOFF_SLACK = 0.25


def gil_busy_share(model: Model, spans: Iterable[tuple[int, int]]) -> tuple[float, int] | None:
    """(share, ticks): how busy the GIL was through ``spans``: of the sampler's ticks in
    them, the share at which its native reader found a thread holding the GIL (a loaded
    machine leaves a holder off the CPU still holding the GIL), raised towards the CPUs
    the program's threads used there by at most ``HANDOFF_SLACK`` (capped at one: the
    GIL's share). Near 1: CPU-bound threads took turns on the GIL. None without stacks
    read natively (pure core, other platforms: the measure is then too weak to act on)
    or without a tick in them."""
    queries = Queries.of(model)
    natives = queries.native_times()
    if not natives:
        return None
    ticks = queries.sampler_ticks()
    merged = Spans(spans).pairs()
    in_ticks = in_natives = 0
    for a, b in merged:
        in_ticks += bisect.bisect_right(ticks, b) - bisect.bisect_left(ticks, a)
        in_natives += bisect.bisect_right(natives, b) - bisect.bisect_left(natives, a)
    if not in_ticks:
        return None
    load = queries.cpu_load()
    width = sum(b - a for a, b in merged)
    cores = sum(load.cpu_ns(a, b) for a, b in merged) / width if width else 0.0
    held = in_natives / in_ticks
    return min(1.0, max(held, min(cores, held + HANDOFF_SLACK))), in_ticks


class CpuLoad:
    """The CPUs the program's threads used over time, from the samples' measured CPU
    (each delta spread evenly over the span it was measured in): a step function with
    its running integral, so the CPU in any range costs two bisections."""

    def __init__(self, samples: Iterable[Sample], skip: set[int]) -> None:
        edges: dict[int, float] = defaultdict(float)
        for s in samples:
            if s.span > 0 and s.cpu > 0 and s.tid not in skip:
                rate = min(1.0, s.cpu / s.span)
                edges[s.time - s.span] += rate
                edges[s.time] -= rate
        self.times = sorted(edges)
        self.levels: list[float] = []  # CPUs in use from times[i] to times[i + 1]
        self.area: list[float] = []  # CPU-ns used before times[i]
        level = area = 0.0
        for i, t in enumerate(self.times):
            if i:
                area += level * (t - self.times[i - 1])
            self.area.append(area)
            level = max(0.0, level + edges[t])
            self.levels.append(level)

    def _before(self, t: int) -> float:
        i = bisect.bisect_right(self.times, t) - 1
        return 0.0 if i < 0 else self.area[i] + self.levels[i] * (t - self.times[i])

    def cpu_ns(self, start: int, end: int) -> float:
        """CPU-ns the program's threads used in [start, end)."""
        return self._before(end) - self._before(start) if end > start else 0.0


#: The counter in which the sampler reports its interval (us) whenever it changes.
SAMPLER_INTERVAL_COUNTER = "sampler_interval_us"


class Spans:
    """Sorted, merged time spans with a fast membership test."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def __contains__(self, t: int) -> bool:
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and t <= self.ends[i]

    def pairs(self) -> list[tuple[int, int]]:
        """The merged spans, in order."""
        return list(zip(self.starts, self.ends, strict=True))

    def overlaps(self, a: int, b: int) -> bool:
        """True if some span shares a moment with [a, b]."""
        i = bisect.bisect_right(self.starts, b) - 1
        return i >= 0 and self.ends[i] >= a
