"""Running a program under the recorder (``pyflight run``), and recording its children.

The program runs in this process, as ``python SCRIPT`` / ``python -m MOD`` would run
it: its own ``__main__`` module, ``sys.argv``, ``sys.path[0]``, exit status, and death
by SIGTERM (the window is written first). The window goes to OUT at interpreter exit,
after the program's non-daemon threads and atexit handlers.

Children are recorded into ``<OUT stem>-<pid><suffix>`` beside OUT:

- Python started anew (``subprocess``, multiprocessing *spawn*/*forkserver*): the
  environment carries the settings (``PYFLIGHT_RUN``) and a directory with a
  ``sitecustomize`` on ``PYTHONPATH`` that starts a recorder at startup
  (see ``pyflight/_bootstrap``).
- ``os.fork`` (and multiprocessing *fork*): a fork hook starts a fresh recorder in the
  child (the inherited one is discarded by the recorder itself). Multiprocessing
  workers leave through ``os._exit``, so their ``BaseProcess._bootstrap`` is wrapped to
  write before it returns.
"""

from __future__ import annotations

import atexit
import builtins
import importlib.machinery
import importlib.util
import io
import json
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pyflight.core import daemon
from pyflight.errors import PyflightError, RecorderError, SnapshotInProgress
from pyflight.recorder import FlightRecorder, _install_fork_hook
from pyflight.triggers import control, signals
from pyflight.triggers.signal_watch import HandlerWatch
from pyflight.triggers.snapshots import mark

#: Settings inherited by child processes (JSON).
ENV_VAR = "PYFLIGHT_RUN"
#: Directory with the ``sitecustomize`` that children import at startup.
BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
#: Directory that contains the ``pyflight`` package (for children that lack it on sys.path).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: How long a SIGTERM handler waits for the window to be written before dying anyway.
SIGTERM_WRITE_TIMEOUT_S = 10.0
#: How long the exit write waits for a snapshot under way elsewhere (a signal's, an
#: endpoint's) before giving up; and, after it, for snapshots that started meanwhile.
EXIT_WAIT_S = 5.0
#: How long ``os._exit`` waits for the window to be written before exiting regardless.
OS_EXIT_WRITE_TIMEOUT_S = 5.0
#: How long a forked child runs before its recorder's threads (sampler, ticker, control
#: channel...) start; its events are recorded from the fork on.
CHILD_THREADS_DELAY_S = 0.1
#: Children started for multiprocessing's own housekeeping: not recorded (their forks are).
_HELPER_COMMANDS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


class RunError(PyflightError):
    """The program could not be started (no such script or module, bad output path...)."""


say = signals.say


@dataclass
class RunConfig:
    """What ``pyflight run`` records and where it writes."""

    output: str
    min_age: float = 10.0
    max_bytes: int = 10 * 2**20
    #: Record child Python processes too.
    children: bool = True
    #: Record this process itself (False: only its children, e.g. a pre-fork server's
    #: workers without the idle master; ``--children-only``).
    record_self: bool = True
    #: Signal that writes a snapshot into ``snapshot_dir`` (None: none).
    snapshot_signal: int | None = int(signal.SIGUSR2)
    #: Where signal (and trigger) snapshots go; default: OUT's directory.
    snapshot_dir: str | None = None
    #: Disk quota for ``snapshot_dir`` (oldest pyflight files removed first).
    quota_bytes: int | None = None
    #: Serve ``pyflight snapshot PID`` requests on a Unix socket.
    control: bool = True
    #: The sources to record (None: the defaults).
    sources: list[str] | None = None
    #: The recorder's CPU cap, a share of the process's CPU (None: no cap).
    cpu_budget: float | None = 0.01
    #: Options of the event sources, by source (``{"asyncio": {"task_wait": "stack"}}``).
    source_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``(host, port)`` for the debug HTTP endpoint (parent process only).
    serve: tuple[str, int] | None = None
    token: str | None = None
    allow_remote: bool = False
    #: Hide secret-looking arguments in the traces' argv (``--no-redact``: keep them).
    redact: bool = True
    #: What the program's own stderr is ("st_dev:st_ino" of fd 2, set in the process
    #: ``pyflight run`` starts): a child whose stderr is the same file writes its exit line
    #: there (the server's log); one with another stderr (a pipe its parent reads) is silent.
    stderr_id: str | None = None
    #: Called with the running recorder, in the parent only: automatic triggers go here.
    setup: list[Callable[[FlightRecorder], object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.output = os.path.abspath(self.output)  # children may chdir
        if self.snapshot_dir is not None:
            self.snapshot_dir = os.path.abspath(self.snapshot_dir)

    @property
    def signal_dir(self) -> str:
        return self.snapshot_dir or os.path.dirname(self.output)

    def child_output(self, pid: int) -> str:
        """``out.pyfl`` -> ``out-<pid>.pyfl``, beside it."""
        stem, suffix = os.path.splitext(self.output)
        return f"{stem}-{pid}{suffix or '.pyfl'}"

    def to_env(self) -> str:
        return json.dumps(
            {
                "output": self.output,
                "min_age": self.min_age,
                "max_bytes": self.max_bytes,
                "snapshot_signal": self.snapshot_signal,
                "snapshot_dir": self.snapshot_dir,
                "quota_bytes": self.quota_bytes,
                "control": self.control,
                "sources": self.sources,
                "cpu_budget": self.cpu_budget,
                "source_options": self.source_options,
                "redact": self.redact,
                "stderr_id": self.stderr_id,
                # read by the bootstrap before importing pyflight
                "cache_tag": sys.implementation.cache_tag,
                "package_parent": PACKAGE_PARENT,
            }
        )

    @classmethod
    def from_env(cls, text: str) -> RunConfig:
        data = json.loads(text)
        return cls(
            output=str(data["output"]),
            min_age=float(data["min_age"]),
            max_bytes=int(data["max_bytes"]),
            children=True,
            snapshot_signal=None if data.get("snapshot_signal") is None else int(data["snapshot_signal"]),
            snapshot_dir=data.get("snapshot_dir"),
            quota_bytes=None if data.get("quota_bytes") is None else int(data["quota_bytes"]),
            control=bool(data.get("control", True)),
            sources=None if data.get("sources") is None else [str(name) for name in data["sources"]],
            source_options=dict(data.get("source_options") or {}),
            redact=bool(data.get("redact", True)),
            cpu_budget=None if data.get("cpu_budget") is None else float(data["cpu_budget"]),
            stderr_id=None if data.get("stderr_id") is None else str(data["stderr_id"]),
        )


def _stderr_identity() -> str | None:
    """``"st_dev:st_ino"`` of this process's fd 2 (None if it has none)."""
    try:
        st = os.fstat(2)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def _shares_the_programs_stderr(config: RunConfig) -> bool:
    """A child's exit line goes on stderr only where the program's own does (its log): a
    child whose stderr is a pipe its parent reads (asyncio's and subprocess's callers
    compare it) must see only its own output."""
    return config.stderr_id is not None and _stderr_identity() == config.stderr_id


class _Recording:
    """This process's recorder and the file its window goes to when the process ends."""

    def __init__(
        self, config: RunConfig, output: str, recorder: FlightRecorder, main: bool, announce: bool = True
    ) -> None:
        self.pid = os.getpid()
        self.config = config
        self.output = output
        self.recorder = recorder
        self.main = main
        self.announce = announce
        self.exit_reason = "exit"
        self.die_signal: int | None = None
        self._claim = threading.Lock()
        self._done = False
        self.finishing = False

    def finish(self, reason: str | None = None, *, stop: bool = True, may_die: bool = True) -> None:
        """Write the window to the output, once, and (optionally) stop recording.

        With ``may_die``, a death signal that arrived meanwhile (see ``_on_sigterm``)
        or an earlier KeyboardInterrupt is carried out afterwards.
        """
        if self.pid != os.getpid() or not self._claim.acquire(blocking=False):
            return
        try:
            if self._done:
                return
            self._done = True
            self.finishing = True
            why = reason or self.exit_reason
            try:
                mark(why)
                size = _write_when_free(self.recorder, self.output, why, EXIT_WAIT_S)
                if self.main:
                    say(f"wrote {size} bytes to {self.output}")
                elif self.announce:  # a child on the program's stderr (a pre-fork worker): in the log
                    say(f"pid {self.pid} ({why}) wrote {size} bytes to {self.output}")
            except Exception as exc:
                say(f"could not write {self.output}: {exc}")
            try:
                control.disable()
            except Exception:
                pass
            if stop:
                try:
                    self.recorder.stop()
                except Exception:
                    pass
                # a snapshot that slipped in before stop() ends before the interpreter
                # does (its writer thread is a daemon): no half-written temporary file
                _wait_for_snapshots(self.recorder, EXIT_WAIT_S)
        finally:
            self.finishing = False
            self._claim.release()
        if may_die and self.die_signal is not None:
            _die(self.die_signal)


def _write_when_free(recorder: FlightRecorder, path: str, reason: str, wait: float) -> int:
    """``recorder.write_to(path)``, first waiting up to ``wait`` seconds for a snapshot
    under way on another thread: the exit window must not be lost to, say, a signal's."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return recorder.write_to(path, reason=reason)
        except SnapshotInProgress:
            if time.monotonic() >= deadline:
                raise SnapshotInProgress(
                    f"another snapshot was still being written after {wait:g} s"
                ) from None
            time.sleep(0.01)


def _wait_for_snapshots(recorder: FlightRecorder, wait: float) -> None:
    """Return once no snapshot of ``recorder`` is being written (at most ``wait`` s)."""
    lock = recorder._snapshot_lock
    if lock.acquire(timeout=wait):
        lock.release()


_current: _Recording | None = None
#: Settings for forked children when this process itself is not recorded (forkserver).
_template: RunConfig | None = None
_hooks_pid = -1


def _install_process_hooks() -> None:
    global _hooks_pid
    if _hooks_pid != -1:
        return  # atexit and fork hooks are inherited by forked children: once per lineage
    _hooks_pid = os.getpid()
    atexit.register(_at_exit)
    _wrap_os_exit()
    if hasattr(os, "register_at_fork"):
        _install_fork_hook()  # the recorder's own hook must run before ours in the child
        os.register_at_fork(after_in_child=_after_fork_in_child)


_real_os_exit = os._exit


def _wrap_os_exit() -> None:
    """``os._exit`` skips atexit: write the window first, bounded (the writer thread does
    it, so locks the caller holds cannot deadlock it). What cannot be covered: the C
    ``_exit``/``abort()``, SIGKILL, and a child's ``exec`` (docs/deploy.md)."""
    if getattr(os._exit, "_pyflight", False):
        return

    def _exit(status: int) -> NoReturn:
        state = _current
        # not when the window is written or being written (SIGTERM's own exit path)
        if state is not None and state.pid == os.getpid() and not state._done and not state.finishing:
            try:

                def job() -> None:
                    state.finish("os._exit", stop=False, may_die=False)

                if not signals.run_off_handler(job, OS_EXIT_WRITE_TIMEOUT_S):
                    say(f"os._exit: gave up writing {state.output} after {OS_EXIT_WRITE_TIMEOUT_S:g} s")
            except BaseException:
                pass
        _real_os_exit(status)

    _exit._pyflight = True  # type: ignore[attr-defined]
    os._exit = _exit


def _set_handler(signum: int, handler: Callable[[int, types.FrameType | None], Any]) -> bool:
    """Install ``handler`` only where the program has not chosen one (SIG_DFL)."""
    try:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, handler)
            return True
    except (ValueError, OSError):  # not the main thread, or not a catchable signal
        pass
    return False


def _begin(config: RunConfig, output: str, *, main: bool, announce: bool = True) -> _Recording:
    """Start recording this process; its window goes to ``output`` when it ends (said on
    stderr when ``announce``)."""
    global _current
    recorder = FlightRecorder(
        min_age=config.min_age,
        max_bytes=config.max_bytes,
        redact_argv=config.redact,
        sources=config.sources,
        source_options=config.source_options,
        cpu_budget=config.cpu_budget,
    ).start()
    state = _Recording(config, output, recorder, main, announce)
    _current = state
    _install_process_hooks()
    signals.writer.ensure_started()  # SIGTERM hands its write to this thread
    if _set_handler(signal.SIGTERM, _on_sigterm):
        _watch_sigterm()
    if config.control:
        try:
            control.enable()
        except Exception as exc:
            say(f"no control channel for pid {os.getpid()}: {exc}")
    if config.snapshot_signal is not None:
        try:
            if signal.getsignal(config.snapshot_signal) == signal.SIG_DFL:
                # the program's own process also gathers its workers' (pre-fork servers)
                signals.install(config.signal_dir, config.snapshot_signal, config.quota_bytes, workers=main)
                _watch_snapshot_signal()
        except (ValueError, OSError) as exc:
            say(f"no snapshot signal for pid {os.getpid()}: {exc}")
    return state


def _at_exit() -> None:
    state = _current
    if state is None or state.pid != os.getpid():
        return
    state.finish()


#: Makes _on_sigterm (and the snapshot signal's handler) run even if the signal lands
#: while the main thread is stuck in C.
_signal_watch: HandlerWatch | None = None


def _watch_sigterm() -> None:
    global _signal_watch
    watch = HandlerWatch([signal.SIGTERM], _on_stuck_sigterm)
    try:
        if watch.install():
            _signal_watch = watch
    except Exception as exc:
        say(f"SIGTERM may not be handled while the main thread is blocked: {exc}")
    _watch_snapshot_signal()


def _watch_snapshot_signal() -> None:
    """Chase each snapshot signal too: one that lands on another thread while the main
    thread waits in C (a read of stdin, a lock) would wait for that call to end."""
    watch = _signal_watch
    config = _current.config if _current is not None else None
    if watch is None or config is None or config.snapshot_signal is None:
        return
    trigger = signals.installed(config.snapshot_signal)
    if trigger is not None:
        trigger.watch = watch
        watch.add(trigger.signum, trigger.handle_off_main, once=False)


def _write_for_signal(state: _Recording, signum: int, timeout: float) -> None:
    """Write the window for a death signal on the writer thread (whoever is interrupted
    may hold locks the write needs), waiting at most ``timeout`` seconds."""

    def job() -> None:
        state.finish(signal.Signals(signum).name.lower(), stop=False, may_die=False)

    if not signals.run_off_handler(job, timeout):
        say(f"gave up writing {state.output} after {SIGTERM_WRITE_TIMEOUT_S:g} s")


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _on_stuck_sigterm(signum: int) -> None:
    """SIGTERM arrived but the main thread cannot run its handler (blocked in C with the
    signal masked, or in a call that ignores EINTR): write the window from here and
    leave with the exit status a death by that signal gives in a shell (128 + signum)."""
    state = _current
    if state is not None and state.pid == os.getpid():
        name = signal.Signals(signum).name
        say(f"{name}: the main thread is blocked; writing the window from another thread")
        deadline = time.monotonic() + SIGTERM_WRITE_TIMEOUT_S
        while state.finishing and time.monotonic() < deadline:  # the exit write, under way
            time.sleep(0.05)
        _write_for_signal(state, signum, max(0.0, deadline - time.monotonic()))
    _flush_std_streams()
    os._exit(128 + signum)


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    """Write the window, then die of the signal as the program would have."""
    watch = _signal_watch
    if watch is not None:
        watch.started(signum)
    state = _current
    if state is not None and state.pid == os.getpid():
        if state.finishing:  # the exit write is under way, maybe right below this frame
            state.die_signal = signum
            return
        _write_for_signal(state, signum, SIGTERM_WRITE_TIMEOUT_S)
    _die(signum)


def _die(signum: int) -> None:
    """Leave as the default action of ``signum`` would (the parent sees -signum)."""
    _flush_std_streams()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # delivery to another thread may take a moment
    os._exit(128 + signum)


def _after_fork_in_child() -> None:
    """A fresh recorder, writing its own file, for a forked child of a recorded process."""
    global _current, _signal_watch
    if _signal_watch is not None:
        _signal_watch.forget_after_fork()
        _signal_watch = None
    parent = _current
    _current = None
    config = parent.config if parent is not None else _template
    if config is None or not config.children:
        return
    try:
        # the child's recorder threads start a moment later: code that checks right after
        # fork() that it is the only thread (CPython's test_threading does) sees no others
        daemon.defer_starts(CHILD_THREADS_DELAY_S)
        announce = _shares_the_programs_stderr(config)
        _begin(config, config.child_output(os.getpid()), main=False, announce=announce)
        _patch_multiprocessing()
    except Exception as exc:
        say(f"not recording forked child {os.getpid()}: {exc}")


def _patch_multiprocessing() -> None:
    """Multiprocessing's forked workers end in ``os._exit`` (no atexit): write as
    ``BaseProcess._bootstrap`` returns, after the worker's own cleanup."""
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return
    cls: Any = process.BaseProcess
    original = cls.__dict__.get("_bootstrap")
    if original is None or getattr(original, "_pyflight", False):
        return

    def _bootstrap(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _signal_watch is None and signal.getsignal(signal.SIGTERM) is _on_sigterm:
            _watch_sigterm()  # a forkserver's child: the server's wake-up fd was in the way at fork
        try:
            return original(self, *args, **kwargs)
        finally:
            state = _current
            if state is not None and state.pid == os.getpid():
                state.finish()

    _bootstrap._pyflight = True  # type: ignore[attr-defined]
    cls._bootstrap = _bootstrap


def _export_to_children(config: RunConfig) -> None:
    if config.stderr_id is None:
        config.stderr_id = _stderr_identity()
    os.environ[ENV_VAR] = config.to_env()
    old = os.environ.get("PYTHONPATH", "")
    if old.split(os.pathsep)[0] != BOOTSTRAP_DIR:
        os.environ["PYTHONPATH"] = BOOTSTRAP_DIR + (os.pathsep + old if old else "")


def _is_multiprocessing_helper() -> bool:
    argv = list(getattr(sys, "orig_argv", []))
    if "-c" not in argv or argv.index("-c") + 1 >= len(argv):
        return False
    command = argv[argv.index("-c") + 1]
    return any(helper in command for helper in _HELPER_COMMANDS)


def start_child() -> None:
    """Called at startup of a child Python (via the bootstrap ``sitecustomize``)."""
    global _template
    text = os.environ.get(ENV_VAR)
    if not text or _current is not None:
        return
    config = RunConfig.from_env(text)
    _template = config
    if _is_multiprocessing_helper():
        _install_process_hooks()  # its forked workers are recorded, not the helper itself
        return
    _begin(config, config.child_output(os.getpid()), main=False, announce=_shares_the_programs_stderr(config))


# running the program ---------------------------------------------------------------


def _resolve_script(script: str) -> tuple[types.ModuleType, types.CodeType, str]:
    """Module, code and sys.path[0] for ``python SCRIPT`` (a file, directory or zip)."""
    if not os.path.exists(script):
        raise RunError(f"no such script: {script}")
    path = os.path.abspath(script)
    main = types.ModuleType("__main__")
    if os.path.isdir(script) or (not path.endswith((".py", ".pyw")) and _is_zip(path)):
        spec = importlib.machinery.PathFinder.find_spec("__main__", [path])
        if spec is None or spec.loader is None or not hasattr(spec.loader, "get_code"):
            raise RunError(f"can't find '__main__' module in {script!r}")
        code = spec.loader.get_code("__main__")
        if code is None:
            raise RunError(f"no code for '__main__' in {script!r}")
        main.__file__ = spec.origin
        main.__loader__ = spec.loader
        main.__spec__ = spec
        return main, code, path
    try:
        with io.open_code(path) as handle:
            source = handle.read()
        code = compile(source, path, "exec", dont_inherit=True)
    except OSError as exc:
        raise RunError(f"cannot read {script}: {exc.strerror or exc}") from None
    except (SyntaxError, ValueError) as exc:
        raise RunError(f"cannot compile {script}: {exc}") from None
    main.__file__ = path
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__spec__ = None
    return main, code, os.path.dirname(os.path.realpath(path))


def _is_zip(path: str) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _resolve_module(name: str) -> tuple[types.ModuleType, types.CodeType]:
    """Module and code for ``python -m NAME`` (a package runs its ``__main__``)."""
    if not name or name.startswith("."):
        raise RunError(f"relative module names not supported: {name!r}")
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            if name == "__main__" or name.endswith(".__main__"):
                raise RunError(f"cannot use package as __main__ module: {name}")
            package = name
            name = f"{name}.__main__"
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise RunError(f"{package} is a package and cannot be directly executed")
    except RunError:
        raise
    except Exception as exc:
        raise RunError(f"error while finding module specification for {name!r} ({exc})") from None
    if spec is None or spec.loader is None:
        raise RunError(f"no module named {name}")
    loader: Any = spec.loader
    try:
        code = loader.get_code(name)
    except Exception as exc:
        raise RunError(f"cannot load {name}: {type(exc).__name__}: {exc}") from None
    if code is None:
        raise RunError(f"no code object available for {name}")
    main = types.ModuleType("__main__")
    main.__file__ = spec.origin
    main.__loader__ = loader
    main.__spec__ = spec
    main.__package__ = spec.parent
    if spec.cached:
        main.__cached__ = spec.cached  # type: ignore[attr-defined]
    return main, code


def run_program(
    config: RunConfig,
    *,
    module: str | None = None,
    script: str | None = None,
    args: Sequence[str] = (),
) -> int:
    """Run the program in this process under a recorder; return its exit status.

    RunError (before anything runs) if it cannot be started. The window is written
    when the interpreter exits, so return the status from the process's main.
    """
    if (module is None) == (script is None):
        raise RunError("run needs a SCRIPT or -m MODULE")
    if not os.path.isdir(os.path.dirname(config.output)):
        raise RunError(f"no such directory for the output: {os.path.dirname(config.output)}")
    safe_path = bool(getattr(sys.flags, "safe_path", False))
    if module is not None:
        if not safe_path:
            _set_path0(os.getcwd())  # as `python -m`: modules are found from the current directory
        main, code = _resolve_module(module)
        argv0 = main.__file__ or module
    else:
        assert script is not None
        main, code, path0 = _resolve_script(script)
        if not safe_path:
            _set_path0(path0)
        argv0 = script
    main.__builtins__ = builtins  # type: ignore[attr-defined]

    _take_over_from_child_recording()
    if not config.record_self:
        _record_children_only(config)
    else:
        _record_this_process(config)

    sys.argv = [argv0, *args]
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    except SystemExit as exc:
        return _exit_status(exc)
    except KeyboardInterrupt:
        _print_unhandled()
        state = _current
        if state is not None:  # (--children-only: no state here; exit status 130)
            state.exit_reason = "sigint"
            state.die_signal = int(signal.SIGINT)  # as Python does: exit by the signal, after atexit
        return 130
    except BaseException:
        _print_unhandled()
        if _current is not None:
            _current.exit_reason = "exception"
        return 1
    return 0


def _record_this_process(config: RunConfig) -> None:
    """Start this process's recorder, its children's settings and the endpoint."""
    try:
        state = _begin(config, config.output, main=True)
    except RecorderError as exc:
        raise RunError(str(exc)) from None
    if config.children:
        _export_to_children(config)
    try:
        _serve_endpoint(config)
    except RunError:
        state._done = True
        state.recorder.stop()
        raise
    for hook in config.setup:
        hook(state.recorder)


def _record_children_only(config: RunConfig) -> None:
    """Record no event here (no recorder, no thread, no exit file): only the children
    do, forked (fork hook with ``_template``) or started anew (environment)."""
    global _template
    if not config.children:
        raise RunError("--children-only and --no-children leave nothing to record")
    if config.setup:
        raise RunError("automatic triggers (--on-...) watch the recorded process: not with --children-only")
    _template = config
    _install_process_hooks()
    _export_to_children(config)
    _serve_endpoint(config)  # /trace-all and /status still gather the children


def _serve_endpoint(config: RunConfig) -> None:
    if config.serve is None:
        return
    from pyflight.triggers.http import TRACE_PATH, serve

    host, port = config.serve
    try:
        server = serve(host, port, token=config.token, allow_remote=config.allow_remote)
    except OSError as exc:
        raise RunError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    say(f"serving {server.url}{TRACE_PATH}")


def _take_over_from_child_recording() -> None:
    """A `pyflight run` started by a recorded program: its own settings win."""
    global _current
    state = _current
    if state is None or state.pid != os.getpid() or state.main:
        return
    state._done = True  # this process's window goes to the new OUT instead
    _current = None
    control.disable()
    state.recorder.stop()


def _set_path0(entry: str) -> None:
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.insert(0, entry)


def _exit_status(exc: SystemExit) -> int:
    """The status ``python`` would exit with for an uncaught SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:
        pass
    return 1


def _print_unhandled() -> None:
    """Report the exception through sys.excepthook, without our own frames."""
    typ, value, tb = sys.exc_info()
    if typ is None or value is None:
        return
    this_file = __file__
    while tb is not None and tb.tb_frame.f_code.co_filename == this_file:
        tb = tb.tb_next
    value = value.with_traceback(tb)  # the hook prints the exception's own __traceback__
    try:
        sys.excepthook(typ, value, tb)
    except Exception:
        import traceback

        traceback.print_exception(typ, value, tb)
