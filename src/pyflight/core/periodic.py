"""One thread of our own for the recorder's periodic work ("pyflight-ticker").

The recorder seals generations and renames threads ten times a second, and the metrics
source samples its counters at the same rate. Each used to own a thread, and on a VM a
thread's wake-up costs 40-75 us of CPU plus a GIL hand-off that interrupts the program:
two threads waking in step paid that twice for work that takes less. Jobs scheduled here
share one thread and, at equal periods, one wake-up.

The thread starts with the first job and ends with the last one (a stopped recorder
leaves no thread behind). Its waits are on a raw ``_thread`` lock, which no source
records (see ``daemon.QuietEvent``).
"""

from __future__ import annotations

import _thread
import os
import threading
import time
from collections.abc import Callable

from pyflight.core.daemon import start_without_signals

THREAD_NAME = "pyflight-ticker"
#: How long ``cancel`` waits for a job running on the thread to return.
CANCEL_TIMEOUT = 5.0


#: What a job calls when it raises.
OnError = Callable[[BaseException], object]


class Job:
    """A function called every ``interval`` seconds on the shared thread until cancelled.

    If it raises, ``on_error(exc)`` is called (on the shared thread) and the job is
    dropped: a failing job never stops the others."""

    __slots__ = ("due", "function", "interval", "on_error")

    def __init__(self, interval: float, function: Callable[[], object], on_error: OnError) -> None:
        self.interval = interval
        self.function = function
        self.on_error = on_error
        self.due = time.monotonic() + interval


class _Scheduler:
    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()  # guards jobs and thread
        self.running = _thread.allocate_lock()  # held while a job runs
        self.wake = _thread.allocate_lock()  # released to cut the thread's wait short
        self.wake.acquire()
        self.jobs: list[Job] = []
        self.thread: threading.Thread | None = None

    def every(self, interval: float, function: Callable[[], object], on_error: OnError) -> Job:
        job = Job(interval, function, on_error)
        with self.lock:
            for other in self.jobs:
                if other.interval == interval:  # in step with it: one wake-up for both
                    job.due = other.due
                    break
            self.jobs.append(job)
            new = None
            if self.thread is None:
                new = self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        if new is not None:
            start_without_signals(new)
        else:
            self._wake()  # its wait may be longer than this job's first period
        return job

    def cancel(self, job: Job) -> None:
        with self.lock:
            try:
                self.jobs.remove(job)
            except ValueError:
                return  # cancelled already, or scheduled before a fork
            last = not self.jobs
            thread = self.thread
            if last:
                self.thread = None
        self._wake()
        if thread is None or thread is threading.current_thread():
            return  # from a job (a source disabling itself): it ends right after
        if last:
            if thread.is_alive():
                thread.join(CANCEL_TIMEOUT)
        elif self.running.acquire(True, CANCEL_TIMEOUT):  # the job may be running: let it end
            self.running.release()

    def _wake(self) -> None:
        try:
            self.wake.release()
        except RuntimeError:  # released already
            pass

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self.lock:
                if self.thread is not me:
                    return
                jobs = list(self.jobs)
            now = time.monotonic()
            for job in jobs:
                if job.due > now:
                    continue
                with self.running:
                    with self.lock:
                        if job not in self.jobs:  # cancelled meanwhile
                            continue
                    try:
                        job.function()
                    except Exception as exc:
                        self.cancel(job)
                        try:
                            job.on_error(exc)
                        except Exception:
                            pass
                now = time.monotonic()
                job.due += job.interval
                if job.due <= now:  # fell behind (a long GIL hold): keep the period, skip the backlog
                    job.due = now + job.interval
            with self.lock:
                if self.thread is not me:
                    return
                first = min((job.due for job in self.jobs), default=now + 1.0)
            self.wake.acquire(True, max(0.0, first - time.monotonic()))


_scheduler = _Scheduler()


def every(interval: float, function: Callable[[], object], on_error: OnError) -> Job:
    """Call ``function()`` every ``interval`` seconds on the shared thread, the first time
    within one interval (in step with a job of the same interval: one wake-up runs both);
    ``on_error(exc)`` if it raises (the job is then dropped)."""
    if not interval > 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    return _scheduler.every(interval, function, on_error)


def cancel(job: Job) -> None:
    """Stop calling ``job``; once this returns it is not running (unless called from the
    shared thread itself, or it ran past ``CANCEL_TIMEOUT``). Unknown jobs are fine."""
    _scheduler.cancel(job)


def thread() -> threading.Thread | None:
    """The shared thread while any job is scheduled (for tests and diagnostics)."""
    return _scheduler.thread


def _after_fork_in_child() -> None:
    """A forked child has no shared thread, and another thread may have held the locks."""
    global _scheduler
    _scheduler = _Scheduler()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
