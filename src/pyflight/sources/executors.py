"""Carry the current ``pyflight.task`` into thread-pool work.

``ThreadPoolExecutor`` runs a job in a worker thread's own context, so without help a
job submitted inside ``pyflight.task("GET /users")`` (directly or through
``loop.run_in_executor``, which calls ``submit``) would log and block under no task.
Patching ``submit`` at class level reaches every pool, including asyncio's default
one, at one contextvar read per submit; the job is wrapped only when a recorder runs
and the submitter is inside a task, and the wrapper sets the task id around the job
and resets it after, so results, exceptions and cancellation are the pool's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pyflight.annotate import current_task_id
from pyflight.core import backend
from pyflight.sources import register
from pyflight.sources.base import Source


def _in_task(fn: Callable[..., Any], task_id: int) -> Callable[..., Any]:
    """``fn`` run with ``current_task_id`` set to ``task_id`` (and reset after)."""

    def run_in_task(*args: Any, **kwargs: Any) -> Any:
        token = current_task_id.set(task_id)
        try:
            return fn(*args, **kwargs)
        finally:
            current_task_id.reset(token)

    return run_in_task


@register
class ExecutorsSource(Source):
    """Propagates the submitter's pyflight task id into ``ThreadPoolExecutor`` jobs."""

    name = "executors"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._active = False
        self._original: Any = None
        self._ours: Any = None

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
            if source._active:
                try:
                    if backend.is_enabled():
                        task_id = current_task_id.get()
                        if task_id:
                            fn = _in_task(fn, task_id)
                except Exception as exc:
                    source.failed(exc)
            result: Future[Any] = original(executor, fn, *args, **kwargs)
            return result

        self._original, self._ours = original, submit
        self._active = True
        setattr(ThreadPoolExecutor, "submit", submit)  # noqa: B010 - keeps mypy off the signature

    def _uninstall(self) -> None:
        """Put the original back; a patch someone stacked on ours stays (ours goes inert)."""
        self._active = False
        if self._ours is not None and ThreadPoolExecutor.__dict__.get("submit") is self._ours:
            setattr(ThreadPoolExecutor, "submit", self._original)  # noqa: B010
        self._original = self._ours = None
