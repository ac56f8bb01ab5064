"""Thread lifecycle: start, end, renames and uncaught exceptions, one event each.

Why these hooks and no others: ``Thread._bootstrap_inner`` runs first and last on every
thread started through ``threading``, on that thread, so THREAD_START and THREAD_END land
in the new thread's own batch; ``Thread.start`` (on the parent) is the only place that
knows the parent; the ``name`` property setter is the only way to rename a thread; and
``threading.excepthook`` sees every exception that escapes ``run()``, with its traceback.
All of them run once per thread, never per call, so the cost is nil in steady state.

Every generation must name the threads alive in it, so each start and rename also
updates the core's live table (``("thread", tid)``, the key the recorder uses for the
threads that existed before ``start()``), and a thread's end removes it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import register
from pyflight.sources.base import Source
from pyflight.sources.sampler import record_thread_exit, record_thread_start

#: Longest thread name / exception message recorded (they are interned per generation).
MAX_NAME = 256
MAX_MESSAGE = 1000

#: The installed ThreadsSource: the class-level patches exist once per process.
_owner: ThreadsSource | None = None


def _text(value: object, limit: int) -> str:
    """``value`` as an exact ``str`` (the core refuses subclasses), cut to ``limit``."""
    try:
        text = str.__str__(value if isinstance(value, str) else str(value))
    except Exception:  # a user __str__ that fails must not fail us
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _type_name(exc_type: type[BaseException]) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` otherwise."""
    module = getattr(exc_type, "__module__", None)
    qualname = getattr(exc_type, "__qualname__", None) or getattr(exc_type, "__name__", "?")
    name = qualname if module in (None, "builtins") else f"{module}.{qualname}"
    return _text(name, MAX_NAME)


def _is_running(thread: threading.Thread) -> bool:
    """True from the moment ``thread`` runs until the end of its ``_bootstrap_inner``.

    ``threading._active`` loses the thread before our end hook runs (``is_alive()`` stays
    true a little longer), which is what makes a racing rename safe; fall back to
    ``is_alive()`` should that private table ever disappear.
    """
    active = getattr(threading, "_active", None)
    if isinstance(active, dict):
        return active.get(thread.ident) is thread
    return thread.is_alive()


@register
class ThreadsSource(Source):
    """THREAD_START / THREAD_END / THREAD_NAME / THREAD_EXCEPTION and live thread names."""

    name = "threads"
    default_enabled = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._active = False
        # attribute of threading.Thread -> (original, ours), as found/put in Thread.__dict__
        self._patched: dict[str, tuple[Any, Any]] = {}
        self._hook: Callable[[threading.ExceptHookArgs], Any] | None = None
        self._prev_hook: Callable[[threading.ExceptHookArgs], Any] | None = None
        # id(thread object) -> native id of the thread that called start(), until it runs
        self._parents: dict[int, int] = {}
        # orders live-table updates of renames against the thread's end
        self._live_lock = threading.RLock()

    # install / uninstall ----------------------------------------------------------

    def _install(self) -> None:
        global _owner
        if self._patched:
            return
        if _owner is not None:
            raise RuntimeError("the threads source is already installed by another recorder")
        if self.options:
            raise ValueError(f"unknown option(s) {sorted(self.options)}")
        cls = threading.Thread
        orig_bootstrap = cls.__dict__["_bootstrap_inner"]
        orig_start = cls.__dict__["start"]
        orig_name = cls.__dict__["name"]
        if not isinstance(orig_name, property) or orig_name.fset is None or orig_name.fget is None:
            raise RuntimeError("threading.Thread.name is not a settable property")
        name_getter, name_setter = orig_name.fget, orig_name.fset
        source = self

        @functools.wraps(orig_bootstrap)
        def _bootstrap_inner(thread: threading.Thread) -> None:
            started = source._active
            if started:
                source._on_start(thread)
            try:
                orig_bootstrap(thread)
            finally:
                if started and source._active:
                    source._on_end()

        @functools.wraps(orig_start)
        def start(thread: threading.Thread) -> None:
            if source._active:
                try:
                    source._parents[id(thread)] = backend.thread_id()
                except Exception as exc:
                    source.failed(exc)
            try:
                orig_start(thread)
            except BaseException:
                source._parents.pop(id(thread), None)
                raise

        def set_name(thread: threading.Thread, value: str) -> None:
            name_setter(thread, value)
            if source._active:
                source._on_rename(thread)

        name_property = property(name_getter, set_name, orig_name.fdel, orig_name.__doc__)

        def excepthook(args: threading.ExceptHookArgs, /) -> Any:
            if source._active:
                source._on_exception(args)
            return chained_hook(args)

        prev_hook = threading.excepthook
        self._prev_hook = prev_hook
        # threading treats a None hook as "the default one"; calling None would not
        chained_hook = threading.__excepthook__ if prev_hook is None else prev_hook
        self._hook = excepthook
        self._patched = {
            "_bootstrap_inner": (orig_bootstrap, _bootstrap_inner),
            "start": (orig_start, start),
            "name": (orig_name, name_property),
        }
        self._parents.clear()
        self._active = True
        _owner = self
        for attr, (_, ours) in self._patched.items():
            setattr(cls, attr, ours)
        threading.excepthook = excepthook

    def after_fork_in_child(self) -> None:
        super().after_fork_in_child()
        self._live_lock = threading.RLock()  # a parent thread starting or ending held it at the fork

    def _uninstall(self) -> None:
        """Put the originals back; a patch someone stacked on ours stays (ours goes inert)."""
        global _owner
        self._active = False
        cls = threading.Thread
        for attr, (original, ours) in self._patched.items():
            if cls.__dict__.get(attr) is ours:
                setattr(cls, attr, original)
        self._patched = {}
        if self._hook is not None and threading.excepthook is self._hook:
            threading.excepthook = self._prev_hook  # type: ignore[assignment]
        self._hook = self._prev_hook = None
        self._parents.clear()
        if _owner is self:
            _owner = None

    # hooks ------------------------------------------------------------------------

    def _on_start(self, thread: threading.Thread) -> None:
        """On the new thread, before ``run()``: the parent still waits in ``start()``."""
        try:
            record_thread_start()
            tid = backend.thread_id()
            ident = threading.get_ident()
            parent = self._parents.pop(id(thread), 0)
            name = _text(thread.name, MAX_NAME)
            with self._live_lock:
                backend.record(Kind.THREAD_START, tid, name, ident, parent)
                backend.set_live(("thread", tid), Kind.THREAD_INFO, tid, name, ident)
        except Exception as exc:
            self.failed(exc)

    def _on_end(self) -> None:
        """On the ending thread, after ``run()`` and threading's own clean-up."""
        try:
            tid = backend.thread_id()
            record_thread_exit()  # its CPU since the sampler's last look
            with self._live_lock:
                backend.clear_live(("thread", tid))
                backend.record(Kind.THREAD_END, tid)
        except Exception as exc:
            self.failed(exc)

    def _on_rename(self, thread: threading.Thread) -> None:
        """Any thread may rename any other: the event names the renamed thread's tid."""
        try:
            tid = thread.native_id
            if tid is None:  # not started: THREAD_START will carry the name
                return
            name = _text(thread.name, MAX_NAME)
            with self._live_lock:
                if not _is_running(thread):  # ended: its tid may already be someone else's
                    return
                backend.record(Kind.THREAD_NAME, tid, name)
                backend.set_live(("thread", tid), Kind.THREAD_INFO, tid, name, thread.ident or 0)
        except Exception as exc:
            self.failed(exc)

    def _on_exception(self, args: threading.ExceptHookArgs) -> None:
        """Type, message and the stack where it was raised (the traceback's last frame)."""
        try:
            exc_type = args.exc_type
            if isinstance(exc_type, type) and issubclass(exc_type, SystemExit):  # as the default hook
                return
            thread = args.thread
            tid = thread.native_id if thread is not None else None
            if tid is None:
                tid = backend.thread_id()
            frame: FrameType | None = None
            tb = args.exc_traceback
            while tb is not None:
                frame = tb.tb_frame
                tb = tb.tb_next
            message = "" if args.exc_value is None else _text(args.exc_value, MAX_MESSAGE)
            backend.record(Kind.THREAD_EXCEPTION, tid, _type_name(exc_type), message, frame)
        except Exception as exc:
            self.failed(exc)
