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


def interval_ns(model: Model) -> int:
    interval = int(getattr(model, "sampling_interval_ns", 0) or 0)
    return interval if interval > 0 else 10 * MS


def sampler_ticks(model: Model) -> list[int]:
    """When the sampler took its samples (one time per tick, in order)."""
    return Queries.of(model).sampler_ticks()


def gil_busy_share(model: Model, spans: Iterable[tuple[int, int]]) -> tuple[float, int] | None:
    """(share, ticks): of the sampler's ticks inside ``spans``, the share at which its
    native reader found a thread holding the GIL (running Python or C code that keeps
    it). Near 1: CPU-bound threads took turns on the GIL through those spans. None
    without stacks read natively (pure core, other platforms) or without a tick in them."""
    queries = Queries.of(model)
    natives = queries.native_times()
    if not natives:
        return None
    ticks = queries.sampler_ticks()
    in_ticks = in_natives = 0
    for a, b in Spans(spans).pairs():
        in_ticks += bisect.bisect_right(ticks, b) - bisect.bisect_left(ticks, a)
        in_natives += bisect.bisect_right(natives, b) - bisect.bisect_left(natives, a)
    if not in_ticks:
        return None
    return min(1.0, in_natives / in_ticks), in_ticks


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
