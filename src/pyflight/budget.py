"""The recorder's self-enforced CPU budget: measure what recording costs, shed detail
when it costs too much, restore it when it is cheap again, and say so.

Like Datadog's profiler (capped at 1% of CPU), the recorder keeps its own cost under
``cpu_budget`` of the CPU the process uses. Its cost, measured once per check period:

- the CPU time of its own threads (``pyflight-*``: the ticker, the sampler, ...), read
  from per-thread CPU clocks (``time.pthread_getcpuclockid``);
- plus an estimate of the hooks' cost in the program's own threads: events recorded
  in the period x ``HOOK_NS_PER_EVENT`` (a documented constant: the hooks cost
  200-1,200 ns per event on this project's benchmarks).

Shedding order, one level per over-budget period in which the recorder's own threads
(the part shedding lowers) use at least half the budget, restored one level per period under
half the budget: (1) sampler rate /4, (2) sampler rate /16, (3) sampler at its slowest
rate (MAX_INTERVAL). Each change is a LOG in category ``pyflight.budget`` plus the live
counters ``pyflight.budget.cost_ppm`` and ``pyflight.budget.shed_level``; the snapshot
header carries ``budget.*`` metadata, which ``pyflight info`` prints.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pyflight.core import backend
from pyflight.core.events import Kind

#: Estimated CPU cost of one hook event in the program's threads (see the module doc).
HOOK_NS_PER_EVENT = 500
#: Budget checks happen this often (seconds of wall time).
CHECK_SECONDS = 1.0
#: A period in which the process used less CPU than this is not judged (an idle
#: process's ratio is noise).
MIN_PROCESS_CPU_NS = 20_000_000
#: Shed only when the recorder's own threads (what shedding lowers) use at least this
#: share of the budget.
SHEDDABLE_SHARE = 0.5
#: Restore a level only when the cost is under this share of the budget.
RESTORE_BELOW = 0.5
#: What each level sheds, in order (what ``status()``/the trace say).
LEVELS = (
    "nothing",
    "sampler rate /4",
    "sampler rate /16",
    "sampler at its slowest rate",
)
_SAMPLER_SLOWDOWN = (1.0, 4.0, 16.0, float("inf"))
CATEGORY = "pyflight.budget"


def _thread_cpu_ns(ident: int) -> int | None:
    try:
        return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError, OverflowError):  # ended meanwhile, or no per-thread clocks
        return None


class CpuBudget:
    """Checks the recorder's cost against ``budget`` (a share of the process's CPU)."""

    def __init__(self, budget: float, sources: list[Any]) -> None:
        if not 0 < budget <= 1:
            raise ValueError(f"cpu_budget must be > 0 and <= 1, got {budget!r}")
        self.budget = budget
        self.sources = sources
        self.level = 0
        #: Totals since start: recorder threads' CPU, estimated hook CPU, process CPU.
        self.thread_cpu_ns = 0
        self.hook_cpu_ns = 0
        self.process_cpu_ns = 0
        self.last_cost: float | None = None  # share of the last judged period
        self.periods_over = 0
        self.changes = 0
        self._thread_seen: dict[int, int] = {}
        self._process_last = time.process_time_ns()
        self._events_last = self._events()
        self._sampler_base: dict[int, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _events() -> int:
        try:
            return int(backend.stats().get("events", 0))
        except Exception:
            return 0

    def _recorder_threads_cpu(self) -> int:
        """CPU ns the recorder's own threads used since the last call."""
        used = 0
        seen: dict[int, int] = {}
        for thread in threading.enumerate():
            if not thread.name.startswith("pyflight-") or thread.ident is None:
                continue
            now = _thread_cpu_ns(thread.ident)
            if now is None:
                continue
            seen[thread.ident] = now
            used += max(0, now - self._thread_seen.get(thread.ident, 0))
        self._thread_seen = seen
        return used

    def check(self) -> None:
        """One period: measure, then shed or restore one level. Called by the ticker."""
        with self._lock:
            process_now = time.process_time_ns()
            events_now = self._events()
            process = process_now - self._process_last
            threads = self._recorder_threads_cpu()
            hooks = max(0, events_now - self._events_last) * HOOK_NS_PER_EVENT
            self._process_last, self._events_last = process_now, events_now
            self.thread_cpu_ns += threads
            self.hook_cpu_ns += hooks
            self.process_cpu_ns += process
            if process < MIN_PROCESS_CPU_NS:
                return
            cost = (threads + hooks) / process
            self.last_cost = cost
            backend.set_live(("budget", "cost"), Kind.COUNTER, "pyflight.budget.cost_ppm", round(cost * 1e6))
            if cost > self.budget:
                self.periods_over += 1
                # Every level sheds the sampler, which only lowers the recorder threads'
                # part: when the hooks alone break the budget, shedding would lose
                # detail and save nothing, so the period is counted, not acted on.
                if self.level < len(LEVELS) - 1 and threads > SHEDDABLE_SHARE * self.budget * process:
                    self._set_level(self.level + 1, cost)
            elif cost < self.budget * RESTORE_BELOW and self.level > 0:
                self._set_level(self.level - 1, cost)

    def _set_level(self, level: int, cost: float) -> None:
        verb = "shedding" if level > self.level else "restoring"
        what = LEVELS[level] if level > self.level else LEVELS[self.level]
        self.level = level
        self.changes += 1
        self._apply()
        backend.set_live(("budget", "level"), Kind.COUNTER, "pyflight.budget.shed_level", level)
        backend.record(
            Kind.LOG,
            0,
            CATEGORY,
            f"{verb} {what}: the recorder cost {cost * 100:.3g}% of the process's CPU "
            f"(budget {self.budget * 100:.3g}%); now shed: {self.shed_description()}",
        )

    def _apply(self) -> None:
        """Set each source's detail for the current level."""
        for source in self.sources:
            if getattr(source, "name", None) == "sampler" and hasattr(source, "interval"):
                from pyflight.sources.sampler import MAX_INTERVAL

                base = self._sampler_base.setdefault(id(source), float(source.interval))
                slower = min(MAX_INTERVAL, base * _SAMPLER_SLOWDOWN[self.level])
                source.interval = slower
                source.current_interval = max(source.current_interval, slower)

    def restore_all(self) -> None:
        """Undo every change (the recorder stops)."""
        with self._lock:
            self.level = 0
            self._apply()

    def shed_description(self) -> str:
        return ", ".join(LEVELS[1 : self.level + 1]) if self.level else "nothing"

    def status(self) -> dict[str, Any]:
        """Figures for ``/debug/pyflight/status`` and the snapshot header."""
        total = self.thread_cpu_ns + self.hook_cpu_ns
        return {
            "cpu_budget": self.budget,
            "cost": total / self.process_cpu_ns if self.process_cpu_ns else 0.0,
            "last_cost": self.last_cost,
            "recorder_threads_cpu_s": self.thread_cpu_ns / 1e9,
            "hooks_cpu_s_estimated": self.hook_cpu_ns / 1e9,
            "hook_ns_per_event": HOOK_NS_PER_EVENT,
            "process_cpu_s": self.process_cpu_ns / 1e9,
            "shed_level": self.level,
            "shed": LEVELS[1 : self.level + 1],
            "periods_over_budget": self.periods_over,
            "changes": self.changes,
            "order": list(LEVELS[1:]),
        }


def describe_budget(meta: dict[str, str]) -> list[str]:
    """What ``pyflight info`` says about the recorder's cost and what it left out (from a
    snapshot's ``budget.*`` metadata; nothing for traces written without a budget)."""
    if "budget.cpu_budget" not in meta:
        return []
    try:
        budget = float(meta["budget.cpu_budget"])
        cost = float(meta.get("budget.cost", "0"))
        threads = float(meta.get("budget.recorder_threads_cpu_s", "0"))
        hooks = float(meta.get("budget.hooks_cpu_s_estimated", "0"))
        process = float(meta.get("budget.process_cpu_s", "0"))
        import json  # read side only: the recording side does not load it

        shed = json.loads(meta.get("budget.shed", "[]"))
        over = int(meta.get("budget.periods_over_budget", "0"))
    except (ValueError, TypeError):
        return ["recorder cost: unreadable budget metadata"]
    lines = [
        f"{'recorder':<13}cost {cost * 100:.3g}% of the process's CPU (budget {budget * 100:.3g}%): "
        f"its threads {threads:.3f} s + hooks ~{hooks:.3f} s (estimated) of {process:.3f} s",
        f"{'shed':<13}"
        + (", ".join(shed) if shed else "nothing")
        + (f" ({over} check(s) over budget; the LOG events in category {CATEGORY} say when)" if over else ""),
    ]
    return lines
