"""What every event source shares: install/remove, and disabling itself on a fault.

A source must never break the program it watches. Hooks call ``self.failed(exc)``
from an ``except Exception`` around their recording code; the source then removes its
hooks, records SOURCE_DISABLED in the trace and warns once.
"""

from __future__ import annotations

import _thread
import threading
import warnings
from typing import Any, ClassVar

from pyflight.core import backend
from pyflight.core.events import Kind


class SourceWarning(RuntimeWarning):
    """A source disabled itself or could not be installed."""


class Source:
    """Base class: subclasses implement ``_install`` and ``_uninstall``."""

    #: Name used in configuration and in SOURCE_DISABLED events.
    name: ClassVar[str] = "source"
    #: On unless the configuration says otherwise.
    default_enabled: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.installed = False
        self.disabled_reason: str | None = None
        self._lock = threading.Lock()

    def install(self) -> None:
        with self._lock:
            if self.installed:
                return
            self._install()
            self.installed = True
            self.disabled_reason = None

    def uninstall(self) -> None:
        with self._lock:
            if not self.installed:
                return
            self.installed = False
            self._uninstall()

    def failed(self, exc: BaseException) -> None:
        """Called by a hook that raised: disable this source, say so in the trace and once as a warning."""
        if self.disabled_reason is not None:
            return
        reason = f"{type(exc).__name__}: {exc}"
        self.disabled_reason = reason
        try:
            self.uninstall()
        except Exception as again:  # removing hooks failed too: nothing more we can do
            reason += f" (and removing it failed: {again!r})"
        try:
            backend.record(Kind.SOURCE_DISABLED, self.name, reason)
        except Exception:
            pass
        warnings.warn(
            f"pyflight: source {self.name!r} disabled after a fault: {reason}", SourceWarning, stacklevel=2
        )

    def after_fork_in_child(self) -> None:
        """In a forked child, before the recorder uninstalls this source: another thread of
        the parent may have held its locks at the fork (a hook's fault disabling it, an
        install racing an import), and that thread does not exist here to release them."""
        self._lock = _thread.allocate_lock()

    def metadata(self) -> dict[str, str]:
        """Keys this source adds to a snapshot's metadata (docs/format.md); none by default."""
        return {}

    def _install(self) -> None:
        raise NotImplementedError

    def _uninstall(self) -> None:
        raise NotImplementedError
