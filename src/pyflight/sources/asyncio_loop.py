"""The asyncio source: task steps, plain callbacks, task lifetimes, loop idle time, stalls.

Every scheduler step of asyncio goes through ``asyncio.events.Handle._run``. With the C
core, that method is replaced by ``pyflight._core``'s C re-implementation (same
behaviour, no more instructions than asyncio's own; what recording costs is mostly the
core's clock read per event, see bench/bench_asyncio_step.py): it records
TASK_STEP_BEGIN/END when the callback is a Task's step (``__step``/``__wakeup`` of the
Python Task, the step wrapper or ``task_wakeup`` of the C Task; task id ``id(task)``),
else CALLBACK_BEGIN/END(loop, callback qualname), written as one TASK_STEP/CALLBACK event
at the step's end carrying its duration (the reader turns it back into the pair; a step
that spans a generation's seal is written as the pair). A callback that is a builtin
function or method (``set.discard``, a C Future's ``set_result``) is recorded only if it
lasted ``BUILTIN_CALLBACK_MIN_NS`` (100 us): such callbacks run no Python code, take
~100 ns, and were a sixth of a FastAPI service's events. After the step that finishes a task:
TASK_DONE(task, outcome, "Type: message"), the exception read without marking it
retrieved. With the pure-Python core, a Python ``_run`` of identical behaviour does the
same, at Python cost (~2x on small-step code).

A task between a TASK_STEP_END and its next TASK_STEP_BEGIN (or TASK_DONE) is waiting.
TASK_WAIT(task, AWAIT, what, stack) says on what (``task_wait``): ``"what"`` (the default)
records, after a step that leaves the task waiting on something other than a plain
``asyncio.Future`` or a bare yield, the type name of that future (``_fut_waiter``: "Task",
"_GatheringFuture", ...); a plain Future (most waits: sleep, queues, events, streams, whose
lock/queue part ``sync_waits`` names) says no more than the step's end, so it records
nothing and costs one type comparison. ``"stack"`` records every wait with the innermost
awaiting frame of the coroutine chain ("" for a plain Future; +10-30% on small-step code);
``"off"`` records none.

TASK_BLOCK(task, reason, obj, what, site, stack), on by default (``sync_waits``; with the C
core the hook is C, see bench/bench_asyncio_sync.py and docs/performance.md for its cost):
asyncio's ``Lock.acquire``, ``Semaphore.acquire``, ``Event.wait``, ``Condition.wait`` (so
``Barrier``) and ``Queue.get``/``put`` call ``self._get_loop()``
(``asyncio.mixins._LoopBoundMixin``) only on the path that blocks, to make the waiter
future; that method is wrapped, so an uncontended acquire, a get from a non-empty queue,
a wait on a set event cost nothing. The wrapper calls the original first (whatever it
raises passes through), then, if its caller is one of those methods and a task is
running, records the task, LOCK (Lock, Semaphore) or CONDITION (the others), ``id()`` of
the object, ``"asyncio.Queue.put"`` etc. (Event/Condition waits inside ``Queue.join`` and
``Barrier.wait`` are named after those), the site (a small number per waiting line: the
first frame outside asyncio, and when that line is a library's, its library callers up
to the program's own frame: anyio's one ``Event.wait`` line is a pool's wait on one path
and a connect's on another) and the stack from that frame outwards. Walking the stack
costs the core 2-3 us, so it is recorded at most once a second per site (readers share
it between the events of a site). Not recorded: who holds an
asyncio.Lock or who wakes the waiter (that would cost on every release); the analysis
infers lock holders from the hand-over order.

Also: ``BaseEventLoop.create_task`` is wrapped (TASK_CREATE + a live TASK_INFO, parent =
the current task; recorded in C with the C core, whose live TASK_INFO is written only from
the next generation on: TASK_CREATE says the same; 3.11/3.12 name tasks after creating them,
so ``tasks._set_task_name`` is wrapped to update TASK_INFO); each loop's selector instance
gets a ``select`` recording LOOP_IDLE_BEGIN/END around waits that may block (a zero-
timeout poll is not idle) and the ``_pyflight_loop_selector`` mark (the blocking source
then leaves it alone); a daemon thread "pyflight-stalls" records LOOP_STALL(loop, task,
duration so far, the loop thread's stack *now*) when a step runs longer than
``stall_threshold``, at 1x, 2x, 4x, ... the threshold. Every ``TASK_LOOK_INTERVAL``
(0.25 s; longer with over 5,000 live tasks; not with ``task_wait="off"``) it also looks at
the waiting tasks and records, for up to ``TASKS_PER_LOOK`` (16) of them drawn at random
and not yet seen in their current wait, TASK_WAIT(task, AWAIT, what, the coroutine
chain's frames, innermost first): where a task awaits a plain future (a socket read, a
library's own future such as aiohttp's connection pool) no hook says, and the model
gives the whole wait that stack (55-210 us a look with 10-1,000 live tasks, 0.8-1.3 ms
with 10,000: bench/bench_task_looks.py, docs/performance.md). The step table it reads is
``running_steps()``; with the C core the watchdog looks at it without the GIL and takes
the GIL (runs Python code) only when a step may be stalled, and at each look at the
waiting tasks and the other loops (four times a second).

Loops are instrumented lazily (``run_forever`` and the first step a thread runs of a
loop), so every loop built on ``asyncio.BaseEventLoop`` is covered: ``asyncio.run``,
uvicorn ``--loop asyncio``, aiohttp, loops already running when the recorder starts
(their existing tasks get TASK_INFO). Loops that are not (uvloop) cannot be: once per loop
class, a SourceWarning and a live DATA_LOSS("asyncio", 0, reason) saying the loop has
sampling-only coverage.

If asyncio is not imported when the source is installed, nothing is imported: a finder
on ``sys.meta_path`` (``_import_watch.ImportWatcher``) installs the hooks right after
``import asyncio`` completes (the watchdog thread starts with the recorder and stays
idle until then).

Options: ``stall_threshold`` (seconds, default 0.1; 0 or None: no watchdog),
``task_wait`` ("what" default, "stack", "off"), ``sync_waits`` (True default),
``implementation`` ("auto" default, "python" forces the Python ``Handle._run``).
"""

from __future__ import annotations

import _thread
import functools
import gc
import itertools
import os
import random
import re
import selectors
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from pyflight.core import backend
from pyflight.core.daemon import QuietEvent, start_without_signals
from pyflight.core.events import BlockReason, Kind, TaskOutcome
from pyflight.sources import _sends, register
from pyflight.sources._import_watch import ImportWatcher
from pyflight.sources.base import Source, SourceWarning

#: Default seconds a step may run before the watchdog records a LOOP_STALL.
STALL_THRESHOLD = 0.1
WATCHDOG_NAME = "pyflight-stalls"
#: How long uninstall waits for the watchdog thread.
JOIN_TIMEOUT = 1.0
#: Seconds between looks for loops that are not BaseEventLoops (uvloop).
FOREIGN_CHECK_INTERVAL = 1.0
#: How often the watchdog looks at waiting tasks (``Hooks.look_at_waiting_tasks``): at
#: most ``TASKS_PER_LOOK`` of them get their await chain recorded each time. With many
#: live tasks the look is rarer (its scan of the task set is one pass over it).
TASK_LOOK_INTERVAL = 0.25
TASKS_PER_LOOK = 16
#: Live tasks scanned per second at most (the interval stretches beyond that).
TASK_SCAN_RATE = 20_000
#: Tasks whose loop each look checks (a task is only in ``_current_tasks`` during its
#: step, which a look once a second rarely meets; every task knows its loop).
FOREIGN_TASKS_CHECKED = 64
#: Longest error text recorded with TASK_DONE.
MAX_ERROR_CHARS = 200
WAIT_MODES = {"off": 0, "what": 1, "stack": 2}
#: TASK_BLOCK records the full stack of a waiting site at most this often (ns).
SITE_STACK_INTERVAL = 1_000_000_000
#: Sites remembered before the table is cleared.
MAX_SITES = 10_000
#: Library frames walked past a waiting line to tell its callers apart (``_caller_chain``).
MAX_CHAIN = 24
#: A callback that is a builtin (C) function or method (``set.discard`` as a task's done
#: callback: one per request on uvicorn; a C Future's ``set_result``) runs no Python code
#: and takes ~100 ns: recorded only if it lasted this long (ns). The C Handle._run uses
#: the same threshold (core/c/_core_asyncio.c BUILTIN_CALLBACK_MIN_NS).
BUILTIN_CALLBACK_MIN_NS = 100_000
_LIBRARY_FILE = re.compile(r"^<|/lib/python3\.|/(site|dist)-packages/")


@functools.lru_cache(maxsize=4096)
def _is_library_file(filename: str) -> bool:
    """The standard library's or an installed package's (the C core's is_library_code)."""
    return _LIBRARY_FILE.search(filename) is not None


def _caller_chain(f: types.FrameType) -> tuple[tuple[int, int], ...]:
    """What tells apart the waits of one library line called on different paths (anyio's
    ``Event.wait`` is every httpx/starlette wait: a pool's, a connect's): (code, offset)
    of each caller of ``f`` while the frames are a library's, the first of the program's
    own included; () when ``f`` is the program's own. The C core's ``caller_chain``."""
    chain: list[tuple[int, int]] = []
    g: types.FrameType | None = f
    while g is not None and len(chain) < MAX_CHAIN and _is_library_file(g.f_code.co_filename):
        g = g.f_back
        if g is not None:
            chain.append((id(g.f_code), g.f_lasti))
    return tuple(chain)


_TASK_STEP_BEGIN = int(Kind.TASK_STEP_BEGIN)
_TASK_STEP_END = int(Kind.TASK_STEP_END)
_TASK_WAIT = int(Kind.TASK_WAIT)
_TASK_CREATE = int(Kind.TASK_CREATE)
_TASK_INFO = int(Kind.TASK_INFO)
_TASK_DONE = int(Kind.TASK_DONE)
_CALLBACK_BEGIN = int(Kind.CALLBACK_BEGIN)
_CALLBACK_END = int(Kind.CALLBACK_END)
_IDLE_BEGIN = int(Kind.LOOP_IDLE_BEGIN)
_IDLE_END = int(Kind.LOOP_IDLE_END)
_STALL = int(Kind.LOOP_STALL)
_TASK_BLOCK = int(Kind.TASK_BLOCK)
_AWAIT = int(BlockReason.AWAIT)
_LOCK = int(BlockReason.LOCK)
_CONDITION = int(BlockReason.CONDITION)
#: the C Handle._run records a short step or callback as one TASK_STEP / CALLBACK event
#: (the reader gives the BEGIN/END pair back)
_C_KINDS = (
    _TASK_STEP_BEGIN,
    _TASK_STEP_END,
    _TASK_WAIT,
    _CALLBACK_BEGIN,
    _CALLBACK_END,
    _AWAIT,
    int(Kind.TASK_STEP),
    int(Kind.CALLBACK),
    int(Kind.TASK_STEP_SENT),
    int(Kind.TASK_SENT),
)
#: after the END of a step that sent on a socket (the Python Handle._run)
_TASK_SENT = int(Kind.TASK_SENT)
_TASK_TIMEOUT = int(Kind.TASK_TIMEOUT)

#: Python callbacks a loop runs when a timeout runs out, each about to cancel the tasks it
#: guards: (module, class, method, attribute of the instance holding the task or the
#: tasks). asyncio's ``timeout()`` (which ``wait_for`` uses on 3.12+) and aiohttp's
#: ``ClientTimeout`` (its ``TimerContext``). Wrapped to record TASK_TIMEOUT(task) first:
#: they run only when a timeout fires, so the program's normal path pays nothing.
TIMEOUT_CALLBACKS = (
    ("asyncio.timeouts", "Timeout", "_on_timeout", "_task"),
    ("aiohttp.helpers", "TimerContext", "timeout", "_tasks"),
)


def _guarded_tasks(holder: str, timeout: Any, *args: Any) -> Any:
    """The tasks a TIMEOUT_CALLBACKS instance ``timeout`` is about to cancel: its
    attribute ``holder`` (one task, or a set of them)."""
    guarded = getattr(timeout, holder, None)
    return guarded if isinstance(guarded, (set, list, tuple)) else (guarded,)


def _release_waiter_timed_out(waiter: Any, *args: Any) -> tuple[Any, ...]:
    """The task a ``tasks._release_waiter`` call from a timer releases (none otherwise).
    The timer of ``wait_for`` (3.11) and ``wait`` calls it with the waiter alone; the
    awaited future's done callback passes that future too. The task is the one awaiting
    ``waiter``: its wake-up is among the waiter's callbacks."""
    if args or waiter.done():
        return ()
    for callback, _context in getattr(waiter, "_callbacks", None) or ():
        task = getattr(callback, "__self__", None)
        if task is not None and hasattr(task, "get_coro"):
            return (task,)
    return ()


_MISSING = object()

_installed_hooks: _Hooks | None = None


def running_steps() -> list[tuple[int, int, int, int]]:
    """``(thread_ident, loop_id, task_id, start_ns)`` of the asyncio steps running now
    (task_id 0 for a plain callback); empty when the source is not installed."""
    hooks = _installed_hooks
    return hooks.running_steps() if hooks is not None else []


def _slow_call(context: Any, callback: Any, args: Any) -> None:
    """``context.run(callback, *args)`` for what the C fast path does not handle (a
    context that is not a Context, args that are not a tuple): CPython's own semantics."""
    context.run(callback, *args)


def _make_exception_helper(
    events: types.ModuleType, original_run: Any
) -> Callable[[Any, BaseException], None]:
    """The except-branch of the running CPython's ``Handle._run``: 3.13 passes
    ``debug=self._loop.get_debug()`` to ``_format_callback_source``, 3.11/3.12 do not."""
    code = getattr(original_run, "__code__", None)
    with_debug = "get_debug" in code.co_names if code is not None else sys.version_info >= (3, 13)

    def call_exception_handler(handle: Any, exc: BaseException) -> None:
        if with_debug:
            cb = events.format_helpers._format_callback_source(
                handle._callback, handle._args, debug=handle._loop.get_debug()
            )
        else:
            cb = events.format_helpers._format_callback_source(handle._callback, handle._args)
        msg = f"Exception in callback {cb}"
        context = {
            "message": msg,
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        handle._loop.call_exception_handler(context)

    return call_exception_handler


def _idle_select_previous(obj: Any) -> tuple[bool, Any]:
    """(True, what it replaced) if `obj` is a loop selector's select made by an install of
    this source (C or Python), else (False, None)."""
    if getattr(obj, "_pyflight_idle", False):
        return True, obj._pyflight_previous
    previous_of = getattr(backend, "asyncio_idle_previous", None)
    if previous_of is not None:
        found: tuple[bool, Any] = previous_of(obj)
        return found
    return False, None


def _is_asyncios_own_run(run: Any, events: types.ModuleType) -> bool:
    code = getattr(run, "__code__", None)
    return (
        isinstance(run, types.FunctionType)
        and code is not None
        and code.co_filename == getattr(events, "__file__", None)
        and run.__qualname__ == "Handle._run"
    )


def _callback_name(cb: Any) -> str:
    """What the C core records as a callback's name (see callback_name in _core_asyncio.c)."""
    f = cb
    for _ in range(4):
        if type(f) is types.MethodType:
            f = f.__func__
        if isinstance(f, functools.partial):
            f = f.func
            continue
        name = getattr(f, "__qualname__", None)
        if type(name) is str:
            return name
        name = type(f).__qualname__
        return name if type(name) is str else ""
    return ""


def _awaiting_frame(task: Any) -> types.FrameType | None:
    """Frame of the innermost coroutine/generator of the task's await chain."""
    c = getattr(task, "_coro", None)
    for _ in range(64):
        if type(c) is types.CoroutineType:
            nxt, frame = c.cr_await, c.cr_frame
        elif type(c) is types.GeneratorType:
            nxt, frame = c.gi_yieldfrom, c.gi_frame
        else:
            return None
        if type(nxt) is types.CoroutineType or type(nxt) is types.GeneratorType:
            c = nxt
            continue
        return frame
    return None


#: (module, class, method, reason, what) of the asyncio methods that call
#: ``self._get_loop()`` only on the path that blocks (to make the waiter future).
_SYNC_SITES = (
    ("asyncio.locks", "Lock", "acquire", _LOCK, "asyncio.Lock.acquire"),
    ("asyncio.locks", "Semaphore", "acquire", _LOCK, "asyncio.Semaphore.acquire"),
    ("asyncio.locks", "Event", "wait", _CONDITION, "asyncio.Event.wait"),
    ("asyncio.locks", "Condition", "wait", _CONDITION, "asyncio.Condition.wait"),
    ("asyncio.queues", "Queue", "get", _CONDITION, "asyncio.Queue.get"),
    ("asyncio.queues", "Queue", "put", _CONDITION, "asyncio.Queue.put"),
)
#: Callers of Event.wait / Condition.wait that say better what is waited for.
_SYNC_OUTER = (
    ("asyncio.queues", "Queue", "join", "asyncio.Queue.join"),
    ("asyncio.locks", "Barrier", "wait", "asyncio.Barrier.wait"),
    ("asyncio.locks", "Barrier", "_block", "asyncio.Barrier.wait"),
    ("asyncio.locks", "Barrier", "_wait", "asyncio.Barrier.wait"),
)


def _method_code(module: str, cls: str, method: str) -> types.CodeType | None:
    owner = getattr(sys.modules.get(module), cls, None)
    func = getattr(owner, "__dict__", {}).get(method)
    code = getattr(func, "__code__", None)
    return code if isinstance(code, types.CodeType) else None


def _sync_sites() -> tuple[dict[int, tuple[int, str, bool]], dict[int, str]]:
    """id() of the code objects of the blocking asyncio methods -> (reason, what, refine
    from callers). Keyed by id: hashing a code object hashes its bytecode, every time
    (asyncio's functions keep the codes alive)."""
    sites: dict[int, tuple[int, str, bool]] = {}
    for module, cls, method, reason, what in _SYNC_SITES:
        code = _method_code(module, cls, method)
        if code is not None:
            sites[id(code)] = (reason, what, reason == _CONDITION and not what.startswith("asyncio.Queue"))
    outer: dict[int, str] = {}
    for module, cls, method, what in _SYNC_OUTER:
        code = _method_code(module, cls, method)
        if code is not None:
            outer[id(code)] = what
    return sites, outer


def _sync_site_codes() -> tuple[
    tuple[tuple[types.CodeType, int, str, bool], ...], tuple[tuple[types.CodeType, str], ...]
]:
    """The tables of _sync_sites for the C ``_get_loop``: ((code, reason, what, refine), ...)
    and ((code, what), ...), holding the code objects (the C side compares identities)."""
    sites = []
    for module, cls, method, reason, what in _SYNC_SITES:
        code = _method_code(module, cls, method)
        if code is not None:
            sites.append((code, reason, what, reason == _CONDITION and not what.startswith("asyncio.Queue")))
    outer = []
    for module, cls, method, what in _SYNC_OUTER:
        code = _method_code(module, cls, method)
        if code is not None:
            outer.append((code, what))
    return tuple(sites), tuple(outer)


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__qualname__}: {exc}"
    except Exception:
        text = type(exc).__qualname__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _copy_of(tasks: weakref.WeakSet[Any] | set[Any]) -> list[Any]:
    """A copy of asyncio's set of tasks, made from another thread than the loop's: the loop
    may add a task while a WeakSet's Python iteration lets it run (RuntimeError: Set
    changed size during iteration): retry, as asyncio.all_tasks does."""
    for _ in range(100):
        try:
            return list(tasks)
        except RuntimeError:
            continue
    return []


def _all_tasks(tasks: types.ModuleType) -> list[Any]:
    """Every task of every loop (asyncio.all_tasks without the loop filter)."""
    out: list[Any] = []
    for name in ("_scheduled_tasks", "_all_tasks", "_eager_tasks"):
        found = getattr(tasks, name, None)
        if isinstance(found, (weakref.WeakSet, set)):
            out.extend(_copy_of(found))
    return out


class _Hooks:
    """The installed asyncio instrumentation of one AsyncioSource."""

    def __init__(self, source: AsyncioSource) -> None:
        self.source = source
        self.active = False
        self.events = sys.modules["asyncio.events"]
        self.base_events = sys.modules["asyncio.base_events"]
        self.tasks = sys.modules["asyncio.tasks"]
        self.wait_mode = WAIT_MODES[source.task_wait]
        self.use_c = False
        self.patches: list[tuple[Any, str, Any, Any]] = []  # (owner, name, original, ours)
        self.timeout_watchers: list[ImportWatcher] = []  # for TIMEOUT_CALLBACKS not imported yet
        # loop -> (weakref to its selector, our select, previous instance select, had mark)
        self.loops: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any, bool] | None] = (
            weakref.WeakKeyDictionary()
        )
        self.loops_lock = threading.Lock()
        # task id -> parent id of the tasks whose TASK_INFO is live (key: the task id, an int;
        # no other source uses int keys). Values are ints: no GC-tracked tuple per task.
        self.live_tasks: dict[int, int] = {}
        self.foreign: set[str] = set()
        self.py_running: dict[int, tuple[int, int, int]] = {}
        self.next_foreign_check = 0
        self.next_task_look = 0
        self.looked_at: dict[int, int] = {}  # task id -> id() of the future it waited on when looked at
        self.rng = random.Random()
        self.tls = threading.local()
        py_task = getattr(self.tasks, "_PyTask", None)
        py_dict = getattr(py_task, "__dict__", {})
        self.py_step = py_dict.get("_Task__step")
        self.py_wakeup = py_dict.get("_Task__wakeup")
        types_found: list[type] = []
        for cls in (self.tasks.Task, getattr(self.tasks, "_CTask", None), py_task):
            if isinstance(cls, type) and cls not in types_found:
                types_found.append(cls)
        self.task_types = tuple(types_found)
        futures = sys.modules["asyncio.futures"]
        self.plain_future = futures.Future if isinstance(futures.Future, type) else None

    # install / remove ----------------------------------------------------------

    def install(self) -> None:
        events, base_events = self.events, self.base_events
        handle = events.Handle
        original_run = handle.__dict__.get("_run")
        if not _is_asyncios_own_run(original_run, events):
            raise RuntimeError(f"asyncio.events.Handle._run is not asyncio's own ({original_run!r})")
        exc_helper = _make_exception_helper(events, original_run)
        impl = self.source.implementation
        self.use_c = impl != "python" and hasattr(backend, "asyncio_install") and backend.BACKEND == "c"
        if impl == "c" and not self.use_c:
            raise RuntimeError("implementation='c' needs the C core")
        loop_cls = base_events.BaseEventLoop
        patches = [
            (loop_cls, "create_task", loop_cls.__dict__["create_task"]),
            (loop_cls, "run_forever", loop_cls.__dict__["run_forever"]),
        ]
        self.active = True
        if self.use_c:
            backend.asyncio_tasks_setup(
                self.tasks.current_task,
                self.live_tasks,
                self.fault,
                _describe,
                (_TASK_CREATE, _TASK_INFO, _TASK_DONE, _TASK_BLOCK),
                (int(TaskOutcome.OK), int(TaskOutcome.CANCELLED), int(TaskOutcome.FAILED)),
            )
            run = backend.asyncio_install(
                handle,
                exc_helper,
                _slow_call,
                self.on_loop,
                self.task_done,
                self.task_types,
                (self.py_step, self.py_wakeup),
                self.plain_future,
                _C_KINDS,
                self.wait_mode,
            )
        else:
            run = self._make_py_run(exc_helper)
        try:
            self._patch(handle, "_run", original_run, run)
            create_task = (
                backend.asyncio_create_task(patches[0][2])
                if self.use_c
                else self._wrap_create_task(patches[0][2])
            )
            self._patch(patches[0][0], "create_task", patches[0][2], create_task)
            self._patch(patches[1][0], "run_forever", patches[1][2], self._wrap_run_forever(patches[1][2]))
            set_task_name = self.tasks.__dict__.get("_set_task_name")
            if isinstance(set_task_name, types.FunctionType):
                self._patch(
                    self.tasks, "_set_task_name", set_task_name, self._wrap_set_task_name(set_task_name)
                )
            if self.source.sync_waits:
                self._patch_get_loop()
            self._patch_timeouts()
            self._note_policy()
            self._note_existing_tasks()
            running = events._get_running_loop()
            if running is not None:
                self.instrument_loop(running)
        except BaseException:
            self.remove()
            raise

    def _patch_timeouts(self) -> None:
        """Wrap the TIMEOUT_CALLBACKS of modules imported already; watch for the others."""
        for module_name, cls_name, method, holder in TIMEOUT_CALLBACKS:
            module = sys.modules.get(module_name)
            if module is not None:
                self._patch_timeout(module, cls_name, method, holder)
                continue

            imported = functools.partial(self._timeout_module_imported, cls_name, method, holder)
            self.timeout_watchers.append(ImportWatcher(module_name, imported).install())
        self._patch_release_waiter()

    def _patch_release_waiter(self) -> None:
        """Wrap ``asyncio.tasks._release_waiter``: the timer of ``wait_for`` on 3.11 (3.12+
        use ``timeout()``) and of ``wait(..., timeout=)`` calls it when the time is up."""
        self._wrap_timeout(self.tasks, "_release_waiter", _release_waiter_timed_out)

    def _timeout_module_imported(
        self, cls_name: str, method: str, holder: str, module: types.ModuleType
    ) -> None:
        with self.loops_lock:
            if self.active:
                self._patch_timeout(module, cls_name, method, holder)

    def _patch_timeout(self, module: types.ModuleType, cls_name: str, method: str, holder: str) -> None:
        self._wrap_timeout(getattr(module, cls_name, None), method, functools.partial(_guarded_tasks, holder))

    def _wrap_timeout(self, owner: Any, name: str, timed_out: Callable[..., Any]) -> None:
        """Wrap the function ``name`` of ``owner`` (a class or a module), which runs when a
        timeout runs out, to record TASK_TIMEOUT for each task ``timed_out(*its
        arguments)`` names, before it runs."""
        original = getattr(owner, "__dict__", {}).get(name)
        if not isinstance(original, types.FunctionType):
            return  # not the library we know
        hooks = self
        record = backend.record

        @functools.wraps(original)
        def on_timeout(*args: Any, **kwargs: Any) -> Any:
            if hooks.active:
                try:
                    for task in timed_out(*args):
                        if task is not None and not task.done():
                            record(_TASK_TIMEOUT, id(task))
                except Exception as exc:
                    hooks.fault(exc)
            return original(*args, **kwargs)

        self._patch(owner, name, original, on_timeout)

    def _patch_get_loop(self) -> None:
        """Wrap ``asyncio.mixins._LoopBoundMixin._get_loop``: asyncio's locks and queues
        call it only when they are about to block (see _SYNC_SITES)."""
        mixin = getattr(sys.modules.get("asyncio.mixins"), "_LoopBoundMixin", None)
        original = getattr(mixin, "__dict__", {}).get("_get_loop")
        if not isinstance(original, types.FunctionType):
            return  # not the asyncio we know: no sync waits
        if self.use_c:
            c_sites, c_outer = _sync_site_codes()
            if c_sites:
                own = tuple(
                    m.__dict__
                    for m in (sys.modules.get("asyncio.locks"), sys.modules.get("asyncio.queues"))
                    if m
                )
                self._patch(
                    mixin, "_get_loop", original, backend.asyncio_get_loop(original, c_sites, c_outer, own)
                )
            return
        sites, outer = _sync_sites()
        if sites:
            self._patch(mixin, "_get_loop", original, self._make_get_loop(original, sites, outer))

    def _make_get_loop(
        self,
        original: Callable[[Any], Any],
        sites: dict[int, tuple[int, str, bool]],
        outer: dict[int, str],
    ) -> Callable[[Any], Any]:
        hooks = self
        record = backend.record
        getframe = sys._getframe
        current_task = self.tasks.current_task
        # frames of these modules are asyncio's: the stack starts at the first other one
        own = tuple(
            m.__dict__ for m in (sys.modules.get("asyncio.locks"), sys.modules.get("asyncio.queues")) if m
        )
        own_a = own[0] if own else None
        own_b = own[-1] if own else None
        now = backend.now
        # (id(code), instruction offset, library callers) of the waiting frame -> [site
        # id, when its stack was last recorded]
        site_table: dict[tuple[int, int, tuple[tuple[int, int], ...]], list[int]] = {}
        new_site = itertools.count(1).__next__  # atomic under the GIL, unlike len(site_table)

        @functools.wraps(original)
        def _get_loop(self: Any) -> Any:
            loop = original(self)  # raises what asyncio raises, before we do anything
            if loop is None or not hooks.active:
                return loop
            try:
                f: types.FrameType | None = getframe(1)
                assert f is not None
                site = sites.get(id(f.f_code))
                if site is None:
                    return loop
                task = current_task(loop)
                if task is None:
                    return loop
                reason, what, refine = site
                # out of asyncio (__aenter__, wait_for, Barrier, Queue.join): the user's line
                # innermost, and fewer frames for the core to walk
                f = f.f_back
                while f is not None and (f.f_globals is own_a or f.f_globals is own_b):
                    if refine:  # Event/Condition waits inside Queue.join, Barrier.wait
                        found = outer.get(id(f.f_code))
                        if found is not None:
                            what = found
                            refine = False
                    f = f.f_back
                if f is None:
                    record(_TASK_BLOCK, id(task), reason, id(self), what, 0, None)
                    return loop
                key = (id(f.f_code), f.f_lasti, _caller_chain(f))
                entry = site_table.get(key)
                t = now()
                if entry is None:
                    if len(site_table) >= MAX_SITES:
                        site_table.clear()
                    entry = site_table[key] = [new_site(), t]
                elif t - entry[1] < SITE_STACK_INTERVAL:
                    # walking the stack is most of the cost: once a second per site
                    record(_TASK_BLOCK, id(task), reason, id(self), what, entry[0], None)
                    return loop
                else:
                    entry[1] = t
                record(_TASK_BLOCK, id(task), reason, id(self), what, entry[0], f)
                f = None
            except Exception as exc:
                hooks.fault(exc)
            return loop

        return _get_loop

    def _patch(self, owner: Any, name: str, original: Any, ours: Any) -> None:
        setattr(owner, name, ours)
        self.patches.append((owner, name, original, ours))

    def remove(self) -> None:
        """Undo everything; safe to call more than once and from any thread."""
        with self.loops_lock:
            self.active = False
            loops = list(self.loops.items())
            self.loops = weakref.WeakKeyDictionary()
        if self.use_c:
            backend.asyncio_uninstall()
        watchers, self.timeout_watchers = self.timeout_watchers, []
        for watcher in watchers:
            watcher.remove()
        errors: list[BaseException] = []
        for owner, name, original, ours in reversed(self.patches):
            try:
                if owner.__dict__.get(name) is ours:  # else someone wrapped us: ours stays, inert
                    setattr(owner, name, original)
            except Exception as exc:
                errors.append(exc)
        self.patches = []
        unregister = _metrics_function("unregister_loop")
        for loop, info in loops:
            try:
                if info is not None:
                    self._unwrap_selector(info)
                if unregister is not None:
                    unregister(loop)
            except Exception as exc:
                errors.append(exc)
        del loops
        try:
            for tid in list(self.live_tasks):
                backend.clear_live(tid)
            for key in list(self.foreign):
                backend.clear_live(("asyncio-foreign", key))
        except Exception as exc:
            errors.append(exc)
        self.live_tasks.clear()
        self.py_running.clear()
        if errors:
            raise errors[0]

    def fault(self, exc: BaseException) -> None:
        self.source.failed(exc)

    # loops ---------------------------------------------------------------------

    def on_loop(self, loop: Any) -> None:
        """A thread runs a step of (or starts) a loop: instrument it if new."""
        try:
            if self.active and loop not in self.loops:
                self.instrument_loop(loop)
        except Exception as exc:
            self.fault(exc)

    def instrument_loop(self, loop: Any) -> None:
        if not isinstance(loop, self.base_events.BaseEventLoop):  # its handles come through us
            with self.loops_lock:  # all the same, but it has no selector we know of
                if self.active:
                    self.loops[loop] = None
            return
        with self.loops_lock:  # against a concurrent remove(): nothing wrapped after it
            if not self.active or loop in self.loops:
                return
            self.loops[loop] = self._wrap_selector(loop)
        register = _metrics_function("register_loop")
        if register is not None:
            register(loop)

    def _wrap_selector(self, loop: Any) -> tuple[Any, Any, Any, bool] | None:
        selector = getattr(loop, "_selector", None)
        attrs = getattr(selector, "__dict__", None)
        if not isinstance(selector, selectors.BaseSelector) or attrs is None:
            return None  # a proactor, a test's mock: leave it alone
        previous = attrs.get("select", _MISSING)
        left, earlier = _idle_select_previous(previous)
        if left:  # left by an earlier install: replace it
            previous = earlier
            if previous is _MISSING:
                del attrs["select"]
            else:
                attrs["select"] = previous
        select = selector.select
        ours = self._make_idle_select(select, id(loop), previous)
        had_mark = attrs.get("_pyflight_loop_selector", False) is True
        attrs["select"] = ours  # the instance's own attributes: what `selector.select = ours` does
        attrs["_pyflight_loop_selector"] = True
        return (weakref.ref(selector), ours, previous, had_mark)

    @staticmethod
    def _unwrap_selector(info: tuple[Any, Any, Any, bool]) -> None:
        ref, ours, previous, had_mark = info
        selector = ref()
        if selector is None:
            return
        attrs = selector.__dict__
        if attrs.get("select") is ours:
            if previous is _MISSING:
                del attrs["select"]
            else:
                attrs["select"] = previous
        if not had_mark:
            attrs.pop("_pyflight_loop_selector", None)

    def _make_idle_select(self, select: Any, loop_id: int, previous: Any) -> Any:
        """The selector's ``select`` recording LOOP_IDLE_BEGIN/END around waits that may
        block (in C with the C core: it runs on every turn of the loop)."""
        if self.use_c:
            return backend.asyncio_idle_select(select, loop_id, previous, _IDLE_BEGIN, _IDLE_END)
        hooks = self
        record = backend.record
        is_enabled = backend.is_enabled

        def idle_select(timeout: float | None = None) -> Any:
            if (timeout is not None and timeout <= 0) or not hooks.active or not is_enabled():
                return select(timeout)  # a poll, not an idle wait
            try:
                record(_IDLE_BEGIN, loop_id)
            except Exception as exc:
                hooks.fault(exc)
                return select(timeout)
            ready = None
            try:
                ready = select(timeout)
                return ready
            finally:
                try:
                    record(_IDLE_END, loop_id, len(ready) if ready is not None else 0)
                except Exception as exc:
                    hooks.fault(exc)

        idle_select._pyflight_idle = True  # type: ignore[attr-defined]
        idle_select._pyflight_previous = previous  # type: ignore[attr-defined]
        return idle_select

    def note_foreign(self, loop_type: type) -> None:
        """A loop we cannot instrument: say so once per loop class, in every generation."""
        key = f"{loop_type.__module__}.{loop_type.__qualname__}"
        self._note_foreign_key(key, f"event loop {key} is not an asyncio.BaseEventLoop")

    def _note_foreign_key(self, key: str, what: str) -> None:
        if key in self.foreign:
            return
        self.foreign.add(key)
        reason = f"{what}: its tasks, steps and callbacks are not traced (sampling-only coverage)"
        backend.set_live(("asyncio-foreign", key), int(Kind.DATA_LOSS), "asyncio", 0, reason)
        warnings.warn(f"pyflight: {reason}", SourceWarning, stacklevel=2)

    def _note_policy(self) -> None:
        policy = getattr(self.events, "_event_loop_policy", None)
        if policy is not None and not type(policy).__module__.startswith("asyncio"):
            new_loop = getattr(policy, "_loop_factory", None)
            if isinstance(new_loop, type) and not issubclass(new_loop, self.base_events.BaseEventLoop):
                self.note_foreign(new_loop)
            elif type(policy).__module__.split(".")[0] == "uvloop":
                key = f"{type(policy).__module__}.{type(policy).__qualname__}"
                self._note_foreign_key(
                    key, f"event loop policy {key} makes loops that are not BaseEventLoops"
                )

    def check_foreign_loops(self) -> None:
        """Event loops with tasks whose steps never came through Handle._run: not
        BaseEventLoops (uvloop: ``uvloop.run``, ``Runner(loop_factory=...)``, uvicorn's
        default), their steps cannot be traced. Looks at the loops running a step now
        and at the loops of a few live tasks."""
        loops = set()
        for owner in (self.tasks, sys.modules.get("_asyncio")):
            current = getattr(owner, "_current_tasks", None)
            if isinstance(current, dict):
                loops.update(list(current))  # one C call: a consistent copy
        for name in ("_scheduled_tasks", "_all_tasks", "_eager_tasks"):
            found = getattr(self.tasks, name, None)
            if isinstance(found, (weakref.WeakSet, set)):
                try:
                    for task in itertools.islice(found, FOREIGN_TASKS_CHECKED):
                        loops.add(task.get_loop())
                except (RuntimeError, AttributeError):
                    pass  # changed while we looked (another thread), or not a Task: next time
        for loop in loops:
            if (
                isinstance(loop, self.events.AbstractEventLoop)
                and not isinstance(loop, self.base_events.BaseEventLoop)
                and loop not in self.loops
            ):
                self.note_foreign(type(loop))
        self._note_policy()

    # tasks ---------------------------------------------------------------------

    def _note_existing_tasks(self) -> None:
        for task in _all_tasks(self.tasks):
            try:
                if task.done():
                    continue
                tid = id(task)
                name = task.get_name()
                coro = _callback_name(task.get_coro())
            except Exception:  # a foreign Task-like object: skip it
                continue
            backend.set_live(tid, _TASK_INFO, tid, name if type(name) is str else str(name), coro, 0)
            self.live_tasks[tid] = 0

    def _wrap_create_task(self, original: Any) -> Any:
        hooks = self
        is_enabled = backend.is_enabled
        current_task = self.tasks.current_task
        live_tasks = self.live_tasks
        coroutine = types.CoroutineType
        task_types: Any = self.task_types

        @functools.wraps(original)
        def create_task(loop: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
            task = original(loop, coro, *args, **kwargs)
            if hooks.active and is_enabled():
                try:  # what task_created does, inline: this runs for every task
                    tid = id(task)
                    get_name = getattr(task, "get_name", None)  # a task factory may return anything
                    name = get_name() if get_name is not None else ""
                    if type(name) is not str:
                        name = str(name)
                    coro_name = coro.__qualname__ if type(coro) is coroutine else _callback_name(coro)
                    parent = current_task(loop)
                    pid = id(parent) if parent is not None and parent is not task else 0
                    backend.record(_TASK_CREATE, tid, name, coro_name, pid)
                    backend.set_live(tid, _TASK_INFO, tid, name, coro_name, pid)
                    live_tasks[tid] = pid
                    if isinstance(task, task_types) and task.done():  # an eager task, finished already
                        hooks.task_done(task)
                except Exception as exc:
                    hooks.fault(exc)
            return task

        return create_task

    def task_done(self, task: Any) -> None:
        """The step that just ran finished `task` (called by Handle._run)."""
        try:
            tid = id(task)
            if task.cancelled():
                outcome, error = TaskOutcome.CANCELLED, ""
            else:
                # not task.exception(): that would mark the exception as retrieved
                exc = getattr(task, "_exception", None)
                if isinstance(exc, BaseException):
                    outcome, error = TaskOutcome.FAILED, _describe(exc)
                else:
                    outcome, error = TaskOutcome.OK, ""
            known = tid in self.live_tasks
            if not known:
                # made without create_task (``asyncio.Task(...)`` directly: aiohttp's
                # handlers on 3.12+): announced at its end, once, so that it has a name
                get_name, get_coro = getattr(task, "get_name", None), getattr(task, "get_coro", None)
                name = str(get_name()) if get_name is not None else ""
                coro = get_coro() if get_coro is not None else None
                backend.record(_TASK_INFO, tid, name, _callback_name(coro) if coro is not None else "", 0)
            backend.record(_TASK_DONE, tid, int(outcome), error)
            if known and self.live_tasks.pop(tid, None) is not None:
                backend.clear_live(tid)
        except Exception as exc:
            self.fault(exc)

    def _wrap_set_task_name(self, original: Any) -> Any:
        hooks = self

        @functools.wraps(original)
        def _set_task_name(task: Any, name: Any) -> None:
            original(task, name)
            if name is not None and hooks.active:
                hooks.task_renamed(task)

        return _set_task_name

    def task_renamed(self, task: Any) -> None:
        """3.11/3.12 ``asyncio.create_task(name=...)`` and ``TaskGroup.create_task(name=...)``
        name the task after ``loop.create_task``: record its info again with the name."""
        try:
            tid = id(task)
            pid = self.live_tasks.get(tid)
            if pid is not None and backend.is_enabled():
                name = task.get_name()
                coro = _callback_name(task.get_coro())
                backend.set_live(tid, _TASK_INFO, tid, name if type(name) is str else str(name), coro, pid)
        except Exception as exc:
            self.fault(exc)

    # the Python Handle._run ----------------------------------------------------

    def _make_py_run(self, exc_helper: Callable[[Any, BaseException], None]) -> Callable[[Any], None]:
        hooks = self
        is_enabled = backend.is_enabled

        def _run(self: Any) -> None:
            step = hooks.py_begin(self) if hooks.active and is_enabled() else None
            ok = False
            try:
                try:
                    self._context.run(self._callback, *self._args)
                    ok = True
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    exc_helper(self, exc)
            finally:
                if step is not None:
                    hooks.py_end(step, ok)
            self = None  # Needed to break cycles when an exception occurs.
            step = None

        _run.__qualname__ = "Handle._run"
        return _run

    def step_task(self, cb: Any) -> Any:
        """The Task whose step `cb` is, or None (the C core's step_task)."""
        t = type(cb)
        if t is types.MethodType:
            func = cb.__func__
            if func is not None and (func is self.py_step or func is self.py_wakeup):
                return cb.__self__
            return None
        if t.__name__ == "TaskStepMethWrapper" or (
            isinstance(cb, types.BuiltinMethodType) and cb.__name__ == "task_wakeup"
        ):
            task = getattr(cb, "__self__", None)
            if isinstance(task, self.task_types):
                return task
        return None

    def py_begin(self, handle: Any) -> tuple[int, Any, Any, int, tuple[int, str] | None, bool] | None:
        try:
            cb = handle._callback
            loop = getattr(handle, "_loop", None)
            loop_id = id(loop) if loop is not None else 0
            tls = self.tls
            if loop is not None and getattr(tls, "loop_id", 0) != loop_id:
                tls.loop_id = loop_id
                self.on_loop(loop)
            task = self.step_task(cb)
            deferred = None
            start = backend.now()
            if task is not None:
                task_id = id(task)
                backend.record(_TASK_STEP_BEGIN, task_id)
            else:
                task_id = 0
                if isinstance(cb, types.BuiltinFunctionType):  # recorded only if it lasts (see py_end)
                    deferred = (start, _callback_name(cb))
                else:
                    backend.record(_CALLBACK_BEGIN, loop_id, _callback_name(cb))
            ident = threading.get_ident()
            running = self.py_running
            previous = running.get(ident)
            running[ident] = (loop_id, task_id, start)
            sent = _sends.flag
            outer_sent = getattr(sent, "on", False)
            sent.on = False
            return (ident, previous, task, loop_id, deferred, outer_sent)
        except Exception as exc:
            self.fault(exc)
            return None

    def py_end(self, step: tuple[int, Any, Any, int, tuple[int, str] | None, bool], ok: bool) -> None:
        try:
            ident, previous, task, loop_id, deferred, outer_sent = step
            sent = _sends.flag.on
            _sends.flag.on = outer_sent or sent
            if previous is None:
                self.py_running.pop(ident, None)
            else:
                self.py_running[ident] = previous
            if task is None:
                if deferred is not None:  # a builtin callback: kept only if it lasted
                    start, name = deferred
                    if backend.now() - start < BUILTIN_CALLBACK_MIN_NS:
                        return
                    backend.record_at(start, _CALLBACK_BEGIN, loop_id, name)
                backend.record(_CALLBACK_END, loop_id)
                return
            if sent:  # TASK_SENT dated as the END, as the reader makes it from TASK_STEP_SENT
                t = backend.now()
                backend.record_at(t, _TASK_STEP_END, id(task))
                backend.record_at(t, _TASK_SENT, id(task))
            else:
                backend.record(_TASK_STEP_END, id(task))
            if not ok or not self.active:
                return
            waiter = task._fut_waiter
            if waiter is None:
                if task.done():
                    self.task_done(task)
                    return
                what = ""
            else:
                what = "" if type(waiter) is self.plain_future else type(waiter).__name__
            if self.wait_mode >= 2 or (self.wait_mode and what):  # "what": "" says no more than the step end
                frame = _awaiting_frame(task) if self.wait_mode >= 2 else None
                backend.record(_TASK_WAIT, id(task), _AWAIT, what, frame)
        except Exception as exc:
            self.fault(exc)

    def running_steps(self) -> list[tuple[int, int, int, int]]:
        if self.use_c:
            steps: list[tuple[int, int, int, int]] = backend.running_steps()
            return steps
        return [(ident, *entry) for ident, entry in list(self.py_running.items())]

    # run_forever ---------------------------------------------------------------

    def _wrap_run_forever(self, original: Any) -> Any:
        hooks = self

        @functools.wraps(original)
        def run_forever(loop: Any, *args: Any, **kwargs: Any) -> Any:
            if hooks.active:
                hooks.on_loop(loop)
            return original(loop, *args, **kwargs)

        return run_forever

    # stall watchdog --------------------------------------------------------------

    def watch_once(self, now: int, threshold: int, due_at: dict[tuple[int, int, int], int]) -> None:
        """One poll of the watchdog (see AsyncioSource._watch)."""
        self._check_stalls(now, threshold, due_at)
        if now >= self.next_foreign_check:
            self.next_foreign_check = now + int(FOREIGN_CHECK_INTERVAL * 1e9)
            self.check_foreign_loops()
        if now >= self.next_task_look and self.wait_mode:  # task_wait="off": no TASK_WAIT at all
            scanned = self.look_at_waiting_tasks()
            interval = max(TASK_LOOK_INTERVAL, scanned / TASK_SCAN_RATE)
            self.next_task_look = now + int(interval * 1e9)

    def next_look(self) -> int:
        """When the watchdog must next run Python code (monotonic ns)."""
        return min(self.next_foreign_check, self.next_task_look)

    def look_at_waiting_tasks(self) -> int:
        """TASK_WAIT with the await chain of up to ``TASKS_PER_LOOK`` waiting tasks, drawn
        at random, each once per wait: where a task awaits a plain future (a socket read,
        a library's own future: aiohttp's connection pool) no hook says, and recording the
        chain at every step costs +10-30% (``task_wait="stack"``). A look is a sample of
        the waits by their length, as the stack sampler's ticks are of threads' time; the
        model gives the wait the stack (analysis/builder.py ``task_wait``). Returns the
        number of live tasks scanned."""
        tasks = getattr(self.tasks, "_scheduled_tasks", None) or getattr(self.tasks, "_all_tasks", None)
        if tasks is None:
            return 0
        live = _copy_of(tasks)  # copied, not iterated across the loop's steps
        running = {task for _ident, _loop, task, _start in self.running_steps()}
        looked_at, chosen = self.looked_at, []
        for task in self.rng.sample(live, len(live)) if len(live) <= 4 * TASKS_PER_LOOK else live:
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or id(task) in running or looked_at.get(id(task)) == id(waiter):
                continue
            chosen.append((task, waiter))
            if len(chosen) >= 4 * TASKS_PER_LOOK:
                break
        if len(chosen) > TASKS_PER_LOOK:
            chosen = self.rng.sample(chosen, TASKS_PER_LOOK)
        if len(looked_at) > 4 * len(live) + 64:
            alive = {id(t) for t in live}
            self.looked_at = looked_at = {k: v for k, v in looked_at.items() if k in alive}
        for task, waiter in chosen:
            stack = _await_chain(task)
            if stack:
                looked_at[id(task)] = id(waiter)
                what = "" if type(waiter) is self.plain_future else type(waiter).__name__
                backend.record(_TASK_WAIT, id(task), _AWAIT, what, stack)
        return len(live)

    def _check_stalls(self, now: int, threshold: int, due_at: dict[tuple[int, int, int], int]) -> None:
        frames: dict[int, types.FrameType] | None = None
        seen: set[tuple[int, int, int]] = set()
        for ident, loop_id, task_id, start in self.running_steps():
            duration = now - start
            if duration < threshold:
                continue
            key = (ident, start, task_id)
            seen.add(key)
            due = due_at.get(key, threshold)
            if duration < due:
                continue
            if frames is None:
                frames = backend.current_frames()
            frame = frames.get(ident)
            if frame is None:  # no such thread (left over from before a fork)
                continue
            backend.record(_STALL, loop_id, task_id, duration, frame)
            while due <= duration:
                due *= 2
            due_at[key] = due
        for key in [k for k in due_at if k not in seen]:
            del due_at[key]
        frames = None


@register
class AsyncioSource(Source):
    """asyncio tasks, steps, callbacks, loop idle and stalls (see the module docstring)."""

    name = "asyncio"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        opts = dict(options)
        threshold = opts.pop("stall_threshold", STALL_THRESHOLD)
        task_wait = opts.pop("task_wait", "what")
        sync_waits = opts.pop("sync_waits", True)
        implementation = opts.pop("implementation", "auto")
        if opts:
            raise ValueError(f"unknown option(s) {sorted(opts)}")
        if task_wait is False:  # `--source-option asyncio.task_wait=off` reads "off" as false
            task_wait = "off"
        if task_wait not in WAIT_MODES:
            raise ValueError(f"task_wait must be one of {sorted(WAIT_MODES)}, got {task_wait!r}")
        if implementation not in ("auto", "c", "python"):
            raise ValueError(f"implementation must be 'auto', 'c' or 'python', got {implementation!r}")
        super().__init__(**options)
        self.stall_threshold = 0.0 if threshold is None else float(threshold)
        self.task_wait: str = task_wait
        self.sync_waits = bool(sync_waits)
        self.implementation: str = implementation
        self._hooks: _Hooks | None = None
        self._want = False
        self._watcher: ImportWatcher | None = None
        self._hooks_lock = threading.RLock()
        self._stop = QuietEvent()
        self._hooks_ready = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._pid = os.getpid()

    def _install(self) -> None:
        with self._hooks_lock:
            self._want = True
            self._stop = QuietEvent()
            self._hooks_ready = threading.Event()
            self._pid = os.getpid()
            if _asyncio_ready():
                try:
                    self._install_hooks()
                except BaseException:
                    self._want = False
                    raise
            else:
                self._watcher = ImportWatcher("asyncio", self._asyncio_imported).install()
            if self.stall_threshold > 0:
                # started now, idle until asyncio arrives: the thread set stays the same
                # from start() on, whenever the program imports asyncio
                self._watchdog = threading.Thread(
                    target=self._watch, args=(self._stop, self._hooks_ready), name=WATCHDOG_NAME, daemon=True
                )
                start_without_signals(self._watchdog)

    def _install_hooks(self) -> None:
        global _installed_hooks
        hooks = _Hooks(self)
        hooks.install()
        self._hooks = hooks
        _installed_hooks = hooks
        count_with = _metrics_function("count_tasks_with")
        if count_with is not None:  # the live tasks in O(1), not asyncio.all_tasks each tick
            live = hooks.live_tasks
            count_with(lambda: len(live))
        self._hooks_ready.set()

    def _asyncio_imported(self, module: types.ModuleType) -> None:
        failure: Exception | None = None
        with self._hooks_lock:
            self._remove_watcher()
            if self._want and self._hooks is None and _asyncio_ready():
                try:
                    self._install_hooks()
                except Exception as exc:
                    failure = exc
        if failure is not None:
            self.failed(failure)

    def _remove_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.remove()

    def after_fork_in_child(self) -> None:
        super().after_fork_in_child()
        self._hooks_lock = _thread.RLock()
        if self._watcher is not None:
            self._watcher.after_fork_in_child()
        if self._hooks is not None:
            self._hooks.loops_lock = _thread.allocate_lock()
            for watcher in self._hooks.timeout_watchers:
                watcher.after_fork_in_child()

    def _uninstall(self) -> None:
        global _installed_hooks
        with self._hooks_lock:
            self._want = False
            self._remove_watcher()
            hooks, self._hooks = self._hooks, None
            if _installed_hooks is hooks:
                _installed_hooks = None
            watchdog, self._watchdog = self._watchdog, None
        count_with = _metrics_function("count_tasks_with")
        if count_with is not None and hooks is not None:
            count_with(None)
        forked = os.getpid() != self._pid  # no watchdog here; its Events may be unusable
        if not forked:
            self._stop.set()
            self._hooks_ready.set()
        try:
            if hooks is not None:
                hooks.remove()
        finally:
            if watchdog is not None and watchdog is not threading.current_thread() and not forked:
                watchdog.join(timeout=JOIN_TIMEOUT)

    def _watch(self, stop: QuietEvent, ready: threading.Event) -> None:
        """The "pyflight-stalls" thread: LOOP_STALL for each step running longer than the
        threshold, with its thread's stack now (at 1x, 2x, 4x, ... the threshold). With the
        C core it waits without the GIL until a running step reaches the threshold; else,
        and while a stall lasts, it looks every threshold/4."""
        ready.wait()
        threshold = int(self.stall_threshold * 1e9)
        interval = self.stall_threshold / 4
        due_at: dict[tuple[int, int, int], int] = {}  # step -> duration of its next LOOP_STALL
        # with the C core, wait without the GIL while no step runs long (the program's
        # threads are not made to hand over the GIL 4 times per threshold for nothing)
        stall_wait = getattr(backend, "asyncio_stall_wait", None) if backend.BACKEND == "c" else None
        # the last nap ended at once, on a step Python's look found no stall in (a loop
        # being installed, a step it leaves alone): wait in Python once, never spin
        spurious = False
        while True:
            hooks = self._hooks
            napped = found = False
            if (
                stall_wait is not None
                and hooks is not None
                and hooks.active
                and hooks.use_c
                and not due_at
                and not spurious
            ):
                until_check = (hooks.next_look() - backend.now()) / 1e9  # uvloop & co, waiting tasks
                if until_check > interval:
                    # naps until a running step could reach the threshold, at most this
                    # long (the watchdog notices the recorder stopping within one); no
                    # Python wait before it: each wake-up costs ~50 us and a GIL hand-off
                    found = stall_wait(threshold, until_check, min(self.stall_threshold, LONGEST_NAP))
                    napped = True
            if stop.is_set() or (not napped and stop.wait(interval)):
                return
            hooks = self._hooks
            if hooks is None or not hooks.active:
                continue
            try:
                hooks.watch_once(backend.now(), threshold, due_at)
            except Exception as exc:
                self.failed(exc)
                return
            spurious = found and not due_at


def _await_chain(task: Any) -> tuple[tuple[str, str, int], ...]:
    """The frames of ``task``'s suspended coroutine chain, innermost first, as the
    core's stack entries: the task's coroutine, the one it awaits, and so on."""
    chain: list[tuple[str, str, int]] = []
    get_coro = getattr(task, "get_coro", None)
    coro: Any = get_coro() if get_coro is not None else None
    for _ in range(MAX_AWAIT_CHAIN):
        if type(coro).__name__ in _ASYNC_GENERATOR_AWAITABLES:
            coro = _async_generator_of(coro)
        if type(coro) is types.AsyncGeneratorType:
            frame, awaited = coro.ag_frame, coro.ag_await
        elif hasattr(coro, "cr_await"):
            frame, awaited = getattr(coro, "cr_frame", None), coro.cr_await
        else:
            frame, awaited = getattr(coro, "gi_frame", None), getattr(coro, "gi_yieldfrom", None)
        if frame is None:
            break
        code = frame.f_code
        chain.append((code.co_qualname, code.co_filename, frame.f_lineno or 0))
        coro = awaited
        if coro is None:
            break
    chain.reverse()
    return tuple(chain)


#: What ``async for`` / ``anext`` await on an async generator: objects with no attribute
#: leading to their generator (its frame and what it awaits in turn).
_ASYNC_GENERATOR_AWAITABLES = frozenset({"async_generator_asend", "async_generator_athrow"})


def _async_generator_of(awaitable: Any) -> Any:
    """The async generator an ``asend``/``athrow`` object drives (None if not found): the
    one object the garbage collector's traversal of it names that is one. Only read on
    the watchdog's look at a waiting task, never on the program's path."""
    for ref in gc.get_referents(awaitable):
        if type(ref) is types.AsyncGeneratorType:
            return ref
    return None


def _metrics_function(name: str) -> Any:
    """A function of the metrics source's module, None unless the recorder loaded it
    (this source does not import it: the metrics source may be off)."""
    return getattr(sys.modules.get("pyflight.sources.metrics"), name, None)


#: The stall watchdog's longest nap without the GIL, seconds (see ``asyncio_stall_wait``).
LONGEST_NAP = 0.1
#: Coroutines followed down an await chain at most.
MAX_AWAIT_CHAIN = 64


def _asyncio_ready() -> bool:
    """asyncio fully imported (its package __init__ done)."""
    package = sys.modules.get("asyncio")
    return (
        package is not None
        and all(name in sys.modules for name in ("asyncio.events", "asyncio.base_events", "asyncio.tasks"))
        and hasattr(package, "run")
    )


__all__ = ["STALL_THRESHOLD", "AsyncioSource", "running_steps"]
