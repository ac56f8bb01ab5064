"""Thread-pool jobs: when each was queued, started and finished, in the submitter's task.

``ThreadPoolExecutor.submit`` is patched at class level, which reaches every pool,
including asyncio's default one (``loop.run_in_executor`` and ``asyncio.to_thread`` call
``submit``). While a recorder runs, each job is recorded three times:

- ``POOL_JOB_QUEUED(pool, job, function, file, line, max_workers, task)`` by the
  submitter, just before the pool queues it: ``pool`` is ``id(executor)``, ``job`` a
  counter, ``function``/``file``/``line`` the callable's code (through
  ``functools.partial``, bound methods and ``asyncio.to_thread``'s ``Context.run``),
  ``task`` the submitter's ``pyflight.task``;
- ``POOL_JOB_BEGIN(pool, job)`` and ``POOL_JOB_END(pool, job)`` by the worker thread,
  right around the job.

The pool is handed ``_run_job`` with the job's facts as leading arguments instead of the
job itself (one Python call per job, no closure): on the worker it records BEGIN, sets
the submitter's task id (so a job submitted inside ``pyflight.task("GET /users")`` logs
and blocks under that task), calls the job, then resets the task and records END.
Results, exceptions and cancellation stay the pool's own: a job cancelled before it
starts never reaches ``_run_job``, so it has no BEGIN; a submit the pool refuses (shut
down) records END without BEGIN. Cost (bench/bench_executors.py, a loaded 2-core
machine, noisy): ~1.6-2.9 us per job with the C core (in a task or not), ~5 us with
the Python core, against ~7-9 us for the pool to take and run a no-op job.

``ProcessPoolExecutor.submit`` is patched too, once the program imports
``concurrent.futures.process`` (importing it ourselves would load ``multiprocessing``
into every program). Its jobs run in other processes, so the parent sees them through
their futures: ``POOL_PROCESSES(pool)`` and ``POOL_JOB_QUEUED`` at submit, BEGIN when the
pool's manager thread hands the job to the workers' call queue (the future's
``set_running_or_notify_cancel``; that queue holds one job more than there are workers,
which the model allows for: analysis/pools.py) and END when its result is back.
"""

from __future__ import annotations

import _thread
import contextvars
import functools
import itertools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import CodeType, FunctionType, ModuleType
from typing import Any

from pyflight.annotate import current_task_id
from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import register
from pyflight.sources._import_watch import ImportWatcher
from pyflight.sources.base import Source

_QUEUED = int(Kind.POOL_JOB_QUEUED)
_BEGIN = int(Kind.POOL_JOB_BEGIN)
_END = int(Kind.POOL_JOB_END)
_PROCESSES = int(Kind.POOL_PROCESSES)
_PROCESS_MODULE = "concurrent.futures.process"

#: Job numbers: unique within the process run (``next`` on a count is atomic under the GIL).
_job_ids = itertools.count(1)


#: code object -> (qualname, file, first line), for plain functions (bounded: cleared when full)
_code_info: dict[CodeType, tuple[str, str, int]] = {}
_CODE_INFO_MAX = 4096


def _code_of(fn: Any) -> tuple[str, str, int]:
    """``(qualname, file, first line)`` of the code ``fn`` will run, ``""``/0 if unknown."""
    if type(fn) is FunctionType and getattr(fn, "__wrapped__", None) is None:  # the common case
        code = fn.__code__
        info = _code_info.get(code)
        if info is None:
            if len(_code_info) >= _CODE_INFO_MAX:
                _code_info.clear()
            info = _code_info[code] = (code.co_qualname, code.co_filename, code.co_firstlineno)
        return info
    try:
        return _code_of_target(fn)
    except Exception:  # odd attributes of an odd callable: name its type only
        return type(fn).__qualname__, "", 0


def _code_of_target(fn: Any) -> tuple[str, str, int]:
    target = fn
    for _ in range(8):  # peel partials, to_thread's Context.run, decorators, bound methods
        if isinstance(target, functools.partial):
            inner = target.func
            if isinstance(getattr(inner, "__self__", None), contextvars.Context) and target.args:
                target = target.args[0]  # asyncio.to_thread: partial(ctx.run, func, *args)
            else:
                target = inner
            continue
        wrapped = getattr(target, "__wrapped__", None)
        if wrapped is not None:
            target = wrapped
            continue
        func = getattr(target, "__func__", None)  # bound method
        if func is not None:
            target = func
            continue
        break
    code = getattr(target, "__code__", None)
    if code is None and not isinstance(target, type) and callable(target):
        code = getattr(type(target).__call__, "__code__", None)  # a callable object
    if code is not None:
        name, file, line = code.co_qualname, code.co_filename, code.co_firstlineno
        if type(name) is str and type(file) is str and type(line) is int:
            return name, file, line
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if type(name) is not str:
        name = type(target).__qualname__
    module = getattr(target, "__module__", None)
    if type(module) is str and module != "builtins":
        name = f"{module}.{name}"  # a builtin such as time.sleep
    return name, "", 0


def _record_queued(executor: Any, fn: Any, task_id: int) -> int:
    """POOL_JOB_QUEUED for ``fn`` submitted to ``executor`` (any pool); its job number."""
    job = next(_job_ids)
    name, file, line = _code_of(fn)
    workers = getattr(executor, "_max_workers", 0)
    if type(workers) is not int or workers < 0:
        workers = 0
    backend.record(_QUEUED, id(executor), job, name, file, line, workers, task_id)
    return job


def _run_job(
    source: ExecutorsSource,
    fn: Callable[..., Any],
    pool: int,
    job: int,
    task_id: int,
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run a job on the worker: POOL_JOB_BEGIN/END around it, in the submitter's task.

    The pool keeps the leading arguments in its work item: cheaper than a closure per job.
    """
    active = source._active
    if active:
        try:
            backend.record(_BEGIN, pool, job)
        except Exception as exc:
            source.failed(exc)
    token = current_task_id.set(task_id) if task_id else None
    try:
        return fn(*args, **kwargs)
    finally:
        if token is not None:
            current_task_id.reset(token)
        if active and source._active:
            try:
                backend.record(_END, pool, job)
            except Exception as exc:
                source.failed(exc)


class _Submitting(threading.local):
    """The process-pool job this thread is submitting, for the work item made inside
    ``submit`` to pick up (``submit`` makes the future and queues it in one call)."""

    pool = 0
    job = 0


def _watch_process_job(source: ExecutorsSource, future: Future[Any], pool: int, job: int) -> None:
    """BEGIN when the manager thread sets ``future`` running, END when it is done; a job
    cancelled before it started gets an END without BEGIN, as a refused one does (a
    thread pool's has neither: its later jobs show it never ran, but a process pool's
    pending jobs are cancelled together by ``shutdown(cancel_futures=True)``)."""
    set_running = future.set_running_or_notify_cancel
    began = False

    def set_running_or_notify_cancel() -> bool:
        nonlocal began
        running = set_running()
        if running and source._active:
            try:
                backend.record(_BEGIN, pool, job)
                began = True
            except Exception as exc:
                source.failed(exc)
        return running

    def done(finished: Future[Any]) -> None:
        if (began or finished.cancelled()) and source._active:
            try:
                backend.record(_END, pool, job)
            except Exception as exc:
                source.failed(exc)

    # an attribute of this future only: the manager thread calls it through the instance
    future.set_running_or_notify_cancel = set_running_or_notify_cancel  # type: ignore[method-assign]
    future.add_done_callback(done)


@register
class ExecutorsSource(Source):
    """POOL_JOB_QUEUED / BEGIN / END for ``ThreadPoolExecutor`` jobs, run in the submitter's task."""

    name = "executors"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._active = False
        self._original: Any = None
        self._ours: Any = None
        self._submitting = _Submitting()
        self._process_patches: list[tuple[Any, str, Any, Any]] = []  # (owner, name, original, ours)
        self._process_watcher: ImportWatcher | None = None
        self._patch_lock = _thread.allocate_lock()  # threading.Lock may be a traced one

    def _install(self) -> None:
        if self._ours is not None:
            return
        if self.options:
            raise ValueError(f"unknown option(s) {sorted(self.options)}")
        original = ThreadPoolExecutor.__dict__["submit"]
        source = self

        @functools.wraps(original)
        def submit(
            executor: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
        ) -> Future[Any]:
            if not source._active:
                result: Future[Any] = original(executor, fn, *args, **kwargs)
                return result
            job = 0
            try:
                if backend.is_enabled():
                    task_id = current_task_id.get()
                    pool = id(executor)
                    job = _record_queued(executor, fn, task_id)
            except Exception as exc:
                job = 0
                source.failed(exc)
            if not job:
                result = original(executor, fn, *args, **kwargs)
                return result

            try:
                result = original(executor, _run_job, source, fn, pool, job, task_id, *args, **kwargs)
            except BaseException:
                if source._active:  # refused (shut down): the job will never run
                    try:
                        backend.record(_END, pool, job)
                    except Exception as exc:
                        source.failed(exc)
                raise
            return result

        self._original, self._ours = original, submit
        self._active = True
        setattr(ThreadPoolExecutor, "submit", submit)  # noqa: B010 - keeps mypy off the signature
        self._watch_process_pools()

    def _uninstall(self) -> None:
        """Put the original back; a patch someone stacked on ours stays (ours goes inert)."""
        self._active = False
        if self._ours is not None and ThreadPoolExecutor.__dict__.get("submit") is self._ours:
            setattr(ThreadPoolExecutor, "submit", self._original)  # noqa: B010
        self._original = self._ours = None
        with self._patch_lock:
            if self._process_watcher is not None:
                self._process_watcher.remove()
                self._process_watcher = None
            for owner, name, original, ours in reversed(self._process_patches):
                if vars(owner).get(name) is ours:
                    setattr(owner, name, original)
            self._process_patches = []

    def after_fork_in_child(self) -> None:
        super().after_fork_in_child()
        self._patch_lock = _thread.allocate_lock()  # threading.Lock may be a traced one
        if self._process_watcher is not None:
            self._process_watcher.after_fork_in_child()

    # process pools ---------------------------------------------------------------

    def _watch_process_pools(self) -> None:
        """Patch ``ProcessPoolExecutor`` now if its module is imported, else right after
        the program imports it."""
        module = sys.modules.get(_PROCESS_MODULE)
        if module is None:
            watcher = ImportWatcher(_PROCESS_MODULE, self._process_module_imported)
            with self._patch_lock:
                self._process_watcher = watcher.install()
            module = sys.modules.get(_PROCESS_MODULE)  # imported meanwhile by another thread
            if module is None or not hasattr(module, "ProcessPoolExecutor"):
                return
            watcher.remove()
        self._process_module_imported(module)

    def _process_module_imported(self, module: ModuleType) -> None:
        try:
            self._patch_process_pools(module)
        except Exception as exc:
            self.failed(exc)

    def _patch_process_pools(self, module: ModuleType) -> None:
        """``ProcessPoolExecutor.submit`` records the job; the module's ``_WorkItem``
        (what ``submit`` wraps the new future in) hands that job to the future."""
        executor = getattr(module, "ProcessPoolExecutor", None)
        work_item = getattr(module, "_WorkItem", None)
        if (
            not isinstance(executor, type)
            or not isinstance(work_item, type)
            or "submit" not in vars(executor)
        ):
            return  # not the standard library's layout: leave it alone
        source, submitting = self, self._submitting
        original_submit = vars(executor)["submit"]

        @functools.wraps(original_submit)
        def submit(pool_executor: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            job = 0
            if source._active and backend.is_enabled():
                try:
                    pool = id(pool_executor)
                    backend.record(_PROCESSES, pool)
                    job = _record_queued(pool_executor, fn, current_task_id.get())
                    submitting.pool, submitting.job = pool, job
                except Exception as exc:
                    job = 0
                    source.failed(exc)
            try:
                result: Future[Any] = original_submit(pool_executor, fn, *args, **kwargs)
            except BaseException:
                if job and submitting.job and source._active:  # refused: no work item made
                    try:
                        backend.record(_END, submitting.pool, job)
                    except Exception as exc:
                        source.failed(exc)
                raise
            finally:
                submitting.job = 0
            return result

        def init(item: Any, future: Any, *args: Any, **kwargs: Any) -> None:
            work_item.__init__(item, future, *args, **kwargs)  # type: ignore[misc]
            job = submitting.job
            if job and isinstance(future, Future):
                submitting.job = 0
                try:
                    _watch_process_job(source, future, submitting.pool, job)
                except Exception as exc:
                    source.failed(exc)

        traced_item = type(
            work_item.__name__, (work_item,), {"__init__": init, "__module__": module.__name__}
        )
        with self._patch_lock:
            if not self._active or self._process_patches:
                return
            patches = [
                (executor, "submit", original_submit, submit),
                (module, "_WorkItem", work_item, traced_item),
            ]
            for owner, name, _original, ours in patches:
                setattr(owner, name, ours)
            self._process_patches = patches
