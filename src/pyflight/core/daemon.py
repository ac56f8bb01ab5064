"""Start pyflight's own threads so that they never receive the program's signals.

The kernel delivers a process-directed signal (SIGTERM from ``Pool.terminate``, SIGINT,
SIGUSR2) to any thread that does not block it. When it lands on one of our threads while
the main thread waits in C (``sem_wait`` in a multiprocessing queue), the main thread is
never interrupted, so the Python handler never runs: a process that the default action
would have killed hangs. Our threads therefore block every asynchronous signal, leaving
delivery to the program's own threads, as without the recorder. A new thread inherits
its creator's mask, so the mask is set around ``start()``: the thread is covered from its
first instruction, and threads it starts (an HTTP server's request threads) are too.
"""

from __future__ import annotations

import signal
import threading

#: Signals raised by a faulting instruction: they go to the thread that caused them and
#: must never be blocked (blocking them is undefined behaviour).
_SYNCHRONOUS = frozenset(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT")
    if hasattr(signal, name)
)

_BLOCKED: frozenset[int] = (
    frozenset(signal.valid_signals()) - _SYNCHRONOUS
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "valid_signals")
    else frozenset()
)


def start_without_signals(thread: threading.Thread) -> None:
    """``thread.start()``, with the program's signals blocked in the new thread."""
    if not _BLOCKED:
        thread.start()
        return
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    except (OSError, ValueError):  # cannot change the mask here: start as usual
        thread.start()
        return
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
