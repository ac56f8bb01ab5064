"""pyflight: an always-on flight recorder for Python processes.

Keep the last seconds of what every thread and asyncio task did, and write them to a
file when something goes wrong::

    rec = pyflight.FlightRecorder(min_age=10, max_bytes=10 * 2**20)
    rec.start()
    ...
    rec.write_to("incident.pyfl")
    trace = pyflight.load("incident.pyfl")

``import pyflight`` loads almost nothing: each public name's module is imported on its
first use (PEP 562), so a recorded process never carries the reader (``load``,
``Trace``...) nor the HTTP trigger (``serve``) unless it uses them, and the commands that
only read traces (``pyflight view``, ``report``, ``export``) never import the recorder
and its sources.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

from pyflight.errors import PyflightError, RecorderError, SnapshotInProgress, TraceFormatError

if TYPE_CHECKING:
    from pyflight.annotate import log, region, task
    from pyflight.format.reader import Event, Frame, Trace, TraceWarning, load
    from pyflight.recorder import FlightRecorder
    from pyflight.triggers.http import serve

#: Public names imported on first use, and the module each comes from.
_LAZY = {
    "FlightRecorder": "pyflight.recorder",
    "log": "pyflight.annotate",
    "region": "pyflight.annotate",
    "task": "pyflight.annotate",
    "Event": "pyflight.format.reader",
    "Frame": "pyflight.format.reader",
    "Trace": "pyflight.format.reader",
    "TraceWarning": "pyflight.format.reader",
    "load": "pyflight.format.reader",
    "serve": "pyflight.triggers.http",
}


#: Submodules that ``import pyflight`` loaded when it imported the recorder eagerly:
#: ``pyflight.recorder.X`` after a plain ``import pyflight`` still works.
_SUBMODULES = frozenset(("annotate", "budget", "core", "format", "recorder", "sources"))


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"pyflight.{name}")  # sets the attribute
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyflight' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Event",
    "FlightRecorder",
    "Frame",
    "PyflightError",
    "RecorderError",
    "SnapshotInProgress",
    "Trace",
    "TraceFormatError",
    "TraceWarning",
    "__version__",
    "load",
    "log",
    "region",
    "serve",
    "task",
]
