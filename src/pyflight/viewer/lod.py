"""Levels of detail for one timeline row: what the browser gets for a time range and a width.

A row is a time-sorted list of non-overlapping slices (a thread's state intervals, a
task's steps and waits, a lane of user tasks). Drawn at 20 ms per pixel, a row of
100,000 intervals is mostly slices thinner than a pixel: sending each would cost the
server, the network and the canvas for nothing. So slices shorter than a *grain* are
merged with their short neighbours into one *summary* slice that keeps how many slices
it stands for and the time in each state (a summary is drawn in its dominant state).

Levels are merged at grains g, 4g, 16g, ... up to the row's span, where g is a few times
the row's mean slice spacing (below g, the raw slices in a screen are already few), each
from the raw slices when a query first needs it: a query for ``ns_per_px`` takes the
coarsest level whose grain is at most one pixel, cuts the range out with bisect and
merges again at one pixel, so the work per query is bounded by the width in pixels, not
by the number of events. A coarse level (the first view of a whole trace) is merged run
by run (``merge_runs``: a bisection per run of short slices, its time per state from
per-code running totals), a fine one slice by slice (``merge_raw``), or from the finest
level built so far (``merge``: the warm-up builds them finest first).
"""

from __future__ import annotations

import collections
import itertools
import operator
import os
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pyflight.core import FORCE_PURE_ENV

__all__ = ["Level", "LodRow", "Slices"]

MIN_GRAIN = 4_000  # ns
SPACINGS = 4  # the first level's grain, in mean slice spacings of the row
GRAIN_STEP = 4
SMALL_LEVEL = 2_000  # slices: rows with fewer have no merged levels
#: a level whose grain is at least this many mean slice spacings is merged run by run
#: (``merge_runs``: ~5 us per run, after a pass over the row at C speed), a finer one
#: slice by slice (``merge_raw``: ~0.6 us per slice)
RUNS_FROM = 16
CHECKPOINT = 256  # per-state running totals every this many raw slices
#: what the C passes raise where the Python ones must decide (a value past 62 bits, ...)
FAST_ERRORS = (OverflowError, TypeError, ValueError)


def _fast_passes() -> ModuleType | None:
    """``pyflight.viewer._lod`` (``viewer/c/_lod.c``: ``merge_raw``, ``ordered_durations``,
    ``codes`` in C, the per-slice passes of a big trace's first view) unless
    PYFLIGHT_PURE_PYTHON=1 or the extension is not built; the Python code is the reference."""
    if os.environ.get(FORCE_PURE_ENV, "").strip() not in ("", "0"):
        return None
    try:
        from pyflight.viewer import _lod  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _lod  # type: ignore[no-any-return]


FAST: Any = _fast_passes()


@dataclass
class Level:
    """Parallel lists, one entry per slice. ``raw[k]`` is the index of the raw slice it
    is, or -1 for a summary; ``totals[k]`` (summaries only) maps state code -> ns."""

    grain: int
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    raw: Sequence[int] = field(default_factory=list)  # the raw level's: range(n)
    totals: list[dict[int, int] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, t0: int, t1: int) -> tuple[int, int]:
        """Index range of the slices overlapping ``[t0, t1)`` (ends are sorted too: no overlaps)."""
        return bisect_right(self.ends, t0), bisect_left(self.starts, t1)


@dataclass
class Slices:
    """What one query answers for one row (times relative to ``origin``)."""

    starts: list[int]
    ends: list[int]
    codes: list[int]
    counts: list[int]
    raw: list[int]
    totals: list[dict[int, int] | None]

    def columns(
        self,
    ) -> tuple[list[int], list[int], list[int], list[int], list[int], list[dict[int, int] | None]]:
        """The six lists, for a merge loop to bind to locals."""
        return self.starts, self.ends, self.codes, self.counts, self.raw, self.totals


def merge(level: Level, lo: int, hi: int, grain: int, origin: int = 0) -> Slices:
    """Slices ``lo:hi`` of ``level`` with runs of slices shorter than ``grain`` (and gaps
    shorter than it) merged; a summary stops growing once it is ``grain`` long."""
    out = Slices([], [], [], [], [], [])
    s_starts, s_ends, s_codes, s_counts, s_raw, s_totals = (
        level.starts,
        level.ends,
        level.codes,
        level.counts,
        level.raw,
        level.totals,
    )
    o_starts, o_ends, o_codes, o_counts, o_raw, o_totals = out.columns()
    acc_start = acc_end = acc_n = 0
    acc_tot: dict[int, int] | None = None
    acc_first = -1  # the level index of the only slice in the run (a run of one is no summary)

    def flush() -> None:
        if acc_tot is None:
            return
        if acc_first >= 0:  # a run of one slice is that slice
            k = acc_first
            o_starts.append(s_starts[k] - origin)
            o_ends.append(s_ends[k] - origin)
            o_codes.append(s_codes[k])
            o_counts.append(s_counts[k])
            o_raw.append(s_raw[k])
            o_totals.append(s_totals[k])
            return
        o_starts.append(acc_start - origin)
        o_ends.append(acc_end - origin)
        o_codes.append(max(acc_tot, key=acc_tot.__getitem__))
        o_counts.append(acc_n)
        o_raw.append(-1)
        o_totals.append(acc_tot)

    for k in range(lo, hi):
        a = s_starts[k]
        b = s_ends[k]
        if b - a >= grain:
            flush()
            acc_tot = None
            o_starts.append(a - origin)
            o_ends.append(b - origin)
            o_codes.append(s_codes[k])
            o_counts.append(s_counts[k])
            o_raw.append(s_raw[k])
            o_totals.append(s_totals[k])
            continue
        if acc_tot is not None and a - acc_end < grain and acc_end - acc_start < grain:
            acc_end = b
            acc_n += s_counts[k]
            acc_first = -1
            tot = s_totals[k]
            if tot is None:
                code = s_codes[k]
                acc_tot[code] = acc_tot.get(code, 0) + b - a
            else:
                for code, ns in tot.items():
                    acc_tot[code] = acc_tot.get(code, 0) + ns
            continue
        flush()
        acc_start, acc_end, acc_n, acc_first = a, b, s_counts[k], k
        tot = s_totals[k]
        acc_tot = {s_codes[k]: b - a} if tot is None else dict(tot)
    flush()
    return out


def merge_raw(level: Level, grain: int) -> Slices:
    """``merge`` of a whole raw level (every count 1, no totals), in one tight loop: the
    first level of a big row is where nearly all the merging work is (in C if ``FAST``)."""
    if FAST is not None:
        try:
            return Slices(*FAST.merge_raw(level.starts, level.ends, level.codes, grain))
        except FAST_ERRORS:
            pass
    return merge_raw_py(level, grain)


def merge_raw_py(level: Level, grain: int) -> Slices:
    """``merge_raw`` in Python (the reference)."""
    out = Slices([], [], [], [], [], [])
    starts, ends, codes = level.starts, level.ends, level.codes
    o_starts, o_ends, o_codes, o_counts, o_raw, o_totals = out.columns()
    n = len(starts)
    k = 0
    while k < n:
        a = starts[k]
        b = ends[k]
        first = k
        k += 1
        if b - a < grain:
            run_end = b
            tot = {codes[first]: b - a}
            while k < n:
                a2 = starts[k]
                b2 = ends[k]
                if b2 - a2 >= grain or a2 - run_end >= grain or run_end - a >= grain:
                    break
                c = codes[k]
                tot[c] = tot.get(c, 0) + b2 - a2
                run_end = b2
                k += 1
            if k - first > 1:
                o_starts.append(a)
                o_ends.append(run_end)
                o_codes.append(max(tot, key=tot.__getitem__))
                o_counts.append(k - first)
                o_raw.append(-1)
                o_totals.append(tot)
                continue
        o_starts.append(a)
        o_ends.append(b)
        o_codes.append(codes[first])
        o_counts.append(1)
        o_raw.append(first)
        o_totals.append(None)
    return out


class _Index:
    """What merging a row's raw slices at any grain needs, built once per row at C speed
    (map, sorted, accumulate: no Python step per slice): each slice's duration, and per
    state code the slices in it with their running time, these in arrays of 64-bit ints
    (8 bytes an entry, not a Python int each: a big trace's rows hold millions; the
    durations stay a list, read once per run: an array's item is a new int each time,
    which made the first view ~10% slower)."""

    def __init__(
        self, starts: list[int], ends: list[int], codes: list[int], durations: Sequence[int] | None = None
    ) -> None:
        self.durations = list(map(operator.sub, ends, starts)) if durations is None else durations
        get = self.durations.__getitem__
        order = sorted(range(len(codes)), key=codes.__getitem__)  # by code, then index
        self.per_code: list[tuple[array[int], array[int], int]] = []  # (slices, running ns, code)
        done = 0
        for code, count in sorted(collections.Counter(codes).items()):
            at = array("q", order[done : done + count])
            done += count
            running = array("q", itertools.accumulate(map(get, at), initial=0))
            self.per_code.append((at, running, code))


def merge_runs(level: Level, index: _Index, grain: int) -> Slices:
    """``merge`` of a whole raw level (every count 1, no totals): the same slices and
    summaries, with one Python step per *run* instead of one per slice.

    A run of short slices starting at ``i`` takes every slice up to ``m``, the first
    ending ``grain`` or more after ``starts[i]`` (a bisection: ends are sorted), and
    ``m`` itself if it is short and less than ``grain`` after the one before: no slice
    before ``m`` can be long or after a long gap, as it would end after ``starts[i] +
    grain``. Its time per state comes from the per-code running totals. A row of a
    million slices merged at 10 ms is a few thousand steps."""
    out = Slices([], [], [], [], [], [])
    starts, ends, codes = level.starts, level.ends, level.codes
    o_starts, o_ends, o_codes, o_counts, o_raw, o_totals = out.columns()
    durations = index.durations
    per_code = index.per_code
    n = len(starts)
    i = 0
    while i < n:
        j = i + 1
        if durations[i] < grain:
            m = bisect_left(ends, starts[i] + grain, j)
            j = m + 1 if m < n and durations[m] < grain and starts[m] - ends[m - 1] < grain else m
        if j - i == 1:
            o_starts.append(starts[i])
            o_ends.append(ends[i])
            o_codes.append(codes[i])
            o_counts.append(1)
            o_raw.append(i)
            o_totals.append(None)
            i = j
            continue
        tot = {}
        for at, running, code in per_code:
            lo = bisect_left(at, i)
            hi = bisect_left(at, j, lo)
            if hi > lo:
                tot[code] = running[hi] - running[lo]
        dominant = max(tot, key=tot.__getitem__)
        if len(tot) > 1:
            most = tot[dominant]
            tied = [code for code, ns in tot.items() if ns == most]
            if len(tied) > 1:  # as merge(): the first of them met in the run
                run = codes[i:j]
                dominant = min(tied, key=run.index)
        o_starts.append(starts[i])
        o_ends.append(ends[j - 1])
        o_codes.append(dominant)
        o_counts.append(j - i)
        o_raw.append(-1)
        o_totals.append(tot)
        i = j
    return out


class LodRow:
    """One row's raw slices and its merged levels, plus running per-state totals.

    The levels' grains are ``g, 4g, 16g, ...`` (``g`` a few mean slice spacings) up to
    the row's span; each level is merged from the raw slices (``merge_runs``) when a
    query first needs it, so the first view of a big trace (the whole window, a coarse
    level) costs a few thousand steps per row, not one per slice."""

    def __init__(
        self, starts: list[int], ends: list[int], codes: list[int], durations: list[int] | None = None
    ) -> None:
        """``durations``: ``ends[k] - starts[k]`` if the caller has them already."""
        n = len(starts)
        self.raw = Level(0, starts, ends, codes, [1] * n, range(n), [None] * n)
        self._grains: list[int] = []
        if n > SMALL_LEVEL:
            span = ends[-1] - starts[0]
            grain = max(MIN_GRAIN, SPACINGS * (span // n))
            while grain <= span:
                self._grains.append(grain)
                grain *= GRAIN_STEP
        self._built: dict[int, Level] = {}
        self._index: _Index | None = None
        self._durations = durations
        self._checkpoints: list[dict[int, int]] | None = None
        self._lock = threading.Lock()  # requests and the warm-up thread build levels once

    @property
    def levels(self) -> list[Level]:
        """The raw level and the merged ones, coarser and coarser (all built here)."""
        return [self.raw, *(self.level(grain) for grain in self._grains)]

    def level(self, grain: int) -> Level:
        """The level merged at ``grain`` (one of the row's grains), built on first use."""
        got = self._built.get(grain)
        if got is not None:
            return got
        with self._lock:
            got = self._built.get(grain)
            if got is None:
                raw = self.raw
                if grain < RUNS_FROM * (raw.ends[-1] - raw.starts[0]) // len(raw):
                    # runs of a few slices: one step per slice is cheaper, from the
                    # finest level built so far (the warm-up builds them finest first)
                    finer = [g for g, lv in self._built.items() if g < grain and lv is not raw]
                    if finer:
                        source = self._built[max(finer)]
                        merged = merge(source, 0, len(source), grain)
                    else:
                        merged = merge_raw(raw, grain)
                else:
                    if self._index is None:
                        self._index = _Index(raw.starts, raw.ends, raw.codes, self._durations)
                        self._durations = None  # in the index now
                    merged = merge_runs(raw, self._index, grain)
                if len(merged.starts) > 0.9 * len(raw):  # hardly merged: the raw slices will do
                    got = raw
                else:
                    got = Level(
                        grain,
                        merged.starts,
                        merged.ends,
                        merged.codes,
                        merged.counts,
                        merged.raw,
                        merged.totals,
                    )
                self._built[grain] = got
            return got

    def _running_totals(self) -> list[dict[int, int]]:
        """``[k]``: time per code in raw slices ``[0, k * CHECKPOINT)``."""
        out: list[dict[int, int]] = [{}]
        running: dict[int, int] = {}
        raw = self.raw
        for k in range(len(raw)):
            code = raw.codes[k]
            running[code] = running.get(code, 0) + raw.ends[k] - raw.starts[k]
            if (k + 1) % CHECKPOINT == 0:
                out.append(dict(running))
        return out

    def query(self, t0: int, t1: int, ns_per_px: float, origin: int = 0) -> Slices:
        level = self.raw
        fitting = [grain for grain in self._grains if grain <= ns_per_px]
        if fitting:
            level = self.level(fitting[-1])
        lo, hi = level.span(t0, t1)
        return merge(level, lo, hi, max(1, int(ns_per_px)), origin)

    def totals(self, t0: int, t1: int) -> dict[int, int]:
        """Time per state code inside ``[t0, t1)`` (slices clipped to the range)."""
        raw = self.raw
        lo, hi = raw.span(t0, t1)
        out: dict[int, int] = {}
        if hi <= lo:
            return out
        if self._checkpoints is None:
            self._checkpoints = self._running_totals()
        checkpoints = self._checkpoints

        def add(k: int, sign: int = 1) -> None:
            code = raw.codes[k]
            out[code] = out.get(code, 0) + sign * (min(raw.ends[k], t1) - max(raw.starts[k], t0))

        first_cp = -(-(lo + 1) // CHECKPOINT)  # first checkpoint strictly after lo
        last_cp = (hi - 1) // CHECKPOINT  # the last slice is clipped: never inside
        if last_cp - first_cp < 2:
            for k in range(lo, hi):
                add(k)
            return out
        # whole slices [first_cp*C, last_cp*C) from checkpoints, the edges one by one
        for code, ns in checkpoints[last_cp].items():
            out[code] = out.get(code, 0) + ns - checkpoints[first_cp].get(code, 0)
        for k in range(lo, first_cp * CHECKPOINT):
            add(k)
        for k in range(last_cp * CHECKPOINT, hi):
            add(k)
        return {code: ns for code, ns in out.items() if ns > 0}
