"""User annotations: logical tasks (like a request), regions inside them, and log lines.

The current task travels in a contextvar, so it follows awaits and is copied into
asyncio tasks created inside it. When no recorder runs, each call does one check and
returns.

With the C core, ``task`` and ``region`` are the C types of ``_core_annotate.c`` (and a
decorated sync function is a C wrapper): the pure-Python classes below are the
reference behaviour, used with the pure-Python core (``PyTask`` / ``PyRegion`` always).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pyflight.core import backend
from pyflight.core.events import Kind

F = TypeVar("F", bound=Callable[..., Any])

#: Id of the innermost user task of the running context, 0 when none.
current_task_id: ContextVar[int] = ContextVar("pyflight_task", default=0)
_task_ids = itertools.count(1)
_is_enabled = backend.is_enabled
_record = backend.record
_set_live = backend.set_live
_clear_live = backend.clear_live
_K_TASK_BEGIN = int(Kind.USER_TASK_BEGIN)
_K_TASK_END = int(Kind.USER_TASK_END)
_K_TASK_INFO = int(Kind.USER_TASK_INFO)
_K_REGION_BEGIN = int(Kind.REGION_BEGIN)
_K_REGION_END = int(Kind.REGION_END)
_K_LOG = int(Kind.LOG)
#: The C task and region types when they are used (exact types get the C wrapper).
_C_TYPES: tuple[type, ...] = ()


def _decorate(annotation: Any, func: F) -> F:
    """``func`` run inside a fresh ``annotation._fresh()`` per call (sync or async)."""
    fresh = annotation._fresh
    import inspect  # here: a program that never decorates need not import it

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return await func(*args, **kwargs)

        return run_async  # type: ignore[return-value]

    if type(annotation) in _C_TYPES:
        wrapper = backend._annotated(annotation, func)  # C: no Python frame, one check per call
        return functools.update_wrapper(wrapper, func)  # type: ignore[no-any-return, return-value]

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _is_enabled():  # what entering and exiting would amount to
            return func(*args, **kwargs)
        with fresh():
            return func(*args, **kwargs)

    return run  # type: ignore[return-value]


class _Annotation:
    """Shared decorator behaviour: wrap sync and async functions in ``with self``."""

    __slots__ = ()

    def _fresh(self) -> _Annotation:
        raise NotImplementedError

    def __enter__(self) -> _Annotation:
        raise NotImplementedError

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        raise NotImplementedError

    def __call__(self, func: F) -> F:
        return _decorate(self, func)


class task(_Annotation):
    """A logical operation (a request, a job): ``with pyflight.task("GET /users"): ...``."""

    __slots__ = ("_id", "_token", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._id = 0
        self._token: Token[int] | None = None

    def _fresh(self) -> task:
        return PyTask(self.name)

    @property
    def id(self) -> int:
        """The task's id in the trace (0 if it was entered with no recorder running)."""
        return self._id

    def __enter__(self) -> task:
        if _is_enabled():
            try:
                self._id = task_id = next(_task_ids)
                parent = current_task_id.get()
                _record(_K_TASK_BEGIN, task_id, parent, self.name)
                _set_live(("utask", task_id), _K_TASK_INFO, task_id, parent, self.name)
                self._token = current_task_id.set(task_id)
            except Exception:  # annotations never break the program
                self._token = None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                current_task_id.reset(token)
            except ValueError:  # exited in another context (generator juggling): keep going
                pass
            try:
                _clear_live(("utask", self._id))
                _record(_K_TASK_END, self._id)
            except Exception:
                pass


class region(_Annotation):
    """A named stretch of work inside the current task: ``with pyflight.region("parse"): ...``."""

    __slots__ = ("_task", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._task = -1

    def _fresh(self) -> region:
        return PyRegion(self.name)

    def __enter__(self) -> region:
        if _is_enabled():
            try:
                self._task = current_task_id.get()
                _record(_K_REGION_BEGIN, self._task, self.name)
            except Exception:
                self._task = -1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task >= 0:
            try:
                _record(_K_REGION_END, self._task, self.name)
            except Exception:
                pass
            self._task = -1


#: The pure-Python implementations (the only ones with the pure-Python core).
PyTask = task
PyRegion = region

if not TYPE_CHECKING and hasattr(backend, "_annotate_setup"):
    backend._annotate_setup(
        current_task_id,
        (_K_TASK_BEGIN, _K_TASK_END, _K_TASK_INFO, _K_REGION_BEGIN, _K_REGION_END),
        _set_live,
        _clear_live,
        _decorate,
    )
    task = backend.AnnotationTask
    region = backend.AnnotationRegion
    _C_TYPES = (task, region)


def log(category: str, message: str) -> None:
    """Record a message in the current task, e.g. ``pyflight.log("cache", "miss user=42")``."""
    if _is_enabled():
        try:
            _record(_K_LOG, current_task_id.get(), str(category), str(message))
        except Exception:
            pass
