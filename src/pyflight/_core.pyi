"""Types of the C recording core ``pyflight._core`` (_core.c, _core_lock.c,
_core_asyncio.c, _core_annotate.c).

The functions shared with the pure-Python core have the signatures of
``pyflight.core._pycore`` (its docstrings say what they do); the rest exist only in C.
Keep this file in step with the C sources' method tables: tests/test_core_stub.py checks
that every name here exists in the built extension and the other way round, and runs
``python -m mypy.stubtest pyflight._core`` on the signatures.
"""

from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final, final

# ----------------------------------------------------------------------------------
# the recording core (_core.c): the same API as pyflight.core._pycore

BACKEND: Final[str]  # "c"

#: Passed as an argument of ``record``: the stack of record's caller (a sentinel object).
HERE: Final[object]

def configure(
    arg_counts: bytes,
    *,
    max_bytes: int,
    min_age_ns: int,
    gen_max_bytes: int,
    gen_interval_ns: int,
    max_stack_depth: int = 128,
) -> None: ...
def start() -> None: ...
def stop() -> None: ...
def is_enabled() -> bool: ...
def now() -> int: ...
def thread_id() -> int: ...
def current_frames() -> dict[int, FrameType]: ...
def record(kind: int, *args: object) -> None: ...
def record_at(t: int, kind: int, *args: object) -> None: ...
def set_live(key: object, kind: int, *args: object) -> None: ...
def clear_live(key: object) -> None: ...
def seal() -> None: ...
def maybe_seal() -> None: ...
def snapshot() -> list[bytes]: ...
def stats() -> dict[str, Any]: ...
def _after_fork_child() -> None: ...

# The reader's expansion of one-event steps (pyflight.format.reader._expand_steps is its twin).
def expand_steps(
    events: list[Any], rules: tuple[tuple[Any, Any, Any], ...], event_type: type
) -> list[Any]: ...

# The reader's batch decoder (pyflight.format.reader.decode_events_py is its twin).
def decode_events(
    data: bytes,
    offset: int,
    end: int,
    base_ns: int,
    tid: int,
    n_events: int,
    arg_types: Sequence[bytes | None],
    kinds: Sequence[Any],
    strings: Sequence[str],
    stacks: Sequence[tuple[Any, ...]],
    event_type: type,
) -> list[Any]: ...

# ----------------------------------------------------------------------------------
# blocking (_core_lock.c): traced locks and Condition hooks, C core only

HOOK_CONDITION_WAIT: Final[int]
HOOK_SLEEP: Final[int]
HOOK_SELECT: Final[int]
HOOK_SELECTOR: Final[int]
HOOK_SOCKET: Final[int]
HOOK_FILE_SYNC: Final[int]
HOOK_SOCKET_SEND: Final[int]
_BLOCKING_CONSTANTS: Final[tuple[Any, ...]]

@final
class TracedLock:
    """A threading.Lock that records when acquiring it blocks."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def acquire_lock(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def release(self) -> None: ...
    def release_lock(self) -> None: ...
    def locked(self) -> bool: ...
    def locked_lock(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> None: ...
    def _at_fork_reinit(self) -> None: ...

@final
class TracedRLock:
    """A threading.RLock that records when acquiring it blocks."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> None: ...
    def _is_owned(self) -> bool: ...
    def _release_save(self) -> Any: ...
    def _acquire_restore(self, state: Any, /) -> None: ...
    def _recursion_count(self) -> int: ...
    def _at_fork_reinit(self) -> None: ...

@final
class BlockingHook:
    """A blocking call that records its blocks: ``BlockingHook(func, role, helper=None)``."""

    __func__: Callable[..., Any]
    def __new__(
        cls, func: Callable[..., Any], role: int, helper: Callable[..., Any] | None = None, /
    ) -> BlockingHook: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...
    def __reduce__(self) -> str: ...

def traced_allocate_lock() -> TracedLock: ...
def waiter_allocate_lock() -> Any: ...
def _blocking_setup(rlock_factory: Callable[[], Any], on_fault: Callable[..., Any], /) -> None: ...
def _blocking_control(active: bool, inject_fault: bool = False, /) -> None: ...
def _blocking_shed_stacks(every: int, min_ns: int, /) -> None: ...

# ----------------------------------------------------------------------------------
# asyncio (_core_asyncio.c): the C Handle._run, C core only

def asyncio_install(
    handle_cls: type,
    exc_helper: Callable[..., Any],
    slow_call: Callable[..., Any],
    on_loop: Callable[..., Any],
    on_task_done: Callable[..., Any],
    task_types: tuple[type, ...],
    step_funcs: tuple[Any, Any],
    future_cls: type | None,
    kinds: tuple[int, ...],
    wait_mode: int,
    /,
) -> Any: ...
def asyncio_uninstall() -> None: ...
def asyncio_tasks_setup(
    current_task: Callable[..., Any],
    live_tasks: dict[int, int],
    on_fault: Callable[..., Any],
    describe: Callable[..., Any],
    kinds: tuple[int, int, int, int],
    outcomes: tuple[int, int, int],
    /,
) -> None: ...
def asyncio_create_task(original: Callable[..., Any], /) -> Callable[..., Any]:
    """A ``BaseEventLoop.create_task`` that records TASK_CREATE/TASK_INFO from C."""

def asyncio_get_loop(
    original: Callable[..., Any], sites: tuple[Any, ...], outer: tuple[Any, ...], own: tuple[Any, ...], /
) -> Callable[..., Any]:
    """A ``_LoopBoundMixin._get_loop`` that records TASK_BLOCK (asyncio sync waits) from C."""

def asyncio_stall_wait(threshold_ns: int, max_wait: float, poll: float, /) -> bool:
    """Sleep without the GIL until a step has run ``threshold_ns`` (True; a hint), or
    ``max_wait`` seconds passed or the hooks changed (False); naps of at most ``poll``
    seconds, each until the oldest running step could reach the threshold."""

def asyncio_idle_select(
    select: Callable[..., Any], loop_id: int, previous: Any, begin_kind: int, end_kind: int, /
) -> Callable[..., Any]:
    """A loop selector's ``select`` recording LOOP_IDLE_BEGIN/END around waits that may block."""

def asyncio_idle_previous(obj: Any, /) -> tuple[bool, Any]:
    """``(True, previous)`` for a select made by ``asyncio_idle_select``, else ``(False, None)``."""

def running_steps() -> list[tuple[int, int, int, int]]:
    """``[(thread_ident, loop_id, task_id, start_ns)]`` of the asyncio steps running now."""

# ----------------------------------------------------------------------------------
# annotations (_core_annotate.c): pyflight.task / pyflight.region in C, C core only

class AnnotationTask:
    """A logical operation (a request, a job): ``with pyflight.task("GET /users"): ...``."""

    name: Any
    @property
    def id(self) -> int: ...
    def __init__(self, name: Any) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def _fresh(self) -> Any: ...

class AnnotationRegion:
    """A named stretch of work inside the current task: ``with pyflight.region("parse"): ...``."""

    name: Any
    def __init__(self, name: Any) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def _fresh(self) -> Any: ...

@final
class AnnotationWrapper:
    """A function decorated by pyflight.task or pyflight.region."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

def _annotate_setup(
    current_task_id: Any,
    kinds: tuple[int, int, int, int, int],
    set_live: Callable[..., None],
    clear_live: Callable[..., None],
    decorate: Callable[..., Any],
    /,
) -> None: ...
def _annotated(annotation: Any, func: Callable[..., Any], /) -> AnnotationWrapper: ...

# ----------------------------------------------------------------------------------
# the native stack reader (_core_stackreader.c): CPython 3.11-3.13 on Linux, C core only

def stackreader_probe() -> str | None: ...
def stackreader_wait(
    fd: int, timeout: float, /
) -> tuple[int, int, tuple[tuple[str, str, int], ...], int, int] | None: ...
def stackreader_read_thread(ident: int, /) -> tuple[tuple[str, str, int], ...] | None: ...
def _stackreader_read_address(address: int, /) -> tuple[tuple[str, str, int], ...] | None: ...
def _stackreader_use_proc_mem(on: bool, /) -> bool: ...
