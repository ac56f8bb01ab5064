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

import _thread
import collections
import functools
import os
import signal
import threading
from typing import Any

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


class QuietEvent:
    """A stop flag for pyflight's own threads (``set``/``clear``/``is_set``/``wait`` as
    ``threading.Event``) whose waits are not recorded.

    ``threading.Event.wait`` goes through ``Condition.wait``, which the blocking source
    records: a BLOCK_BEGIN with a stack (~10,000 instructions) each time the ticker, the
    metrics thread or the stall watchdog sleeps, ~60 times a second in all, for threads the
    analysis hides. This one waits on a raw ``_thread`` lock (held while unset), which no
    source hooks."""

    __slots__ = ("_flag", "_lock")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            try:
                self._lock.release()
            except RuntimeError:  # released meanwhile by a concurrent set()
                pass

    def clear(self) -> None:
        if self._flag:
            self._flag = False
            self._lock.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        """Until set or `timeout` seconds passed; True if set."""
        if self._flag:
            return True
        if self._lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._lock.release()  # stays released while set: every waiter goes through
        return self._flag


def start_without_signals(thread: threading.Thread) -> None:
    """``thread.start()``, with the program's signals blocked in the new thread; in a
    forked child, queued for a moment (see ``defer_starts``)."""
    deferral = _deferral
    if deferral is not None and deferral[0] == os.getpid():
        with _deferral_lock:
            if _deferral is deferral:
                deferral[1].append(thread)
                return
    _start_now(thread)


def _start_now(thread: threading.Thread) -> None:
    # its end forgets it by its own ident: see _forget_own
    thread._delete = functools.partial(_forget_own, thread)  # type: ignore[attr-defined]
    previous = _block_signals()
    try:
        thread.start()
    finally:
        _restore_signals(previous)


def _forget_own(thread: threading.Thread) -> None:
    """``Thread._delete`` for our threads: drop ``thread`` from threading's table of live
    threads under its own ident. threading's looks it up by ``get_ident()``, which gevent's
    ``monkey.patch_all()`` (run by a program after the recorder started our threads)
    replaces with a greenlet's id: at the end of each of our threads, a KeyError
    traceback printed on the program's stderr ("Exception ignored in thread started by")."""
    ident = thread.ident  # no Python code while the lock is held (see threading's _delete)
    with threading._active_limbo_lock:  # type: ignore[attr-defined]
        threading._active.pop(ident, None)  # type: ignore[attr-defined]


def _block_signals() -> Any:
    """Block the program's signals in this thread; the previous mask (None: unchanged)."""
    if not _BLOCKED:
        return None
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    except (OSError, ValueError):  # cannot change the mask here: start as usual
        return None


def _restore_signals(previous: Any) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# Deferred starts (forked children) -----------------------------------------------------
#
# A child forked by a recorded program used to have all of pyflight's threads the moment
# fork() returned; code that checks right after a fork that it is single-threaded (CPython's
# own test_threading does, so may a library) saw them. In a forked child the threads are
# queued instead and started a moment later, by a timer that is not a Python thread
# while it waits (see _start_after), or earlier when the recorder stops.

_deferral_lock = threading.Lock()
#: (pid, threads queued in that process, the timer's gate); None: start threads at once.
_deferral: tuple[int, list[threading.Thread], Any] | None = None


def defer_starts(delay: float) -> None:
    """Queue every thread started through ``start_without_signals`` in this process for
    ``delay`` seconds (or until ``start_deferred`` runs): called in a forked child."""
    global _deferral, _deferral_lock
    _deferral_lock = threading.Lock()  # another thread may have held it at the fork
    gate = _thread.allocate_lock()
    gate.acquire()
    _deferral = (os.getpid(), [], gate)
    _start_after(delay, gate)


def start_deferred() -> None:
    """Start the threads queued by ``defer_starts`` and stop queuing. Idempotent."""
    global _deferral
    with _deferral_lock:
        deferral = _deferral
        _deferral = None
    if deferral is None or deferral[0] != os.getpid():
        return
    _, threads, gate = deferral
    try:
        gate.release()  # ends the timer thread if it is still waiting
    except RuntimeError:
        pass
    for thread in threads:
        try:
            _start_now(thread)
        except Exception:  # a thread that cannot start must not stop the others
            pass


def is_deferred(thread: threading.Thread) -> bool:
    """True if ``thread`` is queued and not started yet."""
    deferral = _deferral
    return deferral is not None and deferral[0] == os.getpid() and thread in deferral[1]


def _start_after(delay: float, gate: Any) -> None:
    """Call ``start_deferred`` after ``delay`` s from a raw thread that runs no Python
    frame while it waits (C callables only: ``deque`` draining ``map`` over a timed
    ``acquire``), so neither ``threading.enumerate()`` nor ``sys._current_frames()``
    sees it. ``start_deferred`` releases the gate: the wait ends and the thread with it."""

    def fire(_: object) -> None:
        try:
            _name_timer_thread()
            start_deferred()
        except BaseException:
            pass

    timed_waits = iter(functools.partial(gate.acquire, True, delay), True)  # False on timeout
    drain: Any = collections.deque  # deque(iterable, maxlen=0) consumes the iterable in C
    previous = _block_signals()
    try:
        _thread.start_new_thread(drain, (map(fire, timed_waits), 0))
    finally:
        _restore_signals(previous)


def _name_timer_thread() -> None:
    """Name the timer's raw thread in the trace: starting the queued threads records waits
    on it, and a nameless row would read as one of the program's threads."""
    from pyflight.core import backend
    from pyflight.core.events import Kind

    if backend.is_enabled():
        backend.record(Kind.THREAD_NAME, backend.thread_id(), "pyflight-fork-timer")
