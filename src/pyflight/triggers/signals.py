"""Snapshots on a signal (SIGUSR2 by default), written by a thread, never in the handler.

A Python signal handler runs on the main thread between two bytecodes, possibly while
that thread holds a lock the snapshot needs (``threading``'s own, a file's); writing
there could deadlock the program. So the handler only hands a job to a daemon thread
started beforehand (``queue.SimpleQueue.put`` is safe in a signal handler).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pyflight.core.daemon import is_deferred, start_without_signals
from pyflight.errors import SnapshotInProgress
from pyflight.recorder import FlightRecorder
from pyflight.triggers.signal_watch import HandlerWatch
from pyflight.triggers.snapshots import write_snapshot_file

DEFAULT_SIGNAL = signal.SIGUSR2
REASON = "signal"
#: How long a signal snapshot waits for the workers' snapshots, all together.
WORKERS_TIMEOUT_S = 30.0

_Job = Callable[[], None]


def say(message: str) -> None:
    """One line on stderr; never raises (stderr may be closed)."""
    try:
        sys.stderr.write(f"pyflight: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def parse_signal(text: str | int) -> int:
    """``USR2``, ``SIGUSR2`` or ``12`` -> the signal number; ValueError if there is none."""
    if isinstance(text, int):
        return int(signal.Signals(text))
    name = text.strip().upper()
    if name.isdigit():
        return int(signal.Signals(int(name)))
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None


class _Writer:
    """One daemon thread per process that runs jobs handed over by signal handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._jobs: queue.SimpleQueue[tuple[_Job, queue.SimpleQueue[bool]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        """Start the thread (again, in a forked child). Call this outside signal handlers."""
        with self._lock:
            thread = self._thread
            if self._pid == os.getpid() and thread is not None and (thread.is_alive() or is_deferred(thread)):
                return  # running, or queued to start in a moment (a forked child)
            self._jobs = queue.SimpleQueue()
            self._pid = os.getpid()
            thread = threading.Thread(
                target=self._run, args=(self._jobs,), name="pyflight-writer", daemon=True
            )
            start_without_signals(thread)
            self._thread = thread

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._thread = None

    def alive(self) -> bool:
        thread = self._thread
        return self._pid == os.getpid() and thread is not None and thread.is_alive()

    def submit(self, job: _Job) -> queue.SimpleQueue[bool]:
        """Queue ``job`` (safe in a signal handler); the returned queue gets True when done.

        Without a running thread (not started in this process) the job runs right here.
        """
        done: queue.SimpleQueue[bool] = queue.SimpleQueue()
        if self.alive():
            self._jobs.put((job, done))
        else:
            _run_job(job)
            done.put(True)
        return done

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[_Job, queue.SimpleQueue[bool]]]) -> None:
        while True:
            job, done = jobs.get()
            _run_job(job)
            done.put(True)


def _run_job(job: _Job) -> None:
    try:
        job()
    except BaseException as exc:  # the writer thread must survive anything a job does
        say(f"snapshot job failed: {type(exc).__name__}: {exc}")


#: The process's writer thread, shared by signal triggers and ``pyflight run``'s SIGTERM.
writer = _Writer()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=writer._after_fork_in_child)


def run_off_handler(job: _Job, timeout: float) -> bool:
    """Run ``job`` on the writer thread and wait up to ``timeout`` s; True if it finished.

    For handlers that must finish the job before going on (SIGTERM: write, then die).
    """
    done = writer.submit(job)
    try:
        return done.get(timeout=timeout)
    except queue.Empty:
        return False


class SignalTrigger:
    """A signal handler that writes a snapshot into ``directory`` on each signal.

    Signals that arrive while a snapshot is still pending are coalesced into it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        signum: int = DEFAULT_SIGNAL,
        quota_bytes: int | None = None,
        recorder: FlightRecorder | None = None,
        workers: bool = False,
    ) -> None:
        self.directory = Path(directory)
        #: Also ask every recorded process below this one (a pre-fork server's workers).
        self.workers = workers
        self.signum = parse_signal(signum)
        self.quota_bytes = quota_bytes
        self.recorder = recorder
        self.last_path: Path | None = None
        self._pending = False
        self._previous: Any = None
        self._installed = False
        #: Told when the handler starts, so it can chase arrivals the main thread did not
        #: take (``pyflight run`` sets it; signal_watch.py).
        self.watch: HandlerWatch | None = None
        self._served_off_main = False

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def install(self) -> SignalTrigger:
        """Set the handler (main thread only, like ``signal.signal``)."""
        writer.ensure_started()
        self._previous = signal.signal(self.signum, self._handle)
        self._installed = True
        return self

    def uninstall(self) -> None:
        """Put back the handler found at install time, if ours is still the one set."""
        if self._installed and signal.getsignal(self.signum) == self._handle:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        watch = self.watch
        if watch is not None:
            watch.started(signum)
        if self._served_off_main:  # that arrival, written already (handle_off_main)
            self._served_off_main = False
            return
        self._submit()

    def _submit(self) -> None:
        if self._pending:
            return
        self._pending = True
        writer.submit(self._write)

    def handle_off_main(self, signum: int) -> None:
        """The signal came but the main thread could not run the handler (the watch
        nudged it in vain): hand the write over from here."""
        say(f"{self.signal_name}: the main thread is blocked; writing the snapshot from another thread")
        # CPython still runs the handler once the main thread gets back to Python code:
        # that run is for the arrivals written here
        self._served_off_main = True
        self._submit()

    def _write(self) -> None:
        self._pending = False
        try:
            self.last_path = write_snapshot_file(
                self.directory,
                REASON,
                detail=self.signal_name,
                recorder=self.recorder,
                quota_bytes=self.quota_bytes,
            )
        except SnapshotInProgress:
            say(f"{self.signal_name}: a snapshot is already being written; this one is skipped")
        except Exception as exc:
            say(f"{self.signal_name}: could not write a snapshot to {self.directory}: {exc}")
        else:
            say(f"{self.signal_name}: wrote {self.last_path}")
        if self.workers:
            self._write_workers()

    def _write_workers(self) -> None:
        """The workers' snapshots beside ours, ``pyflight-<time>-<worker pid>-signal.pyfl``."""
        from pyflight.triggers import workers
        from pyflight.triggers.control import write_private_file
        from pyflight.triggers.snapshots import enforce_quota, snapshot_filename

        try:
            for snapshot in workers.gather(workers.recorded_descendants(), timeout=WORKERS_TIMEOUT_S):
                if snapshot.data is None:
                    say(f"{self.signal_name}: no snapshot from worker {snapshot.pid}: {snapshot.error}")
                    continue
                path = self.directory / snapshot_filename(REASON, pid=snapshot.pid)
                write_private_file(path, snapshot.data)
                if self.quota_bytes is not None:
                    enforce_quota(self.directory, self.quota_bytes, keep=path)
                say(f"{self.signal_name}: wrote {path}")
        except Exception as exc:
            say(f"{self.signal_name}: could not write the workers' snapshots: {exc}")


_installed: dict[int, SignalTrigger] = {}


def install(
    directory: str | os.PathLike[str],
    signum: int | str = DEFAULT_SIGNAL,
    quota_bytes: int | None = None,
    *,
    recorder: FlightRecorder | None = None,
    workers: bool = False,
) -> SignalTrigger:
    """On ``signum``, write a snapshot of ``recorder`` (default: the running one) into
    ``directory`` as ``pyflight-<time>-<pid>-signal.pyfl``; with ``quota_bytes``, the
    oldest pyflight files there are removed to fit. Replaces an earlier install for the
    same signal. With ``workers``, every recorded process below this one (a pre-fork
    server's workers) is asked for its snapshot too, written beside it under its own pid.
    Call from the main thread."""
    number = parse_signal(signum)
    old = _installed.pop(number, None)
    if old is not None:
        old.uninstall()
    trigger = SignalTrigger(directory, number, quota_bytes, recorder, workers).install()
    _installed[number] = trigger
    return trigger


def installed(signum: int | str = DEFAULT_SIGNAL) -> SignalTrigger | None:
    """The trigger installed for ``signum``, if any."""
    return _installed.get(parse_signal(signum))


def uninstall(signum: int | str = DEFAULT_SIGNAL) -> None:
    """Remove the trigger for ``signum`` (restoring the previous handler)."""
    trigger = _installed.pop(parse_signal(signum), None)
    if trigger is not None:
        trigger.uninstall()
