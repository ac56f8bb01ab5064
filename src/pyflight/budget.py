"""The recorder's self-enforced CPU budget: measure what recording costs, shed detail
when it costs too much, restore it when it is cheap again, and say so.

Like Datadog's profiler (capped at 1% of CPU), the recorder keeps its own cost under
``cpu_budget`` of the CPU the process uses. Its cost, measured once per check period:

- the CPU time of its own threads (``pyflight-*``: the ticker, the sampler, ...), read
  from per-thread CPU clocks (``time.pthread_getcpuclockid``);
- plus an estimate of the hooks' cost in the program's own threads: the events and the
  stacks the hooks recorded in the period (the core's counters less the sampler's
  samples, whose cost is in its thread's CPU) x ``HOOK_NS_PER_EVENT`` and
  ``HOOK_NS_PER_STACK`` (documented constants, see docs/performance.md "Budget").

Over budget, one step of detail is shed per period, the first in ``LEVELS`` order that
lowers a part of the cost worth lowering (at least ``SHEDDABLE_SHARE`` of the budget):
the sampler's steps lower its own thread's CPU (the recorder's other threads, the ticker,
the metrics and the stall watchdog, are not the sampler's to pay for: judged on all of them,
a busy service had its sampler slowed to one sample a second to save nothing), the stack
step lowers the hooks' stack walks
(a block under 10 ms keeps its stack one time in 16);
shedding a step that would save nothing only loses detail. Under ``RESTORE_BELOW`` of the
budget, the step shed last comes back. Each change is a LOG in category
``pyflight.budget`` plus the live counters ``pyflight.budget.cost_ppm`` and
``pyflight.budget.shed_level`` (how many steps are shed); the snapshot header carries
``budget.*`` metadata, which ``pyflight info`` prints.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

from pyflight.core import backend
from pyflight.core.events import Kind

#: The sampling thread's name (``pyflight.sources.sampler.THREAD_NAME``, not imported:
#: the budget does not load the sampler unless the recorder does).
SAMPLER_THREAD = "pyflight-sampler"
#: Estimated CPU cost of one hook event in the program's threads (see the module doc).
HOOK_NS_PER_EVENT = 500
#: Estimated extra cost of a stack a hook walks and interns (see docs/performance.md).
HOOK_NS_PER_STACK = 600
#: Budget checks happen this often (seconds of wall time).
CHECK_SECONDS = 1.0
#: A period in which the process used less CPU than this is not judged (an idle
#: process's ratio is noise).
MIN_PROCESS_CPU_NS = 20_000_000
#: Shed a step only when the part of the cost it lowers is at least this share of the budget.
SHEDDABLE_SHARE = 0.5
#: Restore a step only when the cost is under this share of the budget.
RESTORE_BELOW = 0.5
#: Once stacks are shed, a block shorter than this keeps its stack only one time in
#: SHED_STACK_EVERY (so its site still shows, sampled); a longer one always does.
SHED_STACK_MIN_NS = 10_000_000
SHED_STACK_EVERY = 16


class Step(NamedTuple):
    """One step of detail the budget can shed, and what shedding it changes."""

    name: str
    #: The part of the cost it lowers: "sampler" (the sampling thread's CPU) or "stacks"
    #: (the hooks' stack walks).
    lowers: str
    #: While shed, the sampler's interval is this many times its own.
    sampler_slowdown: float = 1.0
    #: While shed, a block under SHED_STACK_MIN_NS keeps its stack one time in SHED_STACK_EVERY.
    sheds_stacks: bool = False


#: The steps of detail, in the order they are shed.
STEPS = (
    Step("sampler rate /4", "sampler", sampler_slowdown=4.0),
    Step("sampler rate /16", "sampler", sampler_slowdown=16.0),
    Step("sampler at its slowest rate", "sampler", sampler_slowdown=float("inf")),
    Step("stacks on blocks under 10 ms: 1 in 16 kept", "stacks", sheds_stacks=True),
)
#: The names of the levels: LEVELS[n] is the step shed n-th ("nothing" is none shed).
LEVELS = ("nothing", *(step.name for step in STEPS))
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
        #: The levels shed now (indexes into LEVELS: level n is STEPS[n - 1]), in the order they were shed.
        self.shed: list[int] = []
        #: Totals since start: recorder threads' CPU, estimated hook CPU, process CPU.
        self.thread_cpu_ns = 0
        self.hook_cpu_ns = 0
        #: The recorder threads' CPU ns since start, by thread name (which part costs what).
        self.thread_cpu_by_name: dict[str, int] = {}
        self.process_cpu_ns = 0
        self.last_cost: float | None = None  # share of the last judged period
        self.periods_over = 0
        self.changes = 0
        self._thread_seen: dict[int, int] = {}
        self._process_last = time.process_time_ns()
        self._counts_last = self._counts()
        self._sampler_base: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def level(self) -> int:
        """How many steps of detail are shed now."""
        return len(self.shed)

    def _counts(self) -> tuple[int, int, int]:
        """(events, stacks) the core recorded since start, and the sampler's samples."""
        try:
            stats = backend.stats()
            events, stacks = int(stats.get("events", 0)), int(stats.get("stacks", 0))
        except Exception:
            events = stacks = 0
        samples = sum(int(getattr(s, "samples", 0)) for s in self._sampler_sources())
        return events, stacks, samples

    def _recorder_threads_cpu(self) -> tuple[int, int]:
        """CPU ns the recorder's own threads used since the last call: all of them, and
        the sampling thread's share."""
        used = sampling = 0
        seen: dict[int, int] = {}
        for thread in threading.enumerate():
            if not thread.name.startswith("pyflight-") or thread.ident is None:
                continue
            now = _thread_cpu_ns(thread.ident)
            if now is None:
                continue
            seen[thread.ident] = now
            delta = max(0, now - self._thread_seen.get(thread.ident, 0))
            used += delta
            by_name = self.thread_cpu_by_name
            by_name[thread.name] = by_name.get(thread.name, 0) + delta
            if thread.name == SAMPLER_THREAD:
                sampling += delta
        self._thread_seen = seen
        return used, sampling

    def check(self) -> None:
        """One period: measure, then shed or restore one step. Called by the ticker."""
        with self._lock:
            process_now = time.process_time_ns()
            counts = self._counts()
            process = process_now - self._process_last
            threads, sampling = self._recorder_threads_cpu()
            events, stacks, samples = (
                max(0, now - last) for now, last in zip(counts, self._counts_last, strict=True)
            )
            # the sampler's samples (an event and a stack each) cost its thread's CPU, counted above;
            # the core's counters restart with a new recorder, which the max() above absorbs
            stack_ns = max(0, stacks - samples) * HOOK_NS_PER_STACK
            hooks = max(0, events - samples) * HOOK_NS_PER_EVENT + stack_ns
            self._process_last, self._counts_last = process_now, counts
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
                worth = SHEDDABLE_SHARE * self.budget * process
                lowers = {"sampler": sampling >= worth, "stacks": stack_ns >= worth}
                step = next(
                    (
                        level
                        for level, candidate in enumerate(STEPS, 1)
                        if level not in self.shed and lowers[candidate.lowers] and self._applies(candidate)
                    ),
                    None,
                )
                # none worth shedding (e.g. the hooks' events alone break the budget): the
                # period is counted, not acted on
                if step is not None:
                    self._change(step, shed=True, cost=cost)
            elif cost < self.budget * RESTORE_BELOW and self.shed:
                self._change(self.shed[-1], shed=False, cost=cost)

    def _applies(self, step: Step) -> bool:
        """Whether shedding ``step`` would change anything in these sources."""
        if step.sampler_slowdown != 1.0 and any(self._sampler_sources()):
            return True
        return step.sheds_stacks and self._blocking_core() is not None

    def _sampler_sources(self) -> list[Any]:
        return [s for s in self.sources if getattr(s, "name", None) == "sampler" and hasattr(s, "interval")]

    def _blocking_core(self) -> Any:
        """The C core's blocking hooks, when the blocking source records with them."""
        for source in self.sources:
            if getattr(source, "name", None) == "blocking":
                core = getattr(source, "_c", None)
                if core is not None and hasattr(core, "_blocking_shed_stacks"):
                    return core
        return None

    def _change(self, step: int, *, shed: bool, cost: float) -> None:
        if shed:
            self.shed.append(step)
        else:
            self.shed.remove(step)
        self.changes += 1
        self._apply()
        backend.set_live(("budget", "level"), Kind.COUNTER, "pyflight.budget.shed_level", self.level)
        backend.record(
            Kind.LOG,
            0,
            CATEGORY,
            f"{'shedding' if shed else 'restoring'} {LEVELS[step]}: the recorder cost {cost * 100:.3g}% "
            f"of the process's CPU (budget {self.budget * 100:.3g}%); now shed: {self.shed_description()}",
        )

    def _apply(self) -> None:
        """Set each source's detail for the steps shed now."""
        shed = [STEPS[level - 1] for level in self.shed]
        slowdown = max((step.sampler_slowdown for step in shed), default=1.0)
        for source in self._sampler_sources():
            from pyflight.sources.sampler import MAX_INTERVAL

            base = self._sampler_base.setdefault(id(source), float(source.interval))
            slower = min(MAX_INTERVAL, base * slowdown)
            source.interval = slower
            source.current_interval = max(source.current_interval, slower)
        core = self._blocking_core()
        if core is not None:
            stacks_shed = any(step.sheds_stacks for step in shed)
            core._blocking_shed_stacks(SHED_STACK_EVERY if stacks_shed else 1, SHED_STACK_MIN_NS)

    def restore_all(self) -> None:
        """Undo every change (the recorder stops)."""
        with self._lock:
            self.shed.clear()
            self._apply()

    def shed_description(self) -> str:
        return ", ".join(LEVELS[i] for i in self.shed) if self.shed else "nothing"

    def status(self) -> dict[str, Any]:
        """Figures for ``/debug/pyflight/status`` and the snapshot header."""
        total = self.thread_cpu_ns + self.hook_cpu_ns
        return {
            "cpu_budget": self.budget,
            "cost": total / self.process_cpu_ns if self.process_cpu_ns else 0.0,
            "last_cost": self.last_cost,
            "recorder_threads_cpu_s": self.thread_cpu_ns / 1e9,
            "recorder_threads": {name: ns / 1e9 for name, ns in sorted(self.thread_cpu_by_name.items())},
            "hooks_cpu_s_estimated": self.hook_cpu_ns / 1e9,
            "hook_ns_per_event": HOOK_NS_PER_EVENT,
            "hook_ns_per_stack": HOOK_NS_PER_STACK,
            "process_cpu_s": self.process_cpu_ns / 1e9,
            "shed_level": self.level,
            "shed": [LEVELS[i] for i in self.shed],
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
        by_thread = json.loads(meta.get("budget.recorder_threads", "{}"))
        if not isinstance(by_thread, dict):
            raise TypeError("budget.recorder_threads is not an object")
        parts = sorted(((float(cpu), str(name)) for name, cpu in by_thread.items()), reverse=True)
    except (ValueError, TypeError):
        return ["recorder cost: unreadable budget metadata"]
    lines = [
        f"{'recorder':<13}cost {cost * 100:.3g}% of the process's CPU (budget {budget * 100:.3g}%): "
        f"its threads {threads:.3f} s + hooks ~{hooks:.3f} s (estimated) of {process:.3f} s",
    ]
    if parts:
        lines.append(f"{'its threads':<13}" + ", ".join(f"{name} {cpu:.3f} s" for cpu, name in parts))
    lines += [
        f"{'shed':<13}"
        + (", ".join(shed) if shed else "nothing")
        + (f" ({over} check(s) over budget; the LOG events in category {CATEGORY} say when)" if over else ""),
    ]
    return lines
