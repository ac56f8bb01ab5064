"""Event sources, one module each. ``REGISTRY`` maps a source name to its class.

The recorder starts every registered source that is enabled by default (or the ones
named in ``FlightRecorder(sources=...)``).
"""

from __future__ import annotations

import importlib

from pyflight.sources.base import Source, SourceWarning

REGISTRY: dict[str, type[Source]] = {}

#: Source modules, in installation order.
SOURCE_MODULES = (
    "threads",
    "gc_events",
    "metrics",
    "executors",
    "sampler",
    "blocking",
    "asyncio_loop",
    "dbapi",
)


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make a source available by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def default_source_names() -> list[str]:
    return [name for name, cls in REGISTRY.items() if cls.default_enabled]


def _load_all() -> None:
    for module in SOURCE_MODULES:
        importlib.import_module(f"pyflight.sources.{module}")


_load_all()

__all__ = ["REGISTRY", "SOURCE_MODULES", "Source", "SourceWarning", "default_source_names", "register"]
