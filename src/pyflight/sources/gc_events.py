"""Garbage collections as slices: GC_BEGIN / GC_END on the thread that collects.

``gc.callbacks`` is the only hook CPython offers around a collection and it costs
~1-3 us per collection (DESIGN.md), so the pause a request suffered can be pinned on
the GC without any per-allocation cost. The callback does the minimum: one ``record``.
"""

from __future__ import annotations

import gc
from typing import Any

from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import register
from pyflight.sources.base import Source

_GC_BEGIN = int(Kind.GC_BEGIN)
_GC_END = int(Kind.GC_END)


@register
class GCSource(Source):
    """One GC_BEGIN(generation) and one GC_END(generation, collected, uncollectable) per collection."""

    name = "gc"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._callback: Any = None
        self._active = False
        self._in_fault = False

    def _install(self) -> None:
        if self._active:
            return
        if self.options:
            raise ValueError(f"unknown option(s) {sorted(self.options)}")
        self._remove_callback()  # left behind by an earlier fault, if any
        record = backend.record  # bound once: the callback is the hot path of this source
        source = self

        def callback(phase: str, info: dict[str, int]) -> None:
            if not source._active:
                return
            try:
                if phase == "start":
                    record(_GC_BEGIN, info["generation"])
                else:
                    record(_GC_END, info["generation"], info["collected"], info["uncollectable"])
            except Exception as exc:
                source._in_fault = True
                try:
                    source.failed(exc)
                finally:
                    source._in_fault = False

        self._callback = callback
        self._active = True
        gc.callbacks.append(callback)

    def _uninstall(self) -> None:
        self._active = False
        if self._in_fault:
            # CPython walks gc.callbacks by index while calling them: removing ourselves
            # now would make it skip the next callback once. The callback is inert; it
            # goes on the next uninstall() (the recorder's stop) or install().
            return
        self._remove_callback()

    def uninstall(self) -> None:
        super().uninstall()
        if not self._in_fault:
            self._remove_callback()

    def _remove_callback(self) -> None:
        callback = self._callback
        if callback is None:
            return
        self._callback = None
        for i, item in enumerate(gc.callbacks):
            if item is callback:
                del gc.callbacks[i]
                break
