"""pyflight: an always-on flight recorder for Python processes.

Keep the last seconds of what every thread and asyncio task did, and write them to a
file when something goes wrong::

    rec = pyflight.FlightRecorder(min_age=10, max_bytes=10 * 2**20)
    rec.start()
    ...
    rec.write_to("incident.pyfl")
    trace = pyflight.load("incident.pyfl")
"""

from __future__ import annotations

__version__ = "0.1.0"

from pyflight.annotate import log, region, task
from pyflight.errors import PyflightError, RecorderError, SnapshotInProgress, TraceFormatError
from pyflight.format.reader import Event, Frame, Trace, TraceWarning, load
from pyflight.recorder import FlightRecorder
from pyflight.triggers.http import serve

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
