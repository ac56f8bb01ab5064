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

The wake-up fd is one per process: when the program already uses it, or takes it later
(asyncio's ``add_signal_handler``), the watch stands aside and the handler works as
plain CPython makes it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable

from pyflight.core.daemon import start_without_signals

#: Delay before the first nudge, between nudges, and how many before ``on_stuck``.
NUDGE_AFTER_S = 0.1
NUDGE_EVERY_S = 0.2
NUDGES = 10


class HandlerWatch:
    """Watches ``signums`` (their Python handler must call :meth:`started` first)."""

    def __init__(self, signums: Iterable[int], on_stuck: Callable[[int], None]) -> None:
        self._signums = frozenset(int(s) for s in signums)
        self._on_stuck = on_stuck
        self._started = {signum: threading.Event() for signum in self._signums}
        self._fds: tuple[int, int] | None = None
        self._pid = -1

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
        event = self._started.get(signum)
        if event is not None:
            event.set()

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
        while True:
            try:
                data = os.read(read_fd, 256)
            except OSError:
                return
            if not data:
                return
            for signum in self._signums.intersection(data):
                self._chase(signum)

    def _chase(self, signum: int) -> None:
        started = self._started[signum]
        if started.wait(NUDGE_AFTER_S):
            return
        main = threading.main_thread().ident
        for _ in range(NUDGES):
            if main is None or self._pid != os.getpid():
                return
            try:
                signal.pthread_kill(main, signum)  # coalesced with the pending one
            except (OSError, ValueError):
                break
            if started.wait(NUDGE_EVERY_S):
                return
        try:
            self._on_stuck(signum)
        except Exception:
            pass
