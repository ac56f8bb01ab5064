"""Process counters sampled ~10 times a second: memory, threads, GC pressure, asyncio.

These are levels, not facts, so they are sampled at a fixed rate from the recorder's
own thread ("pyflight-ticker", shared with its other periodic work: core/periodic.py)
instead of hooking anything: the cost is a few microseconds per tick whatever the
program does, and a trace always has the curves
to put a slow request next to (RSS growing, a thread pile-up, a lagging event loop).

Counters (COUNTER events): ``rss_bytes`` (Linux ``/proc/self/statm``; skipped elsewhere),
``threads``, ``gc_count_0/1/2`` and, for event loops handed to :func:`register_loop`
(by the asyncio source), ``asyncio_tasks`` (the asyncio source's live tasks; without it,
``asyncio.all_tasks`` summed over the loops) and ``loop_lag_us`` (the worst loop): how
late a callback posted with ``call_soon_threadsafe`` ran, or how long the outstanding
one has waited so far, so a blocked loop shows while it is blocked.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pyflight.core import backend, periodic
from pyflight.core.events import Kind
from pyflight.sources import register
from pyflight.sources.base import Source

#: Default seconds between samples (option ``interval``).
INTERVAL = 0.1
#: The thread the counters are sampled from (shared: see core/periodic.py).
THREAD_NAME = periodic.THREAD_NAME
_COUNTER = int(Kind.COUNTER)
_GC_NAMES = ("gc_count_0", "gc_count_1", "gc_count_2")


class _LoopProbe:
    """Lag probe state of one event loop; at most one probe is outstanding."""

    __slots__ = ("last_lag_ns", "sent_ns", "seq")

    def __init__(self) -> None:
        self.sent_ns = 0  # when the outstanding probe was posted, 0 if none
        self.seq = 0  # number of the outstanding probe; stale ones are ignored
        self.last_lag_ns = -1  # lag of the last probe that ran, -1 if none yet

    def arrived(self, seq: int) -> None:
        """Runs on the loop's thread: how late was it?"""
        sent = self.sent_ns
        if seq == self.seq and sent:
            self.last_lag_ns = max(0, time.monotonic_ns() - sent)
            self.sent_ns = 0

    def invalidate(self) -> None:
        """The loop stopped: a queued probe would measure the pause, not lag."""
        if self.sent_ns:
            self.seq += 1
            self.sent_ns = 0

    def poll(self, loop: Any) -> int:
        """Lag to report now (-1 if none); posts the next probe if none is outstanding."""
        sent = self.sent_ns
        if sent:
            return max(0, time.monotonic_ns() - sent)
        lag = self.last_lag_ns
        self.seq += 1
        self.sent_ns = time.monotonic_ns()
        try:
            loop.call_soon_threadsafe(self.arrived, self.seq)
        except RuntimeError:  # closed meanwhile
            self.sent_ns = 0
        return lag


_loops_lock = threading.Lock()
_loops: weakref.WeakKeyDictionary[Any, _LoopProbe] = weakref.WeakKeyDictionary()


def _renew_lock_after_fork() -> None:
    """In a forked child: the metrics thread may have held the lock at the fork, and it
    does not exist here; a loop started in the child (a pre-fork server's worker)
    registers under it."""
    global _loops_lock
    _loops_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_after_fork)


#: Counts the live asyncio tasks in O(1) (the asyncio source's table of them), or None:
#: ``asyncio.all_tasks`` visits every task (~0.33 us each: 3.3 ms with 10,000 tasks,
#: 3% of a CPU at 10 ticks a second), so it is the fallback for loops registered alone.
_task_counter: Callable[[], int] | None = None


def count_tasks_with(counter: Callable[[], int] | None) -> None:
    """Have ``asyncio_tasks`` read ``counter()`` (the live tasks of every loop the
    asyncio source hooks) instead of ``asyncio.all_tasks`` per loop; None: back to that."""
    global _task_counter
    _task_counter = counter


def register_loop(loop: Any) -> bool:
    """Count ``loop``'s tasks and measure its lag while the metrics source runs.

    Held weakly (a loop that goes away drops out by itself); registering twice is
    fine. Returns False if ``loop`` cannot be weakly referenced (it is then ignored).
    """
    try:
        with _loops_lock:
            if loop not in _loops:
                _loops[loop] = _LoopProbe()
    except TypeError:
        return False
    return True


def unregister_loop(loop: Any) -> None:
    """Stop watching ``loop`` (unknown loops are fine)."""
    try:
        with _loops_lock:
            _loops.pop(loop, None)
    except TypeError:
        pass


def registered_loops() -> list[Any]:
    """The loops being watched (strong references: for tests and diagnostics)."""
    with _loops_lock:
        return list(_loops.keys())


def _open_statm() -> int:
    """A descriptor on ``/proc/self/statm`` (read with pread each tick), -1 if none."""
    if not sys.platform.startswith("linux"):
        return -1
    try:
        return os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return -1


@register
class MetricsSource(Source):
    """COUNTER events every ``interval`` seconds, from the recorder's shared thread."""

    name = "metrics"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.interval = INTERVAL
        self._job: periodic.Job | None = None
        self._statm = -1
        self._page_size = 0

    def _install(self) -> None:
        if self._job is not None:
            return
        options = dict(self.options)
        interval = options.pop("interval", INTERVAL)
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 3600:
            raise ValueError(f"interval must be a number of seconds in (0, 3600], got {interval!r}")
        self.interval = float(interval)
        self._statm = _open_statm()
        self._page_size = os.sysconf("SC_PAGE_SIZE") if self._statm >= 0 else 0
        self._job = periodic.every(self.interval, self._tick, self._fault)

    def _uninstall(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            periodic.cancel(job)  # once it returns, no tick is running (or ever will)
        statm, self._statm = self._statm, -1
        if statm >= 0:
            os.close(statm)

    def scheduled(self) -> bool:
        """True while its ticks are scheduled on the shared thread (tests, diagnostics)."""
        return self._job is not None

    # the ticks, on the shared thread (core/periodic.py) ---------------------------------

    def _tick(self) -> None:
        self._statm = self._sample(self._statm, self._page_size)

    def _fault(self, exc: BaseException) -> None:
        if self._job is not None:  # a fault while stopping is not worth a warning
            self.failed(exc)

    def _sample(self, statm: int, page_size: int) -> int:
        """Record one round of counters; returns the statm descriptor (-1 once it fails)."""
        record = backend.record
        if statm >= 0:
            try:
                rss = int(os.pread(statm, 128, 0).split()[1]) * page_size
            except (OSError, IndexError, ValueError):  # not the /proc we know: stop asking
                os.close(statm)
                statm = -1
            else:
                record(_COUNTER, "rss_bytes", rss)
        record(_COUNTER, "threads", threading.active_count())
        for name, count in zip(_GC_NAMES, gc.get_count(), strict=False):
            record(_COUNTER, name, max(0, count))
        if _loops:
            self._sample_loops()
        return statm

    def _sample_loops(self) -> None:
        with _loops_lock:
            items = list(_loops.items())
        if not items:
            return
        import asyncio  # already imported by whoever registered the loops

        counter = _task_counter
        tasks = 0
        counted = running = False
        lag = -1
        for loop, probe in items:
            if loop.is_closed():
                unregister_loop(loop)
                continue
            if not loop.is_running():
                probe.invalidate()
                continue
            running = True
            if counter is None:
                try:
                    tasks += len(asyncio.all_tasks(loop))
                    counted = True
                except RuntimeError:  # the task set kept changing under us: next tick
                    pass
            lag = max(lag, probe.poll(loop))
        if counter is not None and running:
            tasks, counted = counter(), True
        record = backend.record
        if counted:
            record(_COUNTER, "asyncio_tasks", tasks)
        if lag >= 0:
            record(_COUNTER, "loop_lag_us", lag // 1000)
