"""Automatic triggers: write the window when something goes wrong, without anyone asking.

Four things are watched, each optional:

- **slow request**: the framework integrations (``pyflight.integrations``) time every
  request and call :func:`request_finished`; one slower than ``slow_request`` seconds
  schedules a snapshot ``delay`` seconds after it finished, so the window holds all of it.
- **event-loop stall**: a step of an event loop running ``loop_stall`` seconds or more.
  When the asyncio source records, the trigger thread polls its table of running steps
  (``pyflight.sources.asyncio_loop.running_steps()``: every loop, no wake-ups) and writes
  once the step has ended, so the window holds all of it and the source's LOOP_STALL
  events. Without it (source off, uvloop), a heartbeat: for each watched loop (the one
  ``install()`` was called in, any loop an async integration serves a request on, or
  :meth:`Triggers.watch_loop`) a no-op callback is posted with ``call_soon_threadsafe``
  and its lateness measured. A loop still blocked after ``loop_hang`` seconds (default
  ``max(5 s, 10 * loop_stall)``) is captured while it hangs. Anything else that measures
  stalls can call :func:`report_loop_stall`.
- **unhandled exception**: ``sys.excepthook`` and ``threading.excepthook`` are chained
  (the previous hook still runs; removal restores it), and a request whose handler raised
  counts too. The dying thread waits (bounded) for the file, since the process may exit next.
- **GC pause**: a ``gc.callbacks`` entry times each collection.

Every snapshot is written by one background thread, never inside a GC callback, a signal
handler or the request itself, through ``snapshots.write_snapshot_file``: a name that says
when and why (``pyflight-<time>-<pid>-<reason>.pyfl``), a TRIGGER event with the reason
and detail inside the trace, and the directory quota (oldest pyflight files removed
first). Each trigger has its own cooldown and maximum count, so a storm of GC pauses
cannot use up the budget of the one unhandled exception.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from pyflight.core import backend
from pyflight.core.daemon import start_without_signals
from pyflight.errors import RecorderError, SnapshotInProgress
from pyflight.recorder import FlightRecorder, active_recorder
from pyflight.triggers import snapshots

__all__ = [
    "REASON_EXCEPTION",
    "REASON_GC_PAUSE",
    "REASON_LOOP_STALL",
    "REASON_SLOW_REQUEST",
    "Triggers",
    "add_arguments",
    "from_arguments",
    "installed",
    "report_loop_stall",
    "request_finished",
    "watch_running_loop",
]

REASON_SLOW_REQUEST = "slow-request"
REASON_LOOP_STALL = "loop-stall"
REASON_EXCEPTION = "exception"
REASON_GC_PAUSE = "gc-pause"

_log = logging.getLogger("pyflight")

#: Installed Triggers. Replaced (never mutated) under _installed_lock, so the hooks read
#: it without a lock: one tuple check is all a request pays when no trigger is installed.
_installed: tuple[Triggers, ...] = ()
_installed_lock = threading.Lock()
_fork_hook_registered = False

#: A snapshot that could not be written because another one was: retries, spaced by this.
_RETRIES = 5
_RETRY_SECONDS = 0.2


def installed() -> tuple[Triggers, ...]:
    """The Triggers currently installed in this process."""
    return _installed


def request_finished(name: str, seconds: float, error: BaseException | None = None) -> None:
    """Called by the integrations when a request ends; ``error`` if its handler raised."""
    for triggers in _installed:
        triggers._request_finished(name, seconds, error)


def watch_running_loop() -> None:
    """Called by the async integrations per request: watch the loop serving it for stalls."""
    if _installed:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for triggers in _installed:
            triggers.watch_loop(loop)


def report_loop_stall(seconds: float, detail: str = "") -> None:
    """For a source that measures stalls itself: an event loop was blocked ``seconds``."""
    for triggers in _installed:
        triggers._loop_stalled(seconds, detail)


class _Request(NamedTuple):
    reason: str
    detail: str
    due: float  # time.monotonic() at which to write
    done: threading.Event | None  # set when handled (written, dropped or failed)
    attempts: int


class _Watched:
    """Heartbeat state of one event loop; ``answered`` is written by the loop's thread."""

    __slots__ = ("answered", "hang_reported", "loop", "pong", "sent", "seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            ref: Callable[[], asyncio.AbstractEventLoop | None] = weakref.ref(loop)
        except TypeError:  # a loop type without weakref support: keep it until it closes
            ref = lambda: loop  # noqa: E731
        self.loop = ref
        self.seq = 0
        self.sent: float | None = None
        self.answered: float | None = None
        self.hang_reported = False

        def pong(seq: int, state: _Watched = self) -> None:
            if seq == state.seq:
                state.answered = time.perf_counter()

        self.pong = pong


class Triggers:
    """Writes a snapshot into ``directory`` when something goes wrong (see module docs).

    A threshold of None switches that trigger off. ``cooldown`` (seconds) and
    ``max_count`` apply to each trigger separately; ``quota_bytes`` caps the pyflight
    files in ``directory`` (None: no cap). The recorder must run when a trigger fires
    (``recorder``, or the active one); triggers fired with none running are dropped.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        slow_request: float | None = 0.5,
        loop_stall: float | None = 0.5,
        unhandled_exception: bool = True,
        gc_pause: float | None = 0.1,
        cooldown: float = 60.0,
        max_count: int = 10,
        quota_bytes: int | None = 100 * 2**20,
        delay: float = 0.2,
        recorder: FlightRecorder | None = None,
        on_snapshot: Callable[[Path, str, str], None] | None = None,
    ) -> None:
        for name, value in (
            ("slow_request", slow_request),
            ("loop_stall", loop_stall),
            ("gc_pause", gc_pause),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")
        if cooldown < 0 or delay < 0:
            raise ValueError("cooldown and delay must be >= 0")
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count!r}")
        if quota_bytes is not None and quota_bytes <= 0:
            raise ValueError(f"quota_bytes must be > 0 or None, got {quota_bytes!r}")
        self.directory = Path(directory)
        self.slow_request = slow_request
        self.loop_stall = loop_stall
        self.unhandled_exception = unhandled_exception
        self.gc_pause = gc_pause
        self.cooldown = cooldown
        self.max_count = max_count
        self.quota_bytes = quota_bytes
        self.delay = delay
        self.recorder = recorder
        self.on_snapshot = on_snapshot
        #: A loop blocked this long is captured while still blocked (a hang, not a stall).
        self.loop_hang = max(5.0, 10 * loop_stall) if loop_stall is not None else 0.0
        #: Files written, oldest first (some may since have been removed by the quota).
        self.written: list[Path] = []
        #: Snapshots admitted per reason, and those refused by cooldown or max_count.
        self.counts: dict[str, int] = {}
        self.suppressed: dict[str, int] = {}
        self._last: dict[str, float] = {}
        # Hooks only append here (deque.append is atomic and takes no lock, so a GC
        # callback can use it safely); the trigger thread is the only consumer.
        self._incoming: deque[_Request] = deque(maxlen=256)
        self._due: list[_Request] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False
        self._watched: dict[int, _Watched] = {}
        self._long_steps: dict[tuple[int, int, int], int] = {}  # (thread, start, task) -> ns seen
        self._hung: set[tuple[int, int, int]] = set()
        self._last_loop: Any = None
        self._gc_started = 0.0
        self._sys_hook: Callable[..., Any] | None = None
        self._prev_sys_hook: Callable[..., Any] | None = None
        self._thread_hook: Callable[..., Any] | None = None
        self._prev_thread_hook: Callable[..., Any] | None = None
        self._gc_hook: Callable[[str, dict[str, int]], None] | None = None
        self._warned: set[str] = set()

    # lifecycle -------------------------------------------------------------

    def install(self) -> Triggers:
        """Start watching. Also watches the running event loop, if called inside one."""
        global _installed
        if self._active:
            return self
        self._active = True
        self._stop.clear()
        self._start_thread()
        if self.unhandled_exception:
            self._prev_sys_hook, self._sys_hook = sys.excepthook, self._on_sys_exception
            sys.excepthook = self._sys_hook
            self._prev_thread_hook, self._thread_hook = threading.excepthook, self._on_thread_exception
            threading.excepthook = self._thread_hook
        if self.gc_pause is not None:
            self._gc_hook = self._on_gc
            gc.callbacks.append(self._gc_hook)
        with _installed_lock:
            _installed = (*_installed, self)
            _register_fork_hook()
        try:
            self.watch_loop(asyncio.get_running_loop())
        except RuntimeError:
            pass
        return self

    def uninstall(self) -> None:
        """Stop watching, restore the hooks, write snapshots already due, stop the thread."""
        global _installed
        if not self._active:
            return
        self._active = False
        with _installed_lock:
            _installed = tuple(t for t in _installed if t is not self)
        if self._sys_hook is not None:
            if sys.excepthook is self._sys_hook:  # else someone chained on top: ours passes through
                sys.excepthook = self._prev_sys_hook or sys.__excepthook__
            self._sys_hook = None
        if self._thread_hook is not None:
            if threading.excepthook is self._thread_hook:
                threading.excepthook = self._prev_thread_hook or threading.__excepthook__
            self._thread_hook = None
        if self._gc_hook is not None:
            for i, item in enumerate(gc.callbacks):
                if item is self._gc_hook:
                    del gc.callbacks[i]
                    break
            self._gc_hook = None
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None
        self._watched.clear()
        self._last_loop = None

    def __enter__(self) -> Triggers:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()

    # what can fire ---------------------------------------------------------

    def trigger(self, reason: str, detail: str = "", *, delay: float = 0.0) -> None:
        """Ask for a snapshot (subject to this reason's cooldown and max count)."""
        self._submit(reason, detail, delay)

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch ``loop`` for stalls (a no-op if the loop-stall trigger is off)."""
        if self.loop_stall is None or not self._active or loop is self._last_loop:
            return
        self._last_loop = loop
        key = id(loop)
        current = self._watched.get(key)
        if current is None or current.loop() is not loop:
            self._watched[key] = _Watched(loop)

    def _submit(self, reason: str, detail: str, delay: float, done: threading.Event | None = None) -> None:
        if not self._active:
            if done is not None:
                done.set()
            return
        self._incoming.append(_Request(reason, detail, time.monotonic() + delay, done, 0))
        self._wake.set()

    def _request_finished(self, name: str, seconds: float, error: BaseException | None) -> None:
        if error is not None and self.unhandled_exception and isinstance(error, Exception):
            self._submit(REASON_EXCEPTION, f"{name}: {_describe_exception(error)}", 0.0)
        if self.slow_request is not None and seconds >= self.slow_request:
            self._submit(REASON_SLOW_REQUEST, f"{name} took {seconds:.3f} s", self.delay)

    def _loop_stalled(self, seconds: float, detail: str) -> None:
        if self.loop_stall is not None and seconds >= self.loop_stall:
            self._submit(REASON_LOOP_STALL, detail or f"event loop blocked for {seconds:.3f} s", 0.0)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Inside a collection: no locks (the collecting thread may hold any), just a clock
        # read and, rarely, a lock-free append that the trigger thread picks up on its tick.
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        started, self._gc_started = self._gc_started, 0.0
        if started and self.gc_pause is not None and self._active:
            pause = time.perf_counter() - started
            if pause >= self.gc_pause:
                detail = f"generation {info.get('generation')} collection took {pause * 1000:.1f} ms"
                self._incoming.append(_Request(REASON_GC_PAUSE, detail, time.monotonic(), None, 0))

    def _on_sys_exception(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        self._exception(exc, "main thread", self._prev_sys_hook or sys.__excepthook__, (exc_type, exc, tb))

    def _on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        where = f"thread {args.thread.name!r}" if args.thread is not None else "a thread"
        previous = self._prev_thread_hook or threading.__excepthook__
        self._exception(args.exc_value, where, previous, (args,))

    def _exception(
        self, exc: BaseException | None, where: str, previous: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        done: threading.Event | None = None
        wanted = self._active and isinstance(exc, Exception)  # not KeyboardInterrupt, SystemExit
        if wanted:
            done = threading.Event()
            self._submit(REASON_EXCEPTION, f"unhandled in {where}: {_describe_exception(exc)}", 0.0, done)
        try:
            previous(*args)
        finally:
            # The process may exit as soon as this hook returns: wait (bounded) for the file.
            if done is not None and threading.current_thread() is not self._thread:
                done.wait(10.0)

    # the trigger thread ----------------------------------------------------

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pyflight-triggers", daemon=True)
        start_without_signals(self._thread)

    def _poll_seconds(self) -> float:
        # Often enough for GC requests (which cannot wake us) and heartbeats, rarely
        # enough to cost nothing: a stall threshold of 0.5 s means pings every 0.1 s.
        poll = 0.25
        if self.loop_stall is not None:
            poll = min(poll, max(0.02, self.loop_stall / 5))
        if self.gc_pause is not None:
            poll = min(poll, 0.1)
        return poll

    def _run(self) -> None:
        poll = self._poll_seconds()
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(poll)
                self._wake.clear()
            try:
                now = time.monotonic()
                while self._incoming:
                    self._admit(self._incoming.popleft(), now)
                if not stopping and self.loop_stall is not None:
                    self._check_stalls()
                self._write_due(time.monotonic(), flush=stopping or self._stop.is_set())
            except Exception as exc:  # the trigger thread must not die
                self._warn_once("thread", f"pyflight: trigger thread error: {exc!r}")
            if stopping:
                return

    def _admit(self, request: _Request, now: float) -> None:
        reason = request.reason
        last = self._last.get(reason)
        if self.counts.get(reason, 0) >= self.max_count or (last is not None and now - last < self.cooldown):
            self.suppressed[reason] = self.suppressed.get(reason, 0) + 1
            if request.done is not None:
                request.done.set()
            return
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._last[reason] = now
        self._due.append(request)

    def _write_due(self, now: float, flush: bool) -> None:
        due = [r for r in self._due if flush or r.due <= now]
        if not due:
            return
        self._due = [r for r in self._due if not (flush or r.due <= now)]
        for request in sorted(due, key=lambda r: r.due):
            retry = self._write(request)
            if retry and not flush:
                self._due.append(request._replace(due=now + _RETRY_SECONDS, attempts=request.attempts + 1))
            elif request.done is not None:
                request.done.set()

    def _write(self, request: _Request) -> bool:
        """Write one snapshot; True if it should be retried."""
        try:
            path = snapshots.write_snapshot_file(
                self.directory,
                request.reason,
                detail=request.detail,
                recorder=self.recorder,
                quota_bytes=self.quota_bytes,
            )
        except SnapshotInProgress:
            return request.attempts + 1 < _RETRIES
        except RecorderError as exc:
            self._warn_once("recorder", f"pyflight: trigger {request.reason!r} fired but {exc}")
            return False
        except OSError as exc:
            self._warn_once("oserror", f"pyflight: could not write a snapshot into {self.directory}: {exc}")
            return False
        self.written.append(path)
        _log.warning("pyflight: %s (%s): wrote %s", request.reason, request.detail, path)
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(path, request.reason, request.detail)
            except Exception as exc:
                self._warn_once("callback", f"pyflight: on_snapshot callback failed: {exc!r}")
        return False

    def _check_stalls(self) -> None:
        for key, state in list(self._watched.items()):
            loop = state.loop()
            if loop is None or loop.is_closed():
                del self._watched[key]
                if self._last_loop is loop:
                    self._last_loop = None
        steps = self._asyncio_steps()
        if steps is None:
            self._check_heartbeats()
        else:
            self._check_steps(steps)

    def _asyncio_steps(self) -> list[tuple[int, int, int, int]] | None:
        """The asyncio source's running steps, or None when that source is not recording."""
        recorder = self.recorder if self.recorder is not None else active_recorder()
        if recorder is None or not recorder.enabled:
            return None
        for source in recorder.sources:
            if source.name == "asyncio" and source.installed and source.disabled_reason is None:
                module = sys.modules.get(type(source).__module__)
                running_steps = getattr(module, "running_steps", None)
                if running_steps is not None:
                    steps: list[tuple[int, int, int, int]] = running_steps()
                    return steps
        return None

    def _check_steps(self, steps: list[tuple[int, int, int, int]]) -> None:
        """Stalls from the asyncio source's table of running steps: no wake-ups, every loop."""
        assert self.loop_stall is not None
        threshold, hang = int(self.loop_stall * 1e9), int(self.loop_hang * 1e9)
        now = backend.now()
        current = {}
        for _ident, _loop_id, task_id, start in steps:
            duration = now - start
            if duration >= threshold:
                key = (_ident, start, task_id)
                current[key] = duration
                if duration >= hang and key not in self._hung:
                    self._hung.add(key)
                    self._admit(self._hang_request(duration / 1e9, task_id), time.monotonic())
        for key, seen in self._long_steps.items():
            if key not in current and key not in self._hung:  # it ended: the window now holds all of it
                detail = f"event loop blocked for at least {seen / 1e9:.3f} s{_by(key[2])}"
                self._admit(_Request(REASON_LOOP_STALL, detail, time.monotonic(), None, 0), time.monotonic())
        self._long_steps = current
        self._hung &= current.keys()

    def _check_heartbeats(self) -> None:
        """Stalls of the watched loops from how late a posted no-op callback runs."""
        assert self.loop_stall is not None
        threshold, hang = self.loop_stall, self.loop_hang
        interval = self._poll_seconds()
        for key, state in list(self._watched.items()):
            loop = state.loop()
            if loop is None:
                continue
            now = time.perf_counter()
            if state.sent is not None:
                if state.answered is None:
                    if not loop.is_running():  # stopped between runs: not a stall
                        state.sent = None
                    elif now - state.sent >= hang and not state.hang_reported:
                        state.hang_reported = True
                        self._admit(self._hang_request(now - state.sent), time.monotonic())
                    continue
                lag = state.answered - state.sent
                if lag >= threshold and not state.hang_reported:
                    detail = f"event loop blocked for at least {lag:.3f} s"
                    self._admit(
                        _Request(REASON_LOOP_STALL, detail, time.monotonic(), None, 0), time.monotonic()
                    )
                state.sent = None
            if state.sent is None and loop.is_running() and now - (state.answered or 0.0) >= interval:
                state.seq += 1
                state.answered = None
                state.hang_reported = False
                state.sent = time.perf_counter()
                try:
                    loop.call_soon_threadsafe(state.pong, state.seq)
                except RuntimeError:  # closed meanwhile
                    del self._watched[key]

    @staticmethod
    def _hang_request(seconds: float, task_id: int | None = None) -> _Request:
        detail = f"event loop blocked for {seconds:.3f} s so far (still blocked){_by(task_id)}"
        return _Request(REASON_LOOP_STALL, detail, time.monotonic(), None, 0)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message)

    def _after_fork_in_child(self) -> None:
        """The trigger thread did not survive the fork: start a fresh one for the child."""
        self._incoming.clear()
        self._due = []
        self._watched.clear()
        self._last_loop = None
        self._wake = threading.Event()
        self._start_thread()


def _by(task_id: int | None) -> str:
    if task_id is None:
        return ""
    return f" by a step of asyncio task {task_id:#x}" if task_id else " by a callback"


def _describe_exception(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown exception"
    text = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:  # where it was raised; no source lines read (this runs in the request)
        code = tb.tb_frame.f_code
        text += f" (at {code.co_qualname} in {code.co_filename}:{tb.tb_lineno})"
    return text[:500]


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True


def _after_fork_in_child() -> None:
    global _installed_lock
    _installed_lock = threading.Lock()
    for triggers in _installed:
        try:
            triggers._after_fork_in_child()
        except Exception:
            pass


# command line ----------------------------------------------------------------


def add_arguments(group: argparse._ActionsContainer) -> None:
    """Add the trigger options to a command (``pyflight run``); each one enables its trigger.

    Where the files go and the quota come from the command's own ``--snapshot-dir`` and
    ``--quota``, shared with the signal trigger.
    """
    group.add_argument(
        "--slow-request", type=float, metavar="S", help="snapshot after a request slower than S"
    )
    group.add_argument("--loop-stall", type=float, metavar="S", help="snapshot after an event loop blocked S")
    group.add_argument("--gc-pause", type=float, metavar="S", help="snapshot after a GC pause longer than S")
    group.add_argument(
        "--on-exception",
        action="store_true",
        help="snapshot on an unhandled exception in a thread or request",
    )
    group.add_argument(
        "--trigger-cooldown", type=float, metavar="S", default=60.0, help="per trigger (default 60)"
    )
    group.add_argument(
        "--trigger-max", type=int, metavar="N", default=10, help="snapshots per trigger (default 10)"
    )


def from_arguments(
    args: argparse.Namespace, directory: str | os.PathLike[str], quota_bytes: int | None = None
) -> Triggers | None:
    """The Triggers the options of :func:`add_arguments` ask for (not installed), or None."""
    slow: float | None = getattr(args, "slow_request", None)
    stall: float | None = getattr(args, "loop_stall", None)
    pause: float | None = getattr(args, "gc_pause", None)
    on_exception = bool(getattr(args, "on_exception", False))
    if not on_exception and slow is None and stall is None and pause is None:
        return None
    return Triggers(
        directory,
        slow_request=slow,
        loop_stall=stall,
        gc_pause=pause,
        unhandled_exception=on_exception,
        cooldown=args.trigger_cooldown,
        max_count=args.trigger_max,
        quota_bytes=quota_bytes,
    )
