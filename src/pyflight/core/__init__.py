"""The recording core: picks the C extension or the pure-Python fallback.

``PYFLIGHT_PURE_PYTHON=1`` forces the fallback; it is also used when the extension
cannot be imported. Both expose the same functions (see docs/internals.md).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

FORCE_PURE_ENV = "PYFLIGHT_PURE_PYTHON"

backend: ModuleType
#: Why the C core is not used, or None if it is.
fallback_reason: str | None = None

# The fallback is imported only when used: with the C core, its module (and what it
# imports) would be ~10,000 more objects for every full garbage collection to walk.
if os.environ.get(FORCE_PURE_ENV, "").strip() not in ("", "0"):
    backend = importlib.import_module("pyflight.core._pycore")
    fallback_reason = f"forced by {FORCE_PURE_ENV}"
else:
    try:
        from pyflight import _core as _c_core
    except ImportError as exc:  # pragma: no cover - depends on the build
        backend = importlib.import_module("pyflight.core._pycore")
        fallback_reason = f"C extension not available: {exc}"
    else:
        backend = _c_core

BACKEND_NAME: str = backend.BACKEND

__all__ = ["BACKEND_NAME", "FORCE_PURE_ENV", "backend", "fallback_reason"]
