"""Run a callback right after the program imports a module, without importing it ourselves.

Some modules cost too much to import just to instrument them (``asyncio``, ``ssl``: ~10 ms
each): a source that wants one patches it if it is already in ``sys.modules``, else puts an
``ImportWatcher`` first on ``sys.meta_path``. The watcher finds nothing itself: on the
import of its module it asks the other finders, and wraps the loader they give so that,
once the module's code has run, ``callback(module)`` is called (once, in the importing
thread, while it still holds that module's import lock: no other thread uses the module
before the callback is done). The watcher then takes itself off ``sys.meta_path``.

A callback that raises (``Exception``) never breaks the import: the exception is dropped
(callbacks report their own faults). ``remove()`` (a source's uninstall) takes the watcher
off; an import already in progress then no longer calls back.

Loaders and finders are duck-typed: no ``importlib.abc`` base, whose import alone is
~6,000 objects for every full garbage collection of the program to walk.
"""

from __future__ import annotations

import _thread
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any


class _ChainedLoader:
    """Loads the module with its real loader, then calls ``on_loaded(module)``."""

    def __init__(self, loader: Any, on_loaded: Callable[[types.ModuleType], None]) -> None:
        self.loader = loader
        self.on_loaded = on_loaded

    def __getattr__(self, name: str) -> Any:  # anything else a loader offers: the real one's
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # the module sees its real loader, as if imported without us
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.on_loaded(module)


class ImportWatcher:
    """Calls ``callback(module)`` once, right after the import of module ``name`` (a full
    dotted name) completes; see the module docstring."""

    def __init__(self, name: str, callback: Callable[[types.ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        # a plain _thread lock: threading.Lock may be the blocking source's traced one
        self._lock = _thread.allocate_lock()
        self._busy = False  # asking the other finders (under the module's import lock)
        self._done = False  # fired or removed: never calls back again

    def install(self) -> ImportWatcher:
        """Put the watcher first on ``sys.meta_path``; returns it."""
        with self._lock:
            if not self._done and self not in sys.meta_path:
                sys.meta_path.insert(0, self)
        return self

    def remove(self) -> None:
        """Take the watcher off ``sys.meta_path``: no callback from now on."""
        with self._lock:
            self._done = True
            self._unlink()

    def after_fork_in_child(self) -> None:
        """A forked child's copy: the thread that held the lock at the fork is gone."""
        self._lock = _thread.allocate_lock()

    @property
    def done(self) -> bool:
        """True once it called back or was removed."""
        return self._done

    def _unlink(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def _loaded(self, module: types.ModuleType) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._unlink()
        try:
            self.callback(module)
        except Exception:  # the import goes on; the callback reports its own faults
            pass

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or self._busy or self._done:
            return None
        self._busy = True  # the import lock of `name` is held: no other thread gets here
        try:
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec: importlib.machinery.ModuleSpec | None = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ChainedLoader(spec.loader, self._loaded)  # type: ignore[assignment]  # duck-typed
        return spec


__all__ = ["ImportWatcher"]
