"""Blocking in threads: BLOCK_BEGIN / BLOCK_END around each call that actually blocks,
WAKE when a thread wakes another.

What is hooked, and how (the hot paths are in C, ``_core_lock.c``):

- Locks: ``threading.Lock`` and ``threading.RLock`` are replaced by the C types
  ``TracedLock`` / ``TracedRLock`` (they wrap a real ``_thread`` lock; before 3.13,
  where ``threading.Lock`` is a function, by a C function making a ``TracedLock``). An
  uncontended acquire is one call of the inner lock and records nothing; only a
  contended acquire that may block records BLOCK(LOCK, id(lock), stack), and its
  BLOCK_END names the thread that released the lock last (``waker``). The wrapper keeps
  the Python ident of the thread that acquired it last (``pthread_self``, a few
  instructions per acquire), and a contended acquire first records LOCK_HELD(id(lock),
  that ident): who held the lock as the wait began (the ``deadlock`` rule's evidence).
  ``threading._allocate_lock`` (Condition.wait's private waiter locks) is not a traced
  lock: that wait is recorded once, as CONDITION.
- ``threading.Condition.wait`` (so ``queue.Queue``, ``Event``, ``Semaphore``,
  ``Barrier``, ``concurrent.futures`` waits): BLOCK(CONDITION, id(cond), stack) around a
  wait that may block. With the C core its BLOCK_BEGIN (at the wait's start time) is
  written when the wait ends, or just before a generation is sealed or a snapshot taken
  while it still waits, and carries the stack only if the wait lasted at least
  ``stack_min_us`` (default 100 us; 0: always). The wake-up is recorded where it happens: the private waiter
  lock the wait blocks on comes from ``threading._allocate_lock``, which the C core
  replaces so that, inside a wait, it makes a lock whose release (by ``notify`` or
  ``notify_all``) records WAKE(waiter tid, 0, CONDITION, id(cond)); the waiter's
  BLOCK_END names the notifier. ``notify`` itself is not wrapped, so the common notify
  with nobody waiting (every ``queue.Queue.put``) costs nothing. Re-acquiring the
  condition's lock at the end of a wait is part of the CONDITION block, not a LOCK
  block of its own.
- ``os.fsync`` and ``os.fdatasync`` (option ``file_sync``): IO, obj 0, a wait for the
  disk (a C stand-in with the C core, as for sleep).
- ``threading.Thread.join`` (JOIN; obj and waker are the joined thread's native id),
  ``time.sleep`` (SLEEP; obj is the time asked for, in ns: the analysis states what the
  sleep took beyond it as a wait for the GIL), blocking socket operations (IO, obj
  ``id(socket)``, bit 0 set by a call that sends, ``IO_SENDS``, and bit 1 in the
  BLOCK_END of a call that ended by the socket's timeout, ``IO_TIMED_OUT``: ``socket.socket`` recv,
  recv_into, recvfrom, recvfrom_into, recvmsg, send, sendall, sendto, sendmsg, accept,
  connect, connect_ex, and ``ssl.SSLSocket`` recv, recv_into, read, write, send, sendall,
  do_handshake, unwrap, which read and write through OpenSSL; only on sockets whose
  timeout is not 0, so never on asyncio's: a sending call on those only tells the asyncio
  source that the running task's step sent, TASK_STEP_SENT / TASK_SENT), and
  ``select.select`` plus every ``selectors`` class's ``select`` (SELECT; selectors marked
  ``_pyflight_loop_selector = True`` are skipped: the asyncio source records its loop's
  idle time itself). With the C core, sleep, select and the socket
  methods are C stand-ins (``BlockingHook``: a call that cannot block costs a check, ~30
  ns), whose BLOCK_BEGIN carries the stack only past ``stack_min_us``, as for conditions;
  join, and everything without the C core, are Python wrappers.
- TLS: ``ssl`` is not imported by the source (~10 ms): ``ssl.SSLSocket`` is patched at
  install if ``ssl`` is imported, else right after the program imports it (an
  ``ImportWatcher`` on ``sys.meta_path``, ``_import_watch.py``, removed on uninstall).
  Its methods call each other (recv -> read, sendall -> send; an unwrapped one's recv ->
  ``socket.socket.recv``): a socket method called inside another one of the same thread
  passes through, so one call is one IO block. ``do_handshake(block=True)`` on a socket
  with timeout 0 (it blocks meanwhile) is not recorded.

Calls that cannot block are not recorded: a non-blocking or zero-timeout acquire, a
wait/select/sleep with a timeout <= 0, a join of a thread that is not running. Socket
calls on blocking sockets are recorded even when data was already there (it cannot be
known in advance); their BLOCK is then short.

The replacements carry the names they stand in for (``threading.Lock``,
``threading.RLock``, ``functools.wraps`` for the Python wrappers), so pickle finds them
by reference and threading's own checks hold; ``type(lock)`` shows as ``threading.Lock``.

Limits: module attributes are replaced (``threading.Lock``, ``threading.RLock``,
``time.sleep``, ``select.select``), so code that did ``from time import sleep`` (or
``from threading import Lock``) before the recorder started keeps the original, and
locks created before it started are not traced. Locks created while it ran stay traced
wrappers after it stops (they then cost one extra call and record nothing). On 3.13,
``isinstance(lock, threading.Lock)`` is true for traced locks only while installed.
Without the C core, locks are not traced and Condition uses Python wrappers.

A fault in a hook disables the source (SOURCE_DISABLED, a warning) and the program goes
on: every wrapper passes its arguments, result and exceptions through untouched.
"""

from __future__ import annotations

import _socket
import _thread
import functools
import os
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from pyflight.core import backend
from pyflight.core.events import IO_SENDS, IO_TIMED_OUT, BlockReason, Kind
from pyflight.sources import _sends, register
from pyflight.sources._import_watch import ImportWatcher
from pyflight.sources.base import Source

_BLOCK_BEGIN = int(Kind.BLOCK_BEGIN)
_LOCK_HELD = int(Kind.LOCK_HELD)
_BLOCK_END = int(Kind.BLOCK_END)
_WAKE = int(Kind.WAKE)
_CONDITION = int(BlockReason.CONDITION)
_SLEEP = int(BlockReason.SLEEP)
_JOIN = int(BlockReason.JOIN)
_IO = int(BlockReason.IO)
_SELECT = int(BlockReason.SELECT)

#: socket.socket methods that block on a blocking socket.
SOCKET_METHODS = (
    "recv",
    "recv_into",
    "recvfrom",
    "recvfrom_into",
    "recvmsg",
    "send",
    "sendall",
    "sendto",
    "sendmsg",
    "accept",
    "connect",
    "connect_ex",
)

#: ssl.SSLSocket methods that block on a blocking socket: they read and write through
#: OpenSSL, not through the socket.socket methods (``unwrap``: the TLS shutdown, which
#: sends close_notify and waits for the peer's). They call each other (recv and
#: recv_into -> read, sendall -> send; an unwrapped one's recv -> socket.socket.recv):
#: a hooked socket method called inside another is part of the outer call's IO block.
SSL_METHODS = ("recv", "recv_into", "read", "write", "send", "sendall", "do_handshake", "unwrap")

#: The socket methods (of either class) that send or open a connection: their IO block's
#: obj is id(socket) | IO_SENDS, so the analysis can tell a receive that waits for the
#: answer to what was sent from one that waits for whatever the partner pushes next.
SENDING_METHODS = frozenset(
    {"send", "sendall", "sendto", "sendmsg", "connect", "connect_ex", "write", "do_handshake", "unwrap"}
)

#: What the source can hook; each can be turned off with an option of the same name.
OPTIONS = ("locks", "conditions", "sleep", "join", "sockets", "select", "file_sync")

#: Option: a Condition.wait, sleep, select or socket call that blocked for less than this
#: many microseconds is recorded without its stack (C core only). Walking and interning a
#: stack is most of what a short hand-off costs (~15-30 ns a frame); a wait that lasts has
#: it. While the CPU budget sheds stacks (pyflight.budget), a block under 10 ms keeps its
#: stack one time in 16, at random (``_blocking_shed_stacks`` in the C core).
STACK_MIN_US_OPTION = "stack_min_us"
DEFAULT_STACK_MIN_US = 100.0

_MISSING: Any = object()
_gettimeout = _socket.socket.gettimeout

#: Pure-Python socket wrappers: ``.on`` while this thread is inside one that records (the
#: C stand-ins keep the same flag in C).
_in_io = _thread._local()

#: The installed BlockingSource: the patches exist once per process.
_owner: BlockingSource | None = None


def _may_block(timeout: object) -> bool:
    """True for a timeout that lets a wait block: None, or an int/float above 0."""
    return timeout is None or (type(timeout) in (int, float) and timeout > 0)  # type: ignore[operator]


def _single_arg(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, default: Any) -> tuple[bool, Any]:
    """``(ok, value)`` of the one optional argument ``name`` of a wrapped call."""
    if len(args) + len(kwargs) > 1 or (kwargs and name not in kwargs):
        return False, None
    return True, args[0] if args else kwargs.get(name, default)


def _c_hook(c: ModuleType, orig: Callable[..., Any], role: int, *helper: Any) -> Any:
    """The C core's recording stand-in for ``orig`` (``_core_lock.c``, BlockingHook),
    carrying its name and docs as the Python wrappers do."""
    return functools.update_wrapper(c.BlockingHook(orig, role, *helper), orig)


def _c_core() -> ModuleType | None:
    """The C core if it is the backend and has the lock hooks, else None."""
    if getattr(backend, "BACKEND", None) == "c" and hasattr(backend, "TracedLock"):
        return backend
    return None


class _Patch:
    """One replaced attribute: ``owner.name`` was ``original`` (``_MISSING`` if it was
    inherited, for a class) and is now ``ours``."""

    __slots__ = ("name", "original", "ours", "owner")

    def __init__(self, owner: Any, name: str, ours: Any) -> None:
        self.owner = owner
        self.name = name
        self.ours = ours
        self.original = owner.__dict__.get(name, _MISSING)

    def apply(self) -> None:
        setattr(self.owner, self.name, self.ours)

    def restore(self) -> None:
        """Put the original back, unless someone replaced ours since (theirs stays)."""
        if self.owner.__dict__.get(self.name, _MISSING) is not self.ours:
            return
        if self.original is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.original)


@register
class BlockingSource(Source):
    """BLOCK_BEGIN / BLOCK_END / WAKE for locks, conditions, join, sleep, sockets, select."""

    name = "blocking"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._active = False
        self._patches: list[_Patch] = []
        self._c: ModuleType | None = None
        # guards _patches and _active against the ssl patches made in an importing thread
        # (a plain _thread lock: threading.Lock is what this source replaces)
        self._patch_lock = _thread.allocate_lock()
        self._ssl_watcher: ImportWatcher | None = None
        # pure-Python conditions: id(condition) -> [[waiter tid, notifier tid], ...], FIFO
        self._waiting: dict[int, list[list[int]]] = {}

    def metadata(self) -> dict[str, str]:
        if not self.options.get("sockets", True):
            return {}
        return {
            "blocking.io_sends": "bit 0 of a socket IO block's obj: the call sends",
            "blocking.io_timeouts": "bit 1 of a socket IO BLOCK_END's obj: the call timed out",
            "blocking.step_sends": "a task's step that sent on a socket is TASK_STEP_SENT / TASK_SENT",
        }

    # install / uninstall ----------------------------------------------------------

    def _install(self) -> None:
        global _owner
        if self._patches:
            return
        if _owner is not None:
            raise RuntimeError("the blocking source is already installed by another recorder")
        unknown = sorted(set(self.options) - set(OPTIONS) - {STACK_MIN_US_OPTION})
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; available: {[*OPTIONS, STACK_MIN_US_OPTION]}")
        on = {name: bool(self.options.get(name, True)) for name in OPTIONS}
        stack_min_us = float(self.options.get(STACK_MIN_US_OPTION, DEFAULT_STACK_MIN_US))
        if not stack_min_us >= 0:
            raise ValueError(f"{STACK_MIN_US_OPTION} must be >= 0, not {stack_min_us}")
        c = _c_core()
        if c is not None:
            expected = (_BLOCK_BEGIN, _BLOCK_END, _WAKE, int(BlockReason.LOCK), _CONDITION, _LOCK_HELD)
            if tuple(c._BLOCKING_CONSTANTS) != expected:
                raise RuntimeError(
                    f"C core constants {c._BLOCKING_CONSTANTS} != {expected}: rebuild pyflight"
                )
        self._c = c
        self._waiting.clear()
        patches: list[_Patch] = []
        if c is not None:
            rlock = threading.RLock
            if rlock is c.TracedRLock:
                raise RuntimeError("threading.RLock is already traced")
            c._blocking_setup(rlock, self._on_c_fault, round(stack_min_us * 1000))
            if on["locks"]:
                # threading.Lock is the type _thread.lock from 3.13, the function
                # _thread.allocate_lock before: replaced by the same kind of object
                lock_factory = c.TracedLock if isinstance(threading.Lock, type) else c.traced_allocate_lock
                patches.append(_Patch(threading, "Lock", lock_factory))
                patches.append(_Patch(threading, "RLock", c.TracedRLock))
        if on["conditions"]:
            patches += self._condition_patches(c)
        if on["join"]:
            patches.append(self._join_patch())
        if on["sleep"]:
            patches.append(self._sleep_patch(c))
        if on["sockets"]:
            patches += self._socket_patches(c)
        if on["select"]:
            patches += self._select_patches(c)
        if on["file_sync"]:
            patches += self._file_sync_patches(c)
        self._patches = patches
        self._active = True
        _owner = self
        try:
            for patch in patches:
                patch.apply()
            if c is not None:
                c._blocking_control(True)
            if on["sockets"]:
                self._watch_ssl()
        except BaseException:
            self._uninstall()
            raise

    def _uninstall(self) -> None:
        """Stop recording, then put back every original (by identity)."""
        global _owner
        with self._patch_lock:
            self._active = False
            watcher, self._ssl_watcher = self._ssl_watcher, None
            patches, self._patches = self._patches, []
        if watcher is not None:
            watcher.remove()
        if self._c is not None:
            self._c._blocking_control(False)
        errors = []
        for patch in reversed(patches):
            try:
                patch.restore()
            except Exception as exc:  # go on: restore everything we can
                errors.append(exc)
        self._waiting.clear()
        if _owner is self:
            _owner = None
        if errors:
            raise errors[0]

    def after_fork_in_child(self) -> None:
        super().after_fork_in_child()
        self._patch_lock = _thread.allocate_lock()
        if self._ssl_watcher is not None:
            self._ssl_watcher.after_fork_in_child()

    # faults -----------------------------------------------------------------------

    def _fault(self, exc: BaseException) -> None:
        """A hook failed: disable the source; never raises (we are inside user calls)."""
        try:
            self.failed(exc)
        except Exception:
            pass

    def _on_c_fault(self, exc: BaseException) -> None:
        """Called by the C hooks (which already stopped recording) when recording failed."""
        self._fault(exc)

    # recording helpers --------------------------------------------------------------

    def _blocked(
        self,
        reason: int,
        obj: int,
        frame: FrameType | None,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        waker: Callable[[], int] | None = None,
    ) -> Any:
        """``func(*args, **kwargs)`` between BLOCK_BEGIN and BLOCK_END(reason, obj)."""
        record = backend.record
        try:
            record(_BLOCK_BEGIN, reason, obj, frame)
        except Exception as exc:
            self._fault(exc)
            return func(*args, **kwargs)
        end_obj = obj
        try:
            return func(*args, **kwargs)
        except TimeoutError:
            if reason == _IO:  # ended by the socket's timeout, not by the network's answer
                end_obj = obj | IO_TIMED_OUT
            raise
        finally:
            if self._active:
                try:
                    record(_BLOCK_END, reason, end_obj, 0 if waker is None else waker())
                except Exception as exc:
                    self._fault(exc)

    # conditions ---------------------------------------------------------------------

    def _condition_patches(self, c: ModuleType | None) -> list[_Patch]:
        cls = threading.Condition
        orig_wait = cls.__dict__["wait"]
        orig_notify = cls.__dict__["notify"]
        if c is not None:
            # notify is left alone: the waiter lock that wait makes with _allocate_lock
            # records the wake-up when notify releases it (see _core_lock.c)
            wait_hook = functools.update_wrapper(c.BlockingHook(orig_wait, c.HOOK_CONDITION_WAIT), orig_wait)
            return [
                _Patch(cls, "wait", wait_hook),
                _Patch(threading, "_allocate_lock", c.waiter_allocate_lock),
            ]
        source = self

        @functools.wraps(orig_wait)
        def wait(cond: Any, *args: Any, **kwargs: Any) -> Any:
            if source._active:
                ok, timeout = _single_arg(args, kwargs, "timeout", None)
                if ok and _may_block(timeout):
                    return source._condition_wait(cond, orig_wait, args, kwargs, sys._getframe(1))
            return orig_wait(cond, *args, **kwargs)

        @functools.wraps(orig_notify)
        def notify(cond: Any, *args: Any, **kwargs: Any) -> Any:
            result = orig_notify(cond, *args, **kwargs)
            if source._active:
                ok, n = _single_arg(args, kwargs, "n", 1)
                if ok and type(n) is int and n > 0:
                    source._condition_notified(cond, n)
            return result

        return [_Patch(cls, "wait", wait), _Patch(cls, "notify", notify)]

    def _condition_wait(
        self,
        cond: Any,
        orig_wait: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        frame: FrameType | None,
    ) -> Any:
        """Pure-Python twin of the C wait hook (used without the C core)."""
        key = id(cond)
        slot: list[int] | None = None
        try:
            slot = [backend.thread_id(), 0]
            self._waiting.setdefault(key, []).append(slot)
            backend.record(_BLOCK_BEGIN, _CONDITION, key, frame)
        except Exception as exc:
            self._fault(exc)
        try:
            return orig_wait(cond, *args, **kwargs)
        finally:
            if slot is not None:
                try:
                    waiters = self._waiting.get(key)
                    if waiters is not None:
                        for i, other in enumerate(waiters):
                            if other is slot:
                                del waiters[i]
                                break
                        if not waiters:
                            self._waiting.pop(key, None)
                    if self._active:
                        backend.record(_BLOCK_END, _CONDITION, key, slot[1])
                except Exception as exc:
                    self._fault(exc)

    def _condition_notified(self, cond: Any, n: int) -> None:
        """Pure-Python twin of the C notify hook: WAKE for the first n known waiters."""
        try:
            key = id(cond)
            waiters = self._waiting.get(key)
            if not waiters:
                return
            me = backend.thread_id()
            woken = waiters[:n]
            del waiters[:n]
            if not waiters:
                self._waiting.pop(key, None)
            for slot in woken:
                slot[1] = me
                backend.record(_WAKE, slot[0], 0, _CONDITION, key)
        except Exception as exc:
            self._fault(exc)

    # join, sleep ----------------------------------------------------------------------

    def _join_patch(self) -> _Patch:
        cls = threading.Thread
        orig_join = cls.__dict__["join"]
        is_alive = cls.__dict__["is_alive"]
        get_ident = threading.get_ident
        source = self

        def joins(thread: threading.Thread, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
            ok, timeout = _single_arg(args, kwargs, "timeout", None)
            try:
                return ok and _may_block(timeout) and thread.ident != get_ident() and bool(is_alive(thread))
            except Exception:  # not started, not initialised, ...: join itself will say
                return False

        @functools.wraps(orig_join)
        def join(thread: threading.Thread, *args: Any, **kwargs: Any) -> Any:
            if source._active and joins(thread, args, kwargs):
                tid = thread.native_id or 0

                def waker() -> int:
                    try:
                        return 0 if is_alive(thread) else tid
                    except Exception:
                        return 0

                return source._blocked(
                    _JOIN, tid, sys._getframe(1), orig_join, (thread, *args), kwargs, waker
                )
            return orig_join(thread, *args, **kwargs)

        return _Patch(cls, "join", join)

    def _sleep_patch(self, c: ModuleType | None) -> _Patch:
        orig_sleep = time.sleep
        if c is not None:
            return _Patch(time, "sleep", _c_hook(c, orig_sleep, c.HOOK_SLEEP))
        source = self

        @functools.wraps(orig_sleep)
        def sleep(*args: Any, **kwargs: Any) -> Any:
            if source._active and len(args) == 1 and not kwargs:
                secs = args[0]
                if type(secs) in (int, float) and secs > 0:
                    asked = int(secs * 1e9) if secs < 1e9 else 10**18
                    return source._blocked(_SLEEP, asked, sys._getframe(1), orig_sleep, args, {})
            return orig_sleep(*args, **kwargs)

        return _Patch(time, "sleep", sleep)

    def _file_sync_patches(self, c: ModuleType | None) -> list[_Patch]:
        """os.fsync and os.fdatasync: a wait for the disk (IO), which the sampler alone saw
        as time off-CPU on the calling line, in no traced call."""
        source = self
        patches = []
        for name in ("fsync", "fdatasync"):
            orig = getattr(os, name, None)
            if orig is None:
                continue
            if c is not None:
                patches.append(_Patch(os, name, _c_hook(c, orig, c.HOOK_FILE_SYNC)))
                continue

            def make(orig: Any) -> Any:
                @functools.wraps(orig)
                def sync(*args: Any, **kwargs: Any) -> Any:
                    if source._active and len(args) == 1 and not kwargs:
                        return source._blocked(_IO, 0, sys._getframe(1), orig, args, {})
                    return orig(*args, **kwargs)

                return sync

            patches.append(_Patch(os, name, make(orig)))
        return patches

    # sockets, select --------------------------------------------------------------------

    def _socket_patches(self, c: ModuleType | None) -> list[_Patch]:
        cls = socket.socket
        return self._io_patches(c, cls, [name for name in SOCKET_METHODS if hasattr(cls, name)])

    def _io_patches(self, c: ModuleType | None, cls: type, names: list[str]) -> list[_Patch]:
        """IO hooks for the methods ``names`` of socket class ``cls``: a call on a socket
        whose timeout is not 0 is BLOCK(IO, id(socket)), unless this thread is inside
        another such call already (its block covers this one)."""
        if c is not None:
            return [
                _Patch(
                    cls,
                    name,
                    _c_hook(
                        c,
                        getattr(cls, name),
                        c.HOOK_SOCKET_SEND if name in SENDING_METHODS else c.HOOK_SOCKET,
                        _gettimeout,
                    ),
                )
                for name in names
            ]
        source = self

        def make(orig: Callable[..., Any], sends: int) -> Callable[..., Any]:
            @functools.wraps(orig)
            def call(sock: Any, *args: Any, **kwargs: Any) -> Any:
                if sends:
                    _sends.flag.on = True  # a task's step that sends (sources/_sends.py)
                if source._active and not getattr(_in_io, "on", False):
                    try:
                        blocks = _gettimeout(sock) != 0.0
                    except Exception:  # not a socket: the original will say so
                        blocks = False
                    if blocks:
                        _in_io.on = True
                        try:
                            return source._blocked(
                                _IO, id(sock) | sends, sys._getframe(1), orig, (sock, *args), kwargs
                            )
                        finally:
                            _in_io.on = False
                return orig(sock, *args, **kwargs)

            return call

        return [
            _Patch(cls, name, make(getattr(cls, name), IO_SENDS if name in SENDING_METHODS else 0))
            for name in names
        ]

    def _watch_ssl(self) -> None:
        """Patch ``ssl.SSLSocket`` now if ssl is imported, else right after the program
        imports it (importing it ourselves would cost every program ~10 ms)."""
        module = sys.modules.get("ssl")
        if module is not None and isinstance(getattr(module, "SSLSocket", None), type):
            self._patch_ssl(module)
            return
        watcher = ImportWatcher("ssl", self._ssl_imported)
        with self._patch_lock:
            if not self._active:
                return
            self._ssl_watcher = watcher.install()
        # imported by another thread meanwhile (before the watcher was there): now
        module = sys.modules.get("ssl")
        if module is not None and isinstance(getattr(module, "SSLSocket", None), type):
            watcher.remove()
            self._patch_ssl(module)

    def _ssl_imported(self, module: ModuleType) -> None:
        """The ImportWatcher's callback, in the thread that imported ssl."""
        try:
            self._patch_ssl(module)
        except Exception as exc:
            self._fault(exc)

    def _patch_ssl(self, module: ModuleType) -> None:
        """Hooks ``module.SSLSocket``'s blocking methods (once; not after uninstall)."""
        cls = getattr(module, "SSLSocket", None)
        if not isinstance(cls, type):
            return
        with self._patch_lock:
            if not self._active or any(p.owner is cls for p in self._patches):
                return
            patches = self._io_patches(self._c, cls, [name for name in SSL_METHODS if name in cls.__dict__])
            applied = []
            try:
                for patch in patches:
                    patch.apply()
                    applied.append(patch)
            finally:
                self._patches += applied

    def _select_patches(self, c: ModuleType | None) -> list[_Patch]:
        source = self
        patches = []
        orig_select = select.select
        if c is not None:
            patches.append(_Patch(select, "select", _c_hook(c, orig_select, c.HOOK_SELECT)))

        @functools.wraps(orig_select)
        def select_(*args: Any, **kwargs: Any) -> Any:
            if (
                source._active
                and not kwargs
                and len(args) in (3, 4)
                and _may_block(args[3] if len(args) == 4 else None)
            ):
                return source._blocked(_SELECT, 0, sys._getframe(1), orig_select, args, {})
            return orig_select(*args, **kwargs)

        if c is None:
            patches.append(_Patch(select, "select", select_))

        def make(orig: Callable[..., Any]) -> Callable[..., Any]:
            if c is not None:
                return _c_hook(c, orig, c.HOOK_SELECTOR)  # type: ignore[no-any-return]

            @functools.wraps(orig)
            def select(sel: Any, *args: Any, **kwargs: Any) -> Any:
                if source._active:
                    ok, timeout = _single_arg(args, kwargs, "timeout", None)
                    try:
                        blocks = (
                            ok and _may_block(timeout) and not getattr(sel, "_pyflight_loop_selector", False)
                        )
                    except Exception:
                        blocks = False
                    if blocks:
                        return source._blocked(_SELECT, id(sel), sys._getframe(1), orig, (sel, *args), kwargs)
                return orig(sel, *args, **kwargs)

            return select

        seen: set[int] = set()
        for obj in list(vars(selectors).values()):
            if (
                isinstance(obj, type)
                and id(obj) not in seen
                and not seen.add(id(obj))  # type: ignore[func-returns-value]
                and issubclass(obj, selectors.BaseSelector)
                and obj is not selectors.BaseSelector
                and "select" in obj.__dict__
            ):
                patches.append(_Patch(obj, "select", make(obj.__dict__["select"])))
        return patches
