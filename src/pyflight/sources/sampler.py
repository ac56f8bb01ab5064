"""Stack sampler: where every thread (and the asyncio task it runs) is, a few times a second.

Events say *when* things happened; samples say *where* the code was, including code no
hook sees (a tight loop, a C extension, a blocking call nobody wrapped). Each tick takes
``sys._current_frames()`` and records one SAMPLE per thread (native tid, running asyncio
task, stack, OS thread state). The frame object goes to ``backend.record`` as is: the
C core walks and interns the stack in C, which is what makes sampling affordable.

Cost (docs: tens of microseconds per thread per tick, and the sampler can only take the
GIL once per switch interval) decides the rate: 100 Hz by default, stretched so that the
sampler's own CPU time stays within ``cpu_budget`` of one CPU. The effective interval is
a live COUNTER ``sampler_interval_us`` in every generation, so a trace says its rate.

Thread states come from ``/proc/self/task/<tid>/stat`` (kept open, re-read with pread).
Reading it releases the GIL, so the states of all known threads are read *before* the
stacks are taken: the stacks of one tick are then taken in one GIL hold and describe one
instant. Each thread's CPU clock (one cheap syscall, GIL kept) saves most reads:

* no CPU time since its previous sample: the thread has not run, so its state has not
  changed (the idle threads of a server cost no read at all);
* on a CPU for most of the time since then: RUNNING. Such a thread runs Python code, and
  while the sampler holds the GIL it is parked waiting for it, which the OS shows as S.

Each SAMPLE also carries the CPU the thread used since its previous sample and the wall
time that covers (``cpu``, ``span``): the analysis charges a thread's *measured* CPU to its
stacks, so CPU totals match the kernel's, and a thread that was neither blocked nor on a
CPU between two samples is seen waiting (for the GIL, or for a CPU) rather than running.

Taking the GIL has a bias: the sampler gets it when the running thread lets go of it
(``with lock:``, a socket call), so that is where it finds that thread. With the C core
on CPython 3.11-3.13 (Linux), the sampling thread waits for its tick in C without the
GIL and, at the tick, reads the stack of the thread holding the GIL right then, safely
and without taking it (``_core_stackreader.c``); that thread's SAMPLE carries the stack
read there instead of the one the sampler finds once it has the GIL. Where that reader
cannot work (pure-Python core, another version, reading our own memory refused), the
sampler works as before, and the trace metadata ``sampler.stacks`` says which it was.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Final

from pyflight.core import backend
from pyflight.core.daemon import start_without_signals
from pyflight.core.events import Kind, ThreadState
from pyflight.sources import register
from pyflight.sources.base import Source

__all__ = ["THREAD_NAME", "StackSampler", "record_thread_exit", "sample_thread_now"]

#: Name of the sampling thread (it never samples itself).
THREAD_NAME: Final = "pyflight-sampler"
DEFAULT_INTERVAL: Final = 0.01
DEFAULT_CPU_BUDGET: Final = 0.01
#: The interval is never stretched beyond this: a trace keeps at least one sample a second.
MAX_INTERVAL: Final = 1.0
#: Weight of the newest tick in the moving average of the cost per tick.
COST_SMOOTHING: Final = 0.2
#: One tick's cost counts at most this many times the average (see ``_adapt``).
OUTLIER_FACTOR: Final = 3.0
#: The CPU the sampler may spend ahead of its budget: this many seconds of its allowance
#: (see ``_adapt``): one costly tick is paid for once, not stretched over many.
BURST_SECONDS: Final = 1.0
#: A new interval is recorded when it differs from the last recorded one by more than this.
REPORT_CHANGE: Final = 0.2
#: Each wait is the interval +-10%, so periodic work in the program does not alias.
JITTER: Final = 0.1
#: On a CPU for at least this share of the time since its previous sample: RUNNING.
BUSY_SHARE: Final = 0.5
#: /proc stat files kept open (pread is a third of open+read+close); more threads reopen.
MAX_OPEN_FILES: Final = 64
#: How long uninstall waits for the sampling thread to finish its tick.
JOIN_TIMEOUT: Final = 2.0

_OPTIONS: Final = frozenset({"interval", "cpu_budget", "thread_state", "native_stacks"})
_LIVE_KEY: Final = ("sampler", "interval")
_COUNTER_NAME: Final = "sampler_interval_us"
_SAMPLE: Final = int(Kind.SAMPLE)
_UNKNOWN: Final = int(ThreadState.UNKNOWN)
_RUNNING: Final = int(ThreadState.RUNNING)
_HOLDING_GIL: Final = int(ThreadState.HOLDING_GIL)
_ENDING: Final = int(ThreadState.ZOMBIE)
_STAT_BYTES: Final = 128  # "tid (comm) S": comm is at most 15 bytes, the state follows it

#: Field 3 of /proc/<pid>/task/<tid>/stat -> ThreadState.
_STATE_CODES: Final[dict[int, int]] = {
    ord("R"): _RUNNING,
    ord("W"): _RUNNING,  # waking (old kernels)
    ord("S"): int(ThreadState.SLEEPING),
    ord("I"): int(ThreadState.SLEEPING),  # idle
    ord("P"): int(ThreadState.SLEEPING),  # parked
    ord("D"): int(ThreadState.DISK),
    ord("T"): int(ThreadState.STOPPED),
    ord("t"): int(ThreadState.STOPPED),  # stopped by a tracer
    ord("Z"): int(ThreadState.ZOMBIE),
    ord("X"): int(ThreadState.ZOMBIE),  # dead
}

# The installed sampler, for sample_thread_now(); another one serves when none is.
_installed: StackSampler | None = None
_standby: StackSampler | None = None


def _stat_path(tid: int) -> str:
    return f"/proc/self/task/{tid}/stat"


def _parse_state(data: bytes) -> int:
    """The state letter follows the last ')' (the command name may hold anything)."""
    end = data.rfind(b")")
    if end < 0 or end + 2 >= len(data):
        return _UNKNOWN
    return _STATE_CODES.get(data[end + 2], _UNKNOWN)


def _read_state_once(tid: int) -> int:
    """Open, read, close: for callers that do not own the sampler's open files."""
    try:
        fd = os.open(_stat_path(tid), os.O_RDONLY)
    except OSError:
        return _UNKNOWN
    try:
        return _parse_state(os.read(fd, _STAT_BYTES))
    except OSError:
        return _UNKNOWN
    finally:
        os.close(fd)


def _cpu_clock(tid: int) -> int:
    """Linux clock id of thread ``tid``'s CPU time (MAKE_THREAD_CPUCLOCK(tid, SCHED)).

    Built from the native id rather than ``pthread_getcpuclockid(ident)``, which reads
    the thread's pthread structure: unsafe once that thread has exited.
    """
    return ((~tid) << 3) | 6


def _proc_available() -> bool:
    return sys.platform.startswith("linux") and os.path.exists(_stat_path(threading.get_native_id()))


def _cpu_clocks_work() -> bool:
    """True if thread CPU clocks are built as :func:`_cpu_clock` assumes (checked on us)."""
    try:
        if time.pthread_getcpuclockid(threading.get_ident()) != _cpu_clock(threading.get_native_id()):
            return False
        time.clock_gettime_ns(_cpu_clock(threading.get_native_id()))
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _thread_table() -> Mapping[int, Any]:
    """Python thread ident -> Thread object, without copying where CPython allows."""
    active = getattr(threading, "_active", None)
    if isinstance(active, dict):
        return active
    return {t.ident: t for t in threading.enumerate() if t.ident is not None}


class _Proc:
    """What the sampler keeps per native thread: its open stat file and CPU clock reading."""

    __slots__ = ("clock", "cpu", "fd", "ran", "since", "state", "wall")

    def __init__(self, tid: int) -> None:
        self.clock = _cpu_clock(tid)
        self.fd = -1
        self.cpu = 0
        self.wall = 0  # monotonic ns of the CPU reading; 0 = none yet
        self.state = _UNKNOWN  # the state found then
        # CPU ns used during the ``since`` ns before the last reading (since = 0: unknown)
        self.ran = 0
        self.since = 0


_MAX_IDENTS = 256


def _none() -> None:
    return None


def _renew_native_id_after_fork() -> None:
    """A forked child's only thread keeps the parent's native id on its Thread object
    (CPython 3.11-3.13 reset ``ident`` after fork, not ``native_id``): every source would
    file the child's main thread under the parent's tid, a phantom row in the child's trace."""
    try:
        thread = threading.current_thread()
        if thread.native_id != threading.get_native_id():
            renew = getattr(thread, "_set_native_id", None)
            if renew is not None:
                renew()
    except Exception:
        pass  # never break the program's fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_native_id_after_fork)


@register
class StackSampler(Source):
    """Samples every thread's stack, OS state and running asyncio task on a CPU budget.

    Options: ``interval`` (seconds between samples at most, default 0.01),
    ``cpu_budget`` (share of one CPU the sampler may use, default 0.01) and
    ``thread_state`` (read OS thread states, default True) and ``native_stacks`` (read
    the stack of the thread holding the GIL without taking it, where the C core can;
    default True).
    """

    name = "sampler"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.interval = DEFAULT_INTERVAL
        self.cpu_budget = DEFAULT_CPU_BUDGET
        self.thread_state = True
        self.native_stacks = True
        # Why the native stack reader is not used (None while it is); see _install.
        self.native_reason: str | None = "not installed"
        self._wake_fd = -1  # eventfd: written by uninstall to wake the native wait
        # (ident, native id, stack, time, CPU clock) of the GIL's holder read at this
        # tick, for _tick
        self._held: tuple[int, int, tuple[tuple[str, str, int], ...], int, int] | None = None
        # A bad option is reported by install() (the recorder turns it into a warning
        # and a SOURCE_DISABLED event) instead of breaking FlightRecorder.start().
        self._option_error: Exception | None = None
        try:
            self._parse_options(options)
        except (TypeError, ValueError) as exc:
            self._option_error = exc
        #: The interval in use now (stretched to respect the CPU budget).
        self.current_interval = self.interval
        #: Ticks done, samples recorded, CPU ns used by the sampling thread.
        self.ticks = 0
        self.samples = 0
        self.cpu_ns = 0
        self._cost_ns: float | None = None  # moving average of the CPU cost of a tick
        # CPU ns the sampler may still spend (``_adapt``): a full allowance to start with
        self._credit_ns = self.cpu_budget * BURST_SECONDS * 1e9
        self._warm = False
        self._reported_us = 0
        self._proc_ok = self.thread_state and _proc_available()
        self._clock_ok = self._proc_ok and _cpu_clocks_work()
        # Held while the sampler should run; uninstall releases it to wake the thread.
        # A timed Lock.acquire costs the sampling thread less CPU than Event.wait.
        self._wakeup = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._rng = random.Random()  # our own: never disturb the program's random state
        # ident -> (weak reference to the Thread, native id): the object tells a reused
        # ident apart; weak, so the sampler never keeps a finished Thread alive
        self._idents: dict[int, tuple[Callable[[], object], int]] = {}
        # native tid -> _Proc. Touched (and its files closed) only by the sampling
        # thread while it lives, by uninstall once it is gone.
        self._procs: dict[int, _Proc] = {}
        self._seen: list[int] = []  # native tids sampled in the last tick
        self._last_tick_ns = 0  # monotonic ns of the previous tick's CPU readings
        self._task_dicts: tuple[dict[Any, Any], ...] | None = None

    def _parse_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise TypeError(f"unknown sampler option(s) {unknown}; known: {sorted(_OPTIONS)}")
        interval = float(options.get("interval", DEFAULT_INTERVAL))
        if not 0 < interval <= MAX_INTERVAL:
            raise ValueError(f"interval must be > 0 and <= {MAX_INTERVAL} seconds, got {interval!r}")
        budget = float(options.get("cpu_budget", DEFAULT_CPU_BUDGET))
        if not 0 < budget <= 1:
            raise ValueError(f"cpu_budget must be > 0 and <= 1 (a share of one CPU), got {budget!r}")
        thread_state = options.get("thread_state", True)
        if not isinstance(thread_state, bool):
            raise TypeError(f"thread_state must be a bool, got {thread_state!r}")
        native = options.get("native_stacks", True)
        if not isinstance(native, bool):
            raise TypeError(f"native_stacks must be a bool, got {native!r}")
        self.interval, self.cpu_budget, self.thread_state = interval, budget, thread_state
        self.native_stacks = native

    # lifecycle ---------------------------------------------------------------

    def _install(self) -> None:
        global _installed
        if self._option_error is not None:
            raise self._option_error
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the previous sampling thread is still running")
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        self._stopping = False
        self._pid = os.getpid()
        self.current_interval = self.interval
        self._cost_ns = None
        self._credit_ns = self.cpu_budget * BURST_SECONDS * 1e9
        self._warm = False
        self._seen = []
        self._last_tick_ns = 0
        self._report_interval(force=True)
        self.native_reason = self._native_reason()
        self._close_wake_fd()
        if self.native_reason is None:
            try:
                self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            except (AttributeError, OSError) as exc:
                self.native_reason = f"no eventfd ({exc})"
        thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread = thread
        start_without_signals(thread)
        _installed = self

    def _native_reason(self) -> str | None:
        """None if the sampling thread can read the GIL holder's stack natively, else why not."""
        if not self.native_stacks:
            return "turned off (native_stacks=False)"
        probe = getattr(backend, "stackreader_probe", None)
        if probe is None:
            return "the pure-Python core has no native stack reader"
        try:
            why: str | None = probe()
        except Exception as exc:  # never let the reader's set-up stop the sampler
            return f"{type(exc).__name__}: {exc}"
        return why

    def metadata(self) -> dict[str, str]:
        """Trace metadata: how the stacks of running threads were read."""
        if self.native_reason is None:
            return {"sampler.stacks": "native: the GIL holder's stack read without the GIL"}
        return {"sampler.stacks": f"with the GIL ({self.native_reason})"}

    def _close_wake_fd(self) -> None:
        fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _uninstall(self) -> None:
        global _installed
        if _installed is self:
            _installed = None
            _started.clear()
        try:
            backend.clear_live(_LIVE_KEY)
        except Exception:
            pass
        thread = self._thread
        if os.getpid() != self._pid:
            # Forked child: the sampling thread does not exist here; nothing to stop.
            self._thread = None
            self._close_files()
            self._close_wake_fd()
            return
        self._stopping = True
        try:
            self._wakeup.release()
        except RuntimeError:  # already released
            pass
        if self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass
        if thread is threading.current_thread():
            self._thread = None  # failed() from the tick: the thread ends right after
            return  # and closes its files itself
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                return  # still in a tick: it closes its files when it ends (the eventfd stays open)
        self._thread = None
        self._close_files()
        self._close_wake_fd()

    def stats(self) -> dict[str, Any]:
        """Counters of this sampler (for benchmarks and diagnostics)."""
        return {
            "ticks": self.ticks,
            "samples": self.samples,
            "cpu_ns": self.cpu_ns,
            "cost_ns": self._cost_ns or 0.0,
            "interval": self.current_interval,
            "thread_state": self._proc_ok,
            "native_stacks": self.native_reason is None,
        }

    # the sampling thread ---------------------------------------------------------

    def _run(self) -> None:
        wait = self._wakeup.acquire
        me = threading.get_ident()
        thread_time = time.thread_time_ns
        jitter = self._rng.random
        # native: wait in C without the GIL, then read the GIL holder's stack right then
        native_wait = backend.stackreader_wait if self.native_reason is None else None
        fd = self._wake_fd
        try:
            last = thread_time()
            last_wall = time.monotonic_ns()
            while True:
                timeout = self.current_interval * (1.0 + JITTER * (2.0 * jitter() - 1.0))
                if native_wait is not None:
                    self._held = native_wait(fd, timeout)
                elif wait(True, timeout):
                    return
                if self._stopping:
                    return
                try:
                    self._tick(me)
                    now, now_wall = thread_time(), time.monotonic_ns()
                    self._adapt(now - last, now_wall - last_wall)  # waking up counts too
                    last, last_wall = now, now_wall
                except Exception as exc:
                    if not self._stopping:
                        self.failed(exc)
                    return
        finally:
            self._close_files()

    def _adapt(self, cost: int, elapsed: int) -> None:
        """Pace the ticks so that the sampler's CPU stays within its budget over time.

        A credit (a token bucket) grows by the budget's share of the wall time that
        passed, up to ``BURST_SECONDS`` of it, and each tick spends its cost; the next
        wait is long enough to repay any debt. Steady ticks costing ``c`` settle at
        ``c / budget`` apart; one costly tick is absorbed, or repaid by one long wait,
        not by seconds of slow sampling, as pacing by an average cost per tick did.

        One tick can pay for a garbage collection its allocations happened to start (55
        ms over a program's big lists): the program's cost, not the sampler's. So a
        tick spends at most ``OUTLIER_FACTOR`` times the running average (a lasting rise
        still lifts the average by a third of itself per tick), and the first tick
        measured, with no average yet, at most the credit there is."""
        self.ticks += 1
        self.cpu_ns += cost
        if not self._warm:
            self._warm = True  # the first tick pays for thread start-up and first-seen threads
            return
        budget = self.cpu_budget
        credit = min(self._credit_ns + budget * elapsed, budget * BURST_SECONDS * 1e9)
        avg = self._cost_ns
        spent = min(cost, max(credit, 0.0)) if avg is None else min(cost, OUTLIER_FACTOR * avg + 1)
        self._cost_ns = float(spent) if avg is None else avg + COST_SMOOTHING * (spent - avg)
        credit -= spent
        self._credit_ns = credit
        debt_s = -credit / budget / 1e9 if credit < 0 else 0.0
        self.current_interval = min(MAX_INTERVAL, max(self.interval, debt_s))
        self._report_interval()

    def _report_interval(self, force: bool = False) -> None:
        us = round(self.current_interval * 1e6)
        last = self._reported_us
        if force or abs(us - last) > last * REPORT_CHANGE:
            self._reported_us = us
            # live: re-recorded in every generation, so any snapshot knows the rate
            backend.set_live(_LIVE_KEY, Kind.COUNTER, _COUNTER_NAME, us)

    def _tick(self, me: int) -> None:
        """One SAMPLE per thread but this one: states and running tasks first, then the
        stacks of all threads, each frame let go of as soon as it is recorded. The thread
        that held the GIL at the tick, if read natively (``_held``: ident, native id,
        stack, time, its CPU clock then), has its SAMPLE take that stack, that time and the
        CPU it used up to then (recorded first, so the sampler's batch stays in time
        order): where it ran then, not where it let go of the GIL for us, maybe into a
        lock wait, milliseconds later (or, after a long C call holding the GIL, seconds).

        A frame object held here keeps the locals of a function that has returned alive
        (Python 3.11+): held across a GIL switch (I/O, the switch interval) it can keep a
        program's sqlite3 cursor open while its thread commits ("SQL statements in
        progress"). So nothing that can release the GIL runs while frames are held."""
        now = time.monotonic_ns()
        table = _thread_table()
        held, self._held = self._held, None
        if held is not None and not (held[4] and self._clock_ok):
            held = None  # no CPU reading of its own instant: sampled as the others
        held_tid = held[1] if held is not None else 0
        states = self._read_states(now, held_tid) if self._proc_ok else None
        if states is not None:
            if held is not None:  # its CPU up to the instant its stack was read
                states[held_tid] = self._state(held_tid, held[3], held[4])
            for ident in list(table):  # threads new since the last tick: read them now too
                tid = self._native_id(ident, table) if ident != me else 0
                if tid and tid not in states:
                    states[tid] = self._state(tid, now)
        seen: list[int] = []
        record = backend.record
        held_ident = held[0] if held is not None else -1
        # the running tasks when the frames are read: reading a thread state lets go of the
        # GIL (pread), and a task that began meanwhile was charged its predecessor's id.
        # Read on both sides of the frames; a thread whose task changed across says 0.
        before = self._running_tasks()
        frames = backend.current_frames()
        tasks = self._running_tasks()
        if tasks != before:
            tasks = {ident: task for ident, task in tasks.items() if before.get(ident) == task}
        alive = set(frames)
        if held is not None and held_ident not in frames and held[1]:
            # the holder ended before we got the GIL (a thread per request lives a few
            # ms): still where the GIL's time went. Its CPU is in its exit's SAMPLE, so
            # none here (cpu 0 over 1 ns: a measured sample that found it running)
            backend.record_at(held[3], _SAMPLE, held[1], 0, held[2], _HOLDING_GIL, 0, 1)
        try:
            while frames:
                if held_ident in frames:  # first: it is dated before the others
                    ident, frame = held_ident, frames.pop(held_ident)
                else:
                    ident, frame = frames.popitem()
                if ident == me or frame is None:
                    continue
                tid = self._native_id(ident, table)
                if not tid:
                    continue  # not a threading thread: no native id to file it under
                seen.append(tid)
                task = tasks.get(ident, 0) if tasks else 0
                state = states.get(tid) if states is not None else None
                if ident == held_ident and held is not None and held[1] == tid:
                    # where it ran at the tick, when it ran there
                    cpu = self._cpu_used(tid) if state is not None else (0, 0)
                    backend.record_at(held[3], _SAMPLE, tid, task, held[2], _HOLDING_GIL, *cpu)
                elif state is None:  # unknown, or a thread started since the states were read
                    record(_SAMPLE, tid, task, frame, _UNKNOWN, 0, 0)
                else:
                    record(_SAMPLE, tid, task, frame, state, *self._cpu_used(tid))
        finally:
            frame = None
            del frames, frame  # no frame outlives the tick
        if len(self._idents) > len(alive) + 16:
            self._idents = {i: e for i, e in self._idents.items() if i in alive}
        self.samples += len(seen)
        self._seen = seen
        self._last_tick_ns = now
        if len(self._procs) > len(seen):
            alive = set(seen)
            for tid in [t for t in self._procs if t not in alive]:
                self._close_proc(tid)

    def _native_id(self, ident: int, table: Mapping[int, Any]) -> int:
        """Native id of the thread with Python ident ``ident``; 0 if unknown."""
        entry = self._idents.get(ident)
        thread = table.get(ident)
        if entry is None or entry[0]() is not thread:  # new or reused ident
            native = getattr(thread, "native_id", None) if thread is not None else None
            try:
                ref: Callable[[], object] = weakref.ref(thread) if thread is not None else _none
            except TypeError:  # not weak-referenceable: do not cache it
                return native if isinstance(native, int) else 0
            entry = (ref, native if isinstance(native, int) else 0)
            if len(self._idents) > _MAX_IDENTS:  # threads come and go: forget the dead
                self._idents = {i: e for i, e in self._idents.items() if e[0]() is not None}
            self._idents[ident] = entry
        return entry[1]

    def _running_tasks(self) -> dict[int, int]:
        """Thread ident -> id of the asyncio task running on it (only threads running one)."""
        dicts = self._task_dicts
        if dicts is None:
            dicts = self._find_task_dicts()
            if not dicts:
                return {}
        out: dict[int, int] = {}
        for current in dicts:
            if current:
                for loop, task in list(current.items()):  # one C call: a consistent copy
                    ident = getattr(loop, "_thread_id", None)
                    if type(ident) is int and task is not None:
                        out[ident] = id(task)
        return out

    def _find_task_dicts(self) -> tuple[dict[Any, Any], ...]:
        """asyncio's loop -> running task dicts, once asyncio is fully imported.

        CPython 3.11-3.13 keep one in ``_asyncio`` (C tasks) that ``asyncio.tasks`` also
        binds as ``_current_tasks`` (pure-Python tasks use it too); both are looked at in
        case they differ. Newer versions keep the running task per thread: nothing is
        found, task ids are 0.
        """
        tasks_module = getattr(sys.modules.get("asyncio"), "tasks", None)  # set once imported
        if tasks_module is None:
            return ()  # asyncio not (fully) imported yet: no tasks, look again next tick
        found: list[dict[Any, Any]] = []
        for owner in (tasks_module, sys.modules.get("_asyncio")):
            current = getattr(owner, "_current_tasks", None)
            if isinstance(current, dict) and all(current is not d for d in found):
                found.append(current)
        self._task_dicts = tuple(found)
        return self._task_dicts

    # thread states -------------------------------------------------------------

    def _cpu_used(self, tid: int) -> tuple[int, int]:
        """(CPU ns, wall ns) of ``tid`` between its last two readings; (0, 0): unknown."""
        proc = self._procs.get(tid)
        return (proc.ran, proc.since) if proc is not None else (0, 0)

    def _read_states(self, now: int, skip: int = 0) -> dict[int, int]:
        return {tid: self._state(tid, now) for tid in self._seen if tid != skip}

    def _state(self, tid: int, now: int, cpu: int = 0) -> int:
        """ThreadState of ``tid`` (sampling thread only: uses and updates the open files);
        ``cpu``: its CPU clock read at ``now`` already (the native reader's), 0 = read it."""
        proc = self._procs.get(tid)
        if proc is None:
            proc = self._procs[tid] = _Proc(tid)
        if self._clock_ok:
            try:
                cpu = cpu or time.clock_gettime_ns(proc.clock)
            except OSError:
                proc.ran = proc.since = 0
                return _UNKNOWN  # the thread is gone
            ran, since = cpu - proc.cpu, now - proc.wall
            first = since == now
            proc.cpu, proc.wall = cpu, now
            if first:
                # Seen for the first time: it started since the previous tick (or before
                # the sampler did); charge no more than that tick's span.
                span = now - self._last_tick_ns if self._last_tick_ns else round(self.current_interval * 1e9)
                proc.ran, proc.since = min(ran, max(span, 0)), max(span, 0)
            else:
                proc.ran, proc.since = ran, since
            if not first:
                if ran >= BUSY_SHARE * since:
                    proc.state = _RUNNING
                    return _RUNNING
                if ran == 0 and proc.state not in (_UNKNOWN, _RUNNING):
                    return proc.state  # it has not run, so it still sleeps where it was
        proc.state = state = self._read_state(tid, proc)
        return state

    def _read_state(self, tid: int, proc: _Proc) -> int:
        if proc.fd < 0:
            if sum(1 for p in self._procs.values() if p.fd >= 0) >= MAX_OPEN_FILES:
                return _read_state_once(tid)
            try:
                proc.fd = os.open(_stat_path(tid), os.O_RDONLY)
            except OSError:
                return _UNKNOWN
        try:
            return _parse_state(os.pread(proc.fd, _STAT_BYTES, 0))
        except OSError:  # the thread ended (ESRCH): its tid may come back as a new thread
            self._close_proc(tid)
            return _UNKNOWN

    def _state_from_elsewhere(self, tid: int) -> int:
        """ThreadState of ``tid`` for a caller that is not the sampling thread."""
        if not self._proc_ok:
            return _UNKNOWN
        proc = self._procs.get(tid)
        if self._clock_ok and proc is not None and proc.wall:
            try:
                ran = time.clock_gettime_ns(proc.clock) - proc.cpu
            except OSError:
                return _UNKNOWN
            if ran >= BUSY_SHARE * (time.monotonic_ns() - proc.wall):
                return _RUNNING
            if ran == 0 and proc.state not in (_UNKNOWN, _RUNNING):
                return proc.state  # not RUNNING: a thread that used no CPU did not run
        return _read_state_once(tid)

    def _close_proc(self, tid: int) -> None:
        proc = self._procs.pop(tid, None)
        if proc is not None and proc.fd >= 0:
            fd, proc.fd = proc.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    def _close_files(self) -> None:
        while self._procs:
            try:
                tid = next(iter(self._procs))
            except (StopIteration, RuntimeError):
                continue
            self._close_proc(tid)

    # on demand -----------------------------------------------------------------

    def sample_thread_now(self, ident: int) -> bool:
        """Record one SAMPLE of the thread with Python ident ``ident`` now, from the caller.

        For other sources that need a stack at a precise moment (a loop-stall watchdog
        catching a blocked loop thread). True if a sample was recorded. Never raises.
        """
        return self._sample_now(ident, 2)

    def _sample_now(self, ident: int, depth: int) -> bool:
        """sample_thread_now; ``depth``: sys._getframe depth of the caller to sample when
        ``ident`` is the calling thread."""
        if not backend.is_enabled():
            return False
        try:
            tid = self._native_id(ident, _thread_table())
            if not tid:
                return False
            state = self._state_from_elsewhere(tid)
            if ident == threading.get_ident():
                frame: FrameType | None = sys._getframe(depth)
            else:
                frame = backend.current_frames().get(ident)
            if frame is None:
                return False
            task = self._running_tasks().get(ident, 0)
            backend.record(_SAMPLE, tid, task, frame, state, 0, 0)  # CPU: the next tick says
            del frame
            return True
        except Exception:
            return False


def sample_thread_now(ident: int) -> bool:
    """Record one SAMPLE of thread ``ident`` now, with the installed sampler's settings
    (or defaults if the sampler source is not running). True if recorded; never raises."""
    global _standby
    sampler = _installed
    if sampler is None:
        sampler = _standby
        if sampler is None:
            sampler = _standby = StackSampler()
    return sampler._sample_now(ident, 2)


#: Native id -> monotonic ns when a thread started while a sampler was installed (until
#: it ends): a thread that ends before any tick still reports the CPU it used.
_started: dict[int, int] = {}


def record_thread_start() -> None:
    """On a new thread, first thing: note when it started (see ``record_thread_exit``).
    Never raises."""
    if _installed is not None:
        try:
            _started[threading.get_native_id()] = time.monotonic_ns()
        except Exception:
            pass


def record_thread_exit() -> None:
    """On a thread about to end: one last SAMPLE with the CPU it used since the sampler's
    last look, or in its whole life if the sampler never looked (a thread per request
    lives a few ms: between ticks, or all of a run if the budget slowed the sampler).
    Lost otherwise. Its state is ZOMBIE, so the analysis charges that CPU where the thread
    (or, never seen running, a sibling) was seen running, not to the thread's exit code.
    Never raises."""
    sampler = _installed
    try:
        tid = threading.get_native_id()
        started = _started.pop(tid, 0)
        if sampler is None or not sampler._clock_ok or not backend.is_enabled():
            return
        now = time.monotonic_ns()
        proc = sampler._procs.get(tid)
        if proc is not None and proc.wall:
            cpu = time.clock_gettime_ns(proc.clock)
            ran, since = cpu - proc.cpu, now - proc.wall
            proc.cpu, proc.wall = cpu, now  # the sampler's next look (if any) starts here
        elif started:
            ran, since = time.thread_time_ns(), now - started  # its CPU clock began at 0
        else:
            return
        # the CPU clock began a little before ``started`` (the thread was made, then ran
        # Python), and clocks are read one after the other: it ran at least as long as it
        # used the CPU (a quiet machine: 30.157 ms of CPU in 30.142 ms)
        since = max(since, ran)
        if ran > 0 and since > 0:
            backend.record(_SAMPLE, tid, 0, sys._getframe(1), _ENDING, ran, since)
    except Exception:
        pass
