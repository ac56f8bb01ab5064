"""FlightRecorder: the lifecycle of the in-memory window and writing it to a file.

Semantics follow Go's runtime/trace.FlightRecorder: the ring keeps at least the last
``min_age`` seconds unless that needs more than ``max_bytes``; ``max_bytes`` wins.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import IO, Any

from pyflight import __version__
from pyflight._redact import redact_argv as redacted_argv
from pyflight.budget import CHECK_SECONDS, CpuBudget
from pyflight.core import BACKEND_NAME, backend, periodic
from pyflight.core.daemon import start_deferred
from pyflight.core.events import Kind, arg_counts
from pyflight.errors import RecorderError, SnapshotInProgress
from pyflight.format.writer import encode_header, write_file_atomically, write_stream
from pyflight.sources import REGISTRY, Source, SourceWarning, default_source_names

#: The ticker seals due generations and ages old ones out even when nothing records.
TICK_SECONDS = 0.1
#: Every this many ticks the ticker re-reads the thread table (names, ended threads).
THREAD_REFRESH_TICKS = 10
MIN_MAX_BYTES = 64 * 1024
BUDGET_CHECK_TICKS = max(1, round(CHECK_SECONDS / TICK_SECONDS))

_active_lock = threading.Lock()
_active: FlightRecorder | None = None
_fork_hook_installed = False


def active_recorder() -> FlightRecorder | None:
    """The running recorder of this process, if any."""
    return _active


def _default_generation_interval(min_age: float) -> float:
    # Generations are dropped whole, so a snapshot spans up to min_age + one interval.
    return min(1.0, max(0.01, min_age / 4))


def _default_generation_bytes(max_bytes: int) -> int:
    # Eight or more generations in a full ring: a snapshot overshoots by at most 1/8.
    # Capped at 1 MiB: sealing happens on a recording thread and must stay ~1 ms.
    return max(16 * 1024, min(2**20, max_bytes // 8))


class FlightRecorder:
    """Keeps a bounded, always-current window of events; ``write_to`` saves it.

    Memory bound: the ring holds at most ``max_bytes``; the open generation at most
    ``generation_bytes`` (plus one event). A snapshot is therefore at most
    ``max_bytes + generation_bytes`` plus its header.
    """

    def __init__(
        self,
        min_age: float = 10.0,
        max_bytes: int = 10 * 2**20,
        *,
        generation_interval: float | None = None,
        generation_bytes: int | None = None,
        max_stack_depth: int = 128,
        sources: Iterable[str] | None = None,
        source_options: Mapping[str, Mapping[str, Any]] | None = None,
        redact_argv: bool = True,
        cpu_budget: float | None = 0.01,
    ) -> None:
        if not min_age > 0:
            raise ValueError(f"min_age must be > 0 seconds, got {min_age!r}")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}, got {max_bytes!r}")
        self.min_age = float(min_age)
        self.max_bytes = int(max_bytes)
        self.generation_interval = (
            _default_generation_interval(self.min_age) if generation_interval is None else generation_interval
        )
        self.generation_bytes = (
            _default_generation_bytes(self.max_bytes) if generation_bytes is None else int(generation_bytes)
        )
        if not 0 < self.generation_bytes <= self.max_bytes:
            raise ValueError("generation_bytes must be > 0 and <= max_bytes")
        if not self.generation_interval > 0:
            raise ValueError("generation_interval must be > 0")
        self.max_stack_depth = max_stack_depth
        self.source_names = default_source_names() if sources is None else list(sources)
        unknown = [name for name in self.source_names if name not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; available: {sorted(REGISTRY)}")
        self.source_options = {name: dict(opts) for name, opts in (source_options or {}).items()}
        #: Hide secret-looking arguments (``--password=...``) in the trace's argv.
        self.redact_argv = redact_argv
        if cpu_budget is not None and not 0 < cpu_budget <= 1:
            raise ValueError(
                f"cpu_budget must be > 0 and <= 1 (a share of the process's CPU), got {cpu_budget!r}"
            )
        #: Share of the process's CPU the recorder may cost before it sheds detail (None: no cap).
        self.cpu_budget = cpu_budget
        self.budget: CpuBudget | None = None
        self.sources: list[Source] = []
        self._running = False
        self._snapshot_lock = threading.Lock()
        self._ticker: periodic.Job | None = None
        self._ticks = 0
        self._tick_failures = 0
        self._snapshots_taken = 0
        self._started_ns = 0
        self._named_threads: set[int] = set()

    # lifecycle -------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True while recording."""
        return self._running

    def start(self) -> FlightRecorder:
        global _active
        with _active_lock:
            if self._running:
                raise RecorderError("this FlightRecorder is already started")
            if _active is not None:
                raise RecorderError("another FlightRecorder is already running in this process")
            backend.configure(
                arg_counts(),
                max_bytes=self.max_bytes,
                min_age_ns=int(self.min_age * 1e9),
                gen_max_bytes=self.generation_bytes,
                gen_interval_ns=int(self.generation_interval * 1e9),
                max_stack_depth=self.max_stack_depth,
            )
            backend.start()
            _install_fork_hook()
            self._running = True
            self._named_threads = set()
            self._started_ns = backend.now()
            _active = self
        self._register_threads()
        self._install_sources()
        self.budget = None if self.cpu_budget is None else CpuBudget(self.cpu_budget, self.sources)
        self._ticks = self._tick_failures = 0
        self._ticker = periodic.every(TICK_SECONDS, self._tick, self._tick_failed)
        return self

    def stop(self) -> None:
        """Stop recording and drop the window. A no-op if not running."""
        global _active
        start_deferred()  # threads queued in a forked child: started, so they can be joined
        with _active_lock:
            if not self._running:
                return
            self._running = False
            _active = None
            if self.budget is not None:
                self.budget.restore_all()
            self._uninstall_sources()
            backend.stop()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            periodic.cancel(ticker)  # the last job: its thread is joined (unless it is this one)

    def __enter__(self) -> FlightRecorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # snapshots -------------------------------------------------------------

    def write_to(self, file_or_path: str | os.PathLike[str] | IO[bytes], *, reason: str = "api") -> int:
        """Write the current window; recording goes on. Returns the number of bytes written.

        A path is written atomically (temporary file + rename, mode 0600); a file
        object gets the bytes at its current position.
        """
        if not self._snapshot_lock.acquire(blocking=False):
            raise SnapshotInProgress("a snapshot of this recorder is already being written")
        try:
            if not self._running:
                raise RecorderError("the recorder is not running: start() it before write_to()")
            self._register_threads()  # names as they are now
            try:
                generations = backend.snapshot()
            except RuntimeError as exc:  # stopped by another thread meanwhile
                raise RecorderError(f"the recorder stopped during write_to(): {exc}") from None
            header = encode_header(self._metadata(reason))
            if isinstance(file_or_path, (str, os.PathLike)):
                written = write_file_atomically(file_or_path, header, generations)
            else:
                written = write_stream(file_or_path, header, generations)
            self._snapshots_taken += 1
            return written
        finally:
            self._snapshot_lock.release()

    def stats(self) -> dict[str, Any]:
        """Window statistics (bytes held, generations, events, data loss)."""
        info: dict[str, Any] = dict(backend.stats()) if self._running else {"enabled": False}
        info.update(
            core=BACKEND_NAME,
            min_age=self.min_age,
            max_bytes=self.max_bytes,
            generation_bytes=self.generation_bytes,
            snapshots=self._snapshots_taken,
        )
        if self.budget is not None:
            info["budget"] = self.budget.status()
        return info

    # internals -------------------------------------------------------------

    def _metadata(self, reason: str) -> dict[str, str]:
        import json  # at a snapshot, not at import: fewer objects for the program's GC

        mono, wall = backend.now(), time.time_ns()
        stats = backend.stats()
        return {
            "pyflight.version": __version__,
            "core": BACKEND_NAME,
            "pid": str(os.getpid()),
            "python": sys.version.replace("\n", " "),
            "platform": sys.platform,
            "argv": json.dumps(redacted_argv(sys.argv) if self.redact_argv else sys.argv),
            "clock": "monotonic",
            "clock.monotonic_ns": str(mono),
            "clock.wall_ns": str(wall),
            "min_age_ns": str(int(self.min_age * 1e9)),
            "max_bytes": str(self.max_bytes),
            "recording_since_ns": str(self._started_ns),
            "snapshot_ns": str(mono),
            "reason": reason,
            "dropped_events": str(stats.get("dropped_events", 0)),
            "sources": json.dumps([source.name for source in self.sources]),
            **{k: v for source in self.sources for k, v in source.metadata().items()},
            **self._budget_metadata(),
        }

    def _budget_metadata(self) -> dict[str, str]:
        """What the recorder cost and what it shed, for ``pyflight info``."""
        if self.budget is None:
            return {}
        import json

        status = self.budget.status()
        return {
            "budget.cpu_budget": str(status["cpu_budget"]),
            "budget.cost": f"{status['cost']:.6f}",
            "budget.recorder_threads_cpu_s": f"{status['recorder_threads_cpu_s']:.6f}",
            "budget.recorder_threads": json.dumps(
                {name: round(cpu, 6) for name, cpu in status["recorder_threads"].items()}
            ),
            "budget.hooks_cpu_s_estimated": f"{status['hooks_cpu_s_estimated']:.6f}",
            "budget.process_cpu_s": f"{status['process_cpu_s']:.6f}",
            "budget.shed": json.dumps(status["shed"]),
            "budget.periods_over_budget": str(status["periods_over_budget"]),
        }

    def _install_sources(self) -> None:
        self.sources = []
        for name in self.source_names:
            source = REGISTRY[name](**self.source_options.get(name, {}))
            try:
                source.install()
            except Exception as exc:
                reason = f"could not be installed: {type(exc).__name__}: {exc}"
                backend.record(Kind.SOURCE_DISABLED, name, reason)
                warnings.warn(f"pyflight: source {name!r} {reason}", SourceWarning, stacklevel=3)
                continue
            self.sources.append(source)

    def _uninstall_sources(self) -> None:
        for source in reversed(self.sources):
            try:
                source.uninstall()
            except Exception as exc:
                warnings.warn(
                    f"pyflight: removing source {source.name!r} failed: {exc!r}", SourceWarning, stacklevel=3
                )
        self.sources = []

    def _register_threads(self) -> None:
        """Name every live thread in each generation (threads started before start() too),
        and stop naming the ones that ended."""
        alive = set()
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None:
                continue
            alive.add(tid)
            backend.set_live(("thread", tid), Kind.THREAD_INFO, tid, thread.name, thread.ident or 0)
        for tid in self._named_threads - alive:
            backend.clear_live(("thread", tid))
        self._named_threads = alive

    def _tick(self) -> None:
        """Every TICK_SECONDS on the shared thread (core/periodic.py): seal a generation
        when due, name new threads, judge the CPU budget."""
        self._ticks += 1
        ticks = self._ticks
        try:
            if ticks % THREAD_REFRESH_TICKS == 0:
                self._register_threads()
            budget = self.budget
            if budget is not None and ticks % BUDGET_CHECK_TICKS == 0:
                budget.check()
            backend.maybe_seal()
        except Exception as exc:  # never let the ticks stop
            self._tick_failed(exc)

    def _tick_failed(self, exc: BaseException) -> None:
        self._tick_failures += 1
        if self._tick_failures == 1:
            warnings.warn(f"pyflight: sealing a generation failed: {exc!r}", RuntimeWarning, stacklevel=1)


def _install_fork_hook() -> None:
    global _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_installed = True


def _after_fork_in_child() -> None:
    """A forked child must not inherit the parent's half-used buffers or its ticker."""
    global _active, _active_lock
    _active_lock = threading.Lock()
    recorder = _active
    _active = None
    backend._after_fork_child()
    if recorder is not None:
        for source in recorder.sources:
            try:
                source.after_fork_in_child()  # locks a vanished parent thread may hold
            except Exception:
                pass
        try:
            recorder._uninstall_sources()  # hooks would record nothing; the sampler thread is gone
        except Exception:
            pass
        recorder._running = False
        recorder._ticker = None
        recorder._snapshot_lock = threading.Lock()
