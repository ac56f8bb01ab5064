"""Makes sure our death-signal handler runs even when the main thread is stuck in C.

CPython runs a Python signal handler on the main thread, between bytecodes. A signal
that arrives on another thread, or just before the main thread enters a blocking C call
that is never interrupted (``sem_wait`` on a multiprocessing lock another process holds:
the way ``Pool.terminate`` finds its workers), is noted but its handler never runs. With
the default action the process would have died; with ``pyflight run``'s SIGTERM handler it
would hang for ever. So the watch learns of each signal from ``signal.set_wakeup_fd``
(CPython's C handler writes the signal number there, from whatever thread took it) and,
if the handler has not started shortly after, interrupts the main thread with
``pthread_kill`` (its blocking call fails with EINTR and the pending handler runs). If
even that does not help (the main thread blocks the signal, or a C call ignores EINTR),
``on_stuck(signum)`` runs on the watch's own thread.

A death signal (SIGTERM) is chased once: after its handler started, later arrivals need
nothing. A signal that may come again and again (the snapshot signal) is chased per
arrival (``once=False``): an arrival counts as handled when the handler started after it
was read from the pipe, give or take ``ARRIVAL_GRACE_S`` (the handler may beat the watch
thread to it). The nudges' own arrivals, and any that come while an arrival is being
chased, belong to that arrival.

The wake-up fd is one per process: when the program already uses it, or takes it later
(asyncio's ``add_signal_handler``), the watch stands aside and the handler works as
plain CPython makes it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable

from pyflight.core.daemon import start_without_signals

#: Delay before the first nudge, between nudges, and how many before ``on_stuck``.
NUDGE_AFTER_S = 0.1
NUDGE_EVERY_S = 0.2
NUDGES = 10
#: A handler that started this long before an arrival was read from the pipe handled it
#: (snapshot signals this close together are one).
ARRIVAL_GRACE_S = 0.5
#: How often a chase looks whether the handler started (no lock: it runs in a handler).
POLL_S = 0.01


class HandlerWatch:
    """Watches ``signums`` (their Python handler must call :meth:`started` first)."""

    def __init__(self, signums: Iterable[int], on_stuck: Callable[[int], None]) -> None:
        self._on_stuck: dict[int, Callable[[int], None]] = {}
        self._once: dict[int, bool] = {}
        #: When each signal's handler last started (time.monotonic), set by ``started``.
        self._started_at: dict[int, float] = {}
        for signum in signums:
            self.add(signum, on_stuck)
        self._fds: tuple[int, int] | None = None
        self._pid = -1

    def add(self, signum: int, on_stuck: Callable[[int], None], *, once: bool = True) -> None:
        """Watch ``signum`` too (before or after ``install``); ``once=False`` chases each
        arrival, for a signal that is expected again after its handler ran."""
        self._on_stuck[int(signum)] = on_stuck
        self._once[int(signum)] = once

    def install(self) -> bool:
        """Take the wake-up fd and start the watch thread; False if it cannot (not the
        main thread, no ``pthread_kill``, or the program has its own wake-up fd)."""
        if not hasattr(signal, "pthread_kill") or threading.current_thread() is not threading.main_thread():
            return False
        read_fd, write_fd = os.pipe()  # not inherited by exec'd children (PEP 446)
        try:
            os.set_blocking(write_fd, False)
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (OSError, ValueError):
            os.close(read_fd)
            os.close(write_fd)
            return False
        if previous != -1:  # the program's own: give it back
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
            return False
        self._fds = (read_fd, write_fd)
        self._pid = os.getpid()
        thread = threading.Thread(target=self._run, args=(read_fd,), name="pyflight-sigwatch", daemon=True)
        start_without_signals(thread)
        return True

    def started(self, signum: int) -> None:
        """Called by the handler as it starts: no nudging needed any more."""
        if signum in self._on_stuck:
            self._started_at[signum] = time.monotonic()  # one store: safe in a handler

    def forget_after_fork(self) -> None:
        """In a forked child: the pipe and the wake-up fd are the parent's; let go of both
        (the child's signals must not reach the parent's watch)."""
        fds = self._fds
        if fds is None or self._pid == os.getpid():
            return
        self._fds = None
        try:
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, fds[1]):  # not ours: leave it as it was
                signal.set_wakeup_fd(previous)
        except (ValueError, OSError):
            pass
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self, read_fd: int) -> None:
        carried = b""  # other signals' arrivals read while one was chased
        while True:
            if carried:
                data, carried = carried, b""
            else:
                try:
                    data = os.read(read_fd, 256)
                except OSError:
                    return
                if not data:
                    return
            arrived = time.monotonic()
            chased = set(data).intersection(self._on_stuck)
            for signum in chased:
                self._chase(signum, arrived)
            if chased:  # the nudges' own arrivals, and more of the chased, belong to the chase
                carried = bytes(b for b in _drain(read_fd) if b not in chased)

    def _handled(self, signum: int, arrived: float) -> bool:
        started = self._started_at.get(signum)
        if started is None:
            return False
        return self._once[signum] or started >= arrived - ARRIVAL_GRACE_S

    def _wait_handled(self, signum: int, arrived: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._handled(signum, arrived):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _chase(self, signum: int, arrived: float) -> None:
        if self._wait_handled(signum, arrived, NUDGE_AFTER_S):
            return
        main = threading.main_thread().ident
        for _ in range(NUDGES):
            if main is None or self._pid != os.getpid():
                return
            try:
                signal.pthread_kill(main, signum)  # coalesced with the pending one
            except (OSError, ValueError):
                break
            if self._wait_handled(signum, arrived, NUDGE_EVERY_S):
                return
        try:
            self._on_stuck[signum](signum)
        except Exception:
            pass


def _drain(fd: int) -> bytes:
    """What is in the pipe now, read without waiting."""
    out = b""
    try:
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 256):
                out += chunk
        finally:
            os.set_blocking(fd, True)
    except OSError:  # empty (BlockingIOError), or closed after a fork
        pass
    return out
