"""Pure-Python recording core: the twin of the C core ``pyflight._core`` (docs/internals.md).

One recorder per process (module-level state). Events are kept as small tuples of
``int`` (strings, frames and stacks are interned at record time into the tables of the
open generation, so nothing keeps a frame or code object alive) and encoded to the bytes
of docs/format.md only when a generation is sealed.

Thread safety relies on the GIL, but pure-Python code can be preempted between any two
bytecodes (and a signal handler can run there), so the code never assumes two steps are
atomic:

* ``record`` reads the open generation once and interns and appends into that object;
  the sealer publishes the next generation before it takes the events of the old one.
  A recording thread that finds, after appending, that its generation was replaced
  takes its event back (``deque.remove``) and records it again into the new one, unless
  the sealer already took it: the sealer's take and ``remove`` are each one C-level
  call, so each event ends up in exactly one generation.
* table ids come from ``itertools.count`` (atomic), not from ``len(table)``.
* sealing and eviction, which are rare, run under a per-run lock taken without waiting
  from the hot path (a seal already in progress is simply not repeated).
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from itertools import chain, groupby
from operator import add, itemgetter, sub
from types import FrameType
from typing import Any, Final, NoReturn

from pyflight.core.encoding import frame_generation, put_string, put_varint, varint

__all__ = [
    "BACKEND",
    "HERE",
    "clear_live",
    "configure",
    "is_enabled",
    "maybe_seal",
    "now",
    "record",
    "seal",
    "set_live",
    "snapshot",
    "start",
    "stats",
    "stop",
    "thread_id",
]

BACKEND: Final = "python"

_U64_MAX: Final = (1 << 64) - 1
#: Estimated encoded size of one pending event (the C core counts exactly).
_EVENT_BYTES: Final = 8
#: How long ``snapshot``/``seal`` wait for a seal running in another thread.
_LOCK_TIMEOUT_S: Final = 5.0


class _Here:
    """Type of :data:`HERE`: a sentinel meaning "the stack of the caller of record"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HERE"


HERE: Final = _Here()

now = time.monotonic_ns  # CLOCK_MONOTONIC, like the C core
thread_id = threading.get_native_id

_now = time.monotonic_ns
_get_ident = threading.get_ident

# A resolved frame: (code qualname, file, line); a resolved stack: innermost first.
_FrameKey = tuple[str, str, int]


class _Stack(tuple[_FrameKey, ...]):
    """A stack already resolved to (function, file, line) keys: holds no frame object."""

    __slots__ = ()


_Value = int | str | _Stack
# (tid, kind, time_ns, args): args are ints (string/stack ids of the event's generation).
_Event = tuple[int, int, int, tuple[Any, ...]]
_TID = itemgetter(0)
_KIND = itemgetter(1)
_TIME = itemgetter(2)
_ARGS = itemgetter(3)
#: Marks, in a generation's deque, the end of the events its sealer takes.
_END: Final[_Event] = (-1, -1, -1, ())


class _Config:
    """Settings of ``configure``, copied into each run by ``start``."""

    __slots__ = ("gen_interval_ns", "gen_max_bytes", "max_bytes", "max_stack_depth", "min_age_ns")

    def __init__(
        self, max_bytes: int, min_age_ns: int, gen_max_bytes: int, gen_interval_ns: int, max_stack_depth: int
    ) -> None:
        self.max_bytes = max_bytes
        self.min_age_ns = min_age_ns
        self.gen_max_bytes = gen_max_bytes
        self.gen_interval_ns = gen_interval_ns
        self.max_stack_depth = max_stack_depth


class _Sealed:
    """One generation of the ring: its framed bytes and what eviction needs."""

    __slots__ = ("data", "end_ns", "seq")

    def __init__(self, seq: int, end_ns: int, data: bytes) -> None:
        self.seq = seq
        self.end_ns = end_ns
        self.data = data


class _Run:
    """Everything between ``start`` and ``stop``: stop drops the object as a whole, so a
    seal still running in another thread only touches an orphan."""

    __slots__ = (
        "dropped",
        "evicted",
        "gen_interval_ns",
        "gen_max_bytes",
        "live",
        "lock",
        "max_bytes",
        "max_stack_depth",
        "min_age_ns",
        "owner",
        "ring",
        "ring_bytes",
        "sealed",
        "sealed_events",
        "stacks",
    )

    def __init__(self, config: _Config) -> None:
        self.max_bytes = config.max_bytes
        self.min_age_ns = config.min_age_ns
        self.gen_max_bytes = config.gen_max_bytes
        self.gen_interval_ns = config.gen_interval_ns
        self.max_stack_depth = config.max_stack_depth
        self.ring: deque[_Sealed] = deque()
        self.ring_bytes = 0
        self.live: dict[object, tuple[int, tuple[_Value, ...]]] = {}
        self.lock = threading.Lock()
        self.owner = 0  # get_ident() of the thread holding lock, 0 if none
        self.sealed = 0
        self.evicted = 0
        self.sealed_events = 0
        self.stacks = 0
        self.dropped = 0


class _Gen:
    """The open generation: pending events plus its string, frame and stack tables."""

    __slots__ = (
        "deadline",
        "events",
        "fids",
        "frame_ids",
        "frames",
        "kids",
        "limit",
        "live_events",
        "live_table_bytes",
        "run",
        "seq",
        "sids",
        "stack_ids",
        "stacks",
        "start_ns",
        "string_ids",
        "strings",
        "table_bytes",
    )

    def __init__(self, run: _Run, seq: int, start_ns: int) -> None:
        self.run = run
        self.seq = seq
        self.start_ns = start_ns
        self.deadline = start_ns + run.gen_interval_ns
        # events before the size trigger fires: ceil((gen_max_bytes - table_bytes) / 8)
        self.limit = -(-run.gen_max_bytes // _EVENT_BYTES)
        self.table_bytes = 0
        # the live table's copy at the start: not counted towards sealing (see _emit_live)
        self.live_events = 0
        self.live_table_bytes = 0
        self.events: deque[_Event] = deque()
        self.sids: dict[str, int] = {"": 0}  # id 0 reads as the empty string
        self.strings: dict[int, str] = {}
        self.string_ids = itertools.count(1)
        self.fids: dict[_FrameKey, int] = {}
        self.frames: dict[int, tuple[int, int, int]] = {}
        self.frame_ids = itertools.count(1)
        self.kids: dict[tuple[int, ...], int] = {(): 0}  # id 0 is the empty stack
        self.stacks: dict[int, tuple[int, ...]] = {}
        self.stack_ids = itertools.count(1)


# Module state. _gen is what the hot path reads: None when stopped.
_gen: _Gen | None = None
_run: _Run | None = None
_config: _Config | None = None
_EMPTY_STATS: Final[dict[str, Any]] = {
    "enabled": False,
    "generations": 0,
    "ring_bytes": 0,
    "open_bytes": 0,
    "events": 0,
    "sealed": 0,
    "evicted": 0,
    "dropped_events": 0,
    "seq": 0,
    "stacks": 0,
}
_stopped_stats: dict[str, Any] = dict(_EMPTY_STATS)  # what stats() says when stopped
# Argument count per kind; 256 entries so that a negative kind (-1..-128) lands on None.
_argc: tuple[int | None, ...] = (None,) * 256
_tls = threading.local()  # .tid: native id of the thread, looked up once per thread


# --------------------------------------------------------------------------------------
# Configuration and lifecycle


_MAX_ARGS: Final = 16  # most arguments a kind may take (as in the C core)
_MAX_STACK_DEPTH: Final = 65536


def _check_count(name: str, value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def configure(
    arg_counts: bytes,
    *,
    max_bytes: int,
    min_age_ns: int,
    gen_max_bytes: int,
    gen_interval_ns: int,
    max_stack_depth: int = 128,
) -> None:
    """Set the kind table (128 argument counts, 0xFF = not a kind) and the window."""
    global _config, _argc
    if _gen is not None:
        raise RuntimeError("cannot configure the recording core while it is running")
    if isinstance(arg_counts, str):
        raise TypeError("arg_counts must be bytes, not str")
    table = bytes(memoryview(arg_counts))  # any bytes-like object, like the C core's y*
    if len(table) != 128:
        raise ValueError(f"arg_counts must hold 128 entries, got {len(table)}")
    if any(_MAX_ARGS < count != 0xFF for count in table):
        raise ValueError(f"a kind may take at most {_MAX_ARGS} arguments")
    config = _Config(
        _check_count("max_bytes", max_bytes),
        _check_count("min_age_ns", min_age_ns),
        _check_count("gen_max_bytes", gen_max_bytes),
        _check_count("gen_interval_ns", gen_interval_ns),
        _check_count("max_stack_depth", max_stack_depth),
    )
    if config.max_stack_depth > _MAX_STACK_DEPTH:
        raise ValueError(f"max_stack_depth must be at most {_MAX_STACK_DEPTH}")
    _argc = tuple(None if count == 0xFF else count for count in table) + (None,) * 128
    _config = config


def start() -> None:
    """Start recording into a fresh ring; generations are numbered from 1."""
    global _gen, _run, _tls
    if _gen is not None:
        raise RuntimeError("the recording core is already running")
    if _config is None:
        raise RuntimeError("configure() the recording core before start()")
    run = _Run(_config)
    _tls = threading.local()  # thread ids are looked up afresh (cheap insurance after fork)
    _run = run
    _gen = _Gen(run, 1, _now())


def stop() -> None:
    """Stop and discard everything (ring, open generation, live table); the counters
    stay readable in ``stats()`` until the next start."""
    global _gen, _run
    run = _run
    if run is None:
        _gen = None
        return
    locked = _acquire(run, True)  # let a seal running in another thread finish first
    try:
        _keep_counters()
        _gen = None
        _run = None
    finally:
        if locked:
            _release(run)


def _keep_counters() -> None:
    global _stopped_stats
    counters = stats()
    if counters["enabled"]:
        _stopped_stats = {**counters, "enabled": False, "generations": 0, "ring_bytes": 0}
        _stopped_stats.update(open_bytes=0, seq=0)


def _after_fork_child() -> None:
    """In a forked child: drop the parent's data (and its lock, which a thread that does
    not exist here may hold) and stop, without waiting for anything."""
    global _gen, _run, _tls
    _keep_counters()
    _gen = None
    _run = None
    _tls = threading.local()


def is_enabled() -> bool:
    """True between start() and stop()."""
    return _gen is not None


# --------------------------------------------------------------------------------------
# Recording


def record(kind: int, *args: object) -> None:
    """Append one event to the open generation (see docs/internals.md).

    The hot path: plain ``int`` arguments go straight into the event tuple; anything
    else (strings, frames, HERE, None, bools, errors) takes :func:`_record_slow`.
    """
    gen = _gen
    if gen is None:
        return
    try:
        ok = _argc[kind] == len(args)
    except (TypeError, IndexError):
        ok = False
    if not ok:
        _bad_kind(kind, args)
    for a in args:
        if type(a) is not int or a < 0 or a > _U64_MAX:
            _record_slow(gen, kind, args)
            return
    ts = _now()
    events = gen.events
    if ts >= gen.deadline or len(events) >= gen.limit:
        new = _due(gen)
        if new is None:
            return
        gen = new
        events = gen.events
        ts = _now()  # the event belongs to the new generation: its time is after the seal
    try:
        tid = _tls.tid
    except AttributeError:
        tid = _init_tid()
    event = (tid, kind, ts, args)
    events.append(event)
    if _gen is not gen:
        _late(gen, event, kind, args)  # type: ignore[arg-type]  # all ints here


def record_at(t: int, kind: int, *args: object) -> None:
    """``record`` dated ``t`` (monotonic ns) instead of now: a ``t`` after now reads as
    now, one before the open generation as its start (and one before the calling
    thread's previous event as that event's time, when the batch is encoded)."""
    if not isinstance(t, int):
        raise TypeError(f"record_at() time must be an int, not {type(t).__name__}")
    if t < 0 or t > _U64_MAX:
        _raise_range(t)
    gen = _gen
    if gen is None:
        return
    try:
        ok = _argc[kind] == len(args)
    except (TypeError, IndexError):
        ok = False
    if not ok:
        _bad_kind(kind, args)
    # frames: 0 _normalize, 1 record_at, 2 the code that called record_at
    _append(gen, kind, _counted(gen, _normalize(args, 2, gen.run.max_stack_depth)), int(t) or 1)


def set_live(key: object, kind: int, *args: object) -> None:
    """Record an event and re-record it at the start of every later generation."""
    gen = _gen
    if gen is None:
        return
    if not _key_ok(key, 0):
        raise TypeError("set_live() key must be a str, int or tuple of them")
    try:
        ok = _argc[kind] == len(args)
    except (TypeError, IndexError):
        ok = False
    if not ok:
        _bad_kind(kind, args)
    for a in args:  # no stacks: a live event is re-recorded long after its frame is gone
        if type(a) is FrameType or a is HERE or type(a) is tuple:
            raise TypeError(f"live event arguments must be int, None or str, not {type(a).__name__}")
    values = _normalize(args, 2, gen.run.max_stack_depth)
    _append(gen, kind, values)
    run = gen.run
    if run is _run:
        run.live[key] = (kind, values)


def clear_live(key: object) -> None:
    """Forget a live event (a missing key is fine)."""
    if not _key_ok(key, 0):
        raise TypeError("clear_live() key must be a str, int or tuple of them")
    run = _run
    if run is not None:
        run.live.pop(key, None)


def _key_ok(key: object, depth: int) -> bool:
    """A key that hashes without running Python code (the C core's rule)."""
    if type(key) is str or type(key) is int or type(key) is bool or key is None:
        return True
    if type(key) is not tuple or depth >= 8:
        return False
    return all(_key_ok(item, depth + 1) for item in key)


def _init_tid() -> int:
    tid = threading.get_native_id()
    _tls.tid = tid
    return tid


def _bad_kind(kind: object, args: tuple[object, ...]) -> NoReturn:
    """Raise the error of a wrong kind or argument count (the C core's exceptions)."""
    if not isinstance(kind, int):
        raise TypeError(f"event kind must be an int, not {type(kind).__name__}")
    count = _argc[kind] if 0 <= kind < 128 else None
    if count is None:
        raise ValueError(f"unknown event kind {kind}")
    raise ValueError(f"event kind {kind} takes {count} arguments, got {len(args)}")


def _record_slow(gen: _Gen, kind: int, args: tuple[object, ...]) -> None:
    """``record`` for arguments that are not all plain ints: validate, then append."""
    # frames: 0 _normalize, 1 here, 2 record, 3 the code that called record
    _append(gen, kind, _counted(gen, _normalize(args, 3, gen.run.max_stack_depth)))


def _counted(gen: _Gen, values: tuple[_Value, ...]) -> tuple[_Value, ...]:
    """``values``, its stacks counted in ``stats()["stacks"]`` (not under a lock: a count
    lost to a thread switch only makes the budget's estimate a little low)."""
    stacks = sum(type(v) is _Stack for v in values)
    if stacks:
        gen.run.stacks += stacks
    return values


def _normalize(args: tuple[object, ...], depth: int, max_depth: int) -> tuple[_Value, ...]:
    """Check every argument and resolve it to int, str or a resolved stack.

    Raises before anything is recorded. ``depth`` is ``sys._getframe`` depth (from here)
    of the code whose stack HERE means.
    """
    out: list[_Value] = []
    for a in args:
        if type(a) is int:
            if a < 0 or a > _U64_MAX:
                _raise_range(a)
            out.append(a)
        elif type(a) is str:
            out.append(a)
        elif a is None:
            out.append(0)
        elif a is HERE:
            out.append(_walk(_caller(depth), max_depth))
        elif type(a) is FrameType:
            out.append(_walk(a, max_depth))
        elif type(a) is tuple:  # a stack given as (function, file, line) entries
            out.append(_entries(a, max_depth))
        elif isinstance(a, int):  # bool, IntEnum...: as a plain int, without calling user code
            value = int.__index__(a)
            if value < 0 or value > _U64_MAX:
                _raise_range(value)
            out.append(value)
        else:  # str subclasses too, as in the C core
            raise TypeError(
                f"event argument must be an int, None, str, frame or HERE, not {type(a).__name__}"
            )
    return tuple(out)


def _raise_range(value: int) -> NoReturn:
    """OverflowError for both ends, as PyLong_AsUnsignedLongLong in the C core."""
    if value < 0:
        raise OverflowError(f"event argument must be >= 0, got {value}")
    raise OverflowError(f"event argument {value} does not fit in 64 bits")


def _caller(depth: int) -> FrameType | None:
    """``sys._getframe(depth)`` of the function calling this one, or None when there is
    no Python caller that deep (``record`` called from C)."""
    try:
        return sys._getframe(depth + 1)
    except ValueError:
        return None


def _entries(stack: tuple[object, ...], max_depth: int) -> _Stack:
    """A stack given as (function, file, line) tuples, innermost first, checked, cut to
    ``max_depth``."""
    for e in stack:
        if not (
            type(e) is tuple
            and len(e) == 3
            and type(e[0]) is str
            and type(e[1]) is str
            and type(e[2]) is int
            and 0 <= e[2] <= _U64_MAX
        ):
            raise TypeError(
                "event argument must be an int, None, str, frame, HERE or a stack of (function, file, line)"
            )
    return _Stack(stack[:max_depth])  # type: ignore[arg-type]  # checked above


def _walk(frame: FrameType | None, max_depth: int) -> _Stack:
    """The stack from ``frame`` outwards, innermost first, as (qualname, file, line).

    ``frame`` may be another thread's: ``f_back`` makes a frame object for the next frame
    out, an allocation that may run the GC, whose finalizers can hand the GIL to that
    thread, which may then pop the frame being wrapped (see collect_frames in _core.c).
    The GC is held off during the walk."""
    out: list[_FrameKey] = []
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        while frame is not None and len(out) < max_depth:
            code = frame.f_code
            out.append((code.co_qualname, code.co_filename, frame.f_lineno or 0))
            frame = frame.f_back
    finally:
        if gc_was_on:
            gc.enable()
    return _Stack(out)


def _append(gen: _Gen, kind: int, values: tuple[_Value, ...], at: int = 0) -> None:
    """Append validated values as one event: seal first if due, intern, append. ``at``:
    the event's time if nonzero (brought within the open generation, not after now)."""
    ts = _now()
    if ts >= gen.deadline or len(gen.events) >= gen.limit:
        new = _due(gen)
        if new is None:
            return
        gen = new
        ts = _now()
    if at and at < ts:
        ts = max(at, gen.start_ns)
    ids = _intern_all(gen, values)
    try:
        tid = _tls.tid
    except AttributeError:
        tid = _init_tid()
    event = (tid, kind, ts, ids)
    gen.events.append(event)
    if _gen is not gen:
        _late(gen, event, kind, values)


def _late(gen: _Gen, event: _Event, kind: int, values: tuple[_Value, ...]) -> None:
    """The generation was replaced while ``event`` was being appended to it.

    Either the sealer took the event (it is in the sealed generation) or it is still in
    the old deque, where nobody will read it: take it back and record it again (ids are
    re-interned in the new generation, with a fresh time).
    """
    try:
        gen.events.remove(event)
    except ValueError:
        return  # the sealer took it
    current = _gen
    if current is None or current.run is not gen.run:
        return  # stopped meanwhile: stop() discards everything anyway
    _append(current, kind, values)


def _intern_all(gen: _Gen, values: tuple[_Value, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        if type(v) is int:
            out.append(v)
        elif type(v) is str:
            sid = gen.sids.get(v)
            out.append(_new_string(gen, v) if sid is None else sid)
        else:
            assert isinstance(v, _Stack)
            out.append(_intern_stack(gen, v))
    return tuple(out)


def _varint_len(value: int) -> int:
    return 1 if value < 0x80 else (value.bit_length() + 6) // 7


def _add_table_bytes(gen: _Gen, n: int) -> None:
    gen.table_bytes += n  # an estimate: a lost update under a race is harmless
    gen.limit = gen.live_events - (
        (gen.table_bytes - gen.live_table_bytes - gen.run.gen_max_bytes) // _EVENT_BYTES
    )


def _new_string(gen: _Gen, text: str) -> int:
    sid = gen.sids.get(text)
    if sid is not None:
        return sid
    sid = next(gen.string_ids)  # atomic: two threads never get the same id
    gen.strings[sid] = text
    gen.sids[text] = sid
    size = len(text.encode("utf-8", "surrogatepass"))
    _add_table_bytes(gen, _varint_len(size) + size)
    return sid


def _intern_stack(gen: _Gen, stack: _Stack) -> int:
    fids = gen.fids
    ids: list[int] = []
    for key in stack:
        fid = fids.get(key)
        if fid is None:
            fid = _new_frame(gen, key)
        ids.append(fid)
    frame_ids = tuple(ids)
    kid = gen.kids.get(frame_ids)
    if kid is None:
        kid = next(gen.stack_ids)
        gen.stacks[kid] = frame_ids
        gen.kids[frame_ids] = kid
        _add_table_bytes(gen, _varint_len(len(frame_ids)) + sum(map(_varint_len, frame_ids)))
    return kid


def _new_frame(gen: _Gen, key: _FrameKey) -> int:
    function, file, line = key
    fn_sid = gen.sids.get(function)
    if fn_sid is None:
        fn_sid = _new_string(gen, function)
    file_sid = gen.sids.get(file)
    if file_sid is None:
        file_sid = _new_string(gen, file)
    entry = (fn_sid, file_sid, line)
    fid = next(gen.frame_ids)
    gen.frames[fid] = entry  # stored only after its strings: a copy taken later has them
    gen.fids[key] = fid
    _add_table_bytes(gen, _varint_len(fn_sid) + _varint_len(file_sid) + _varint_len(line))
    return fid


# --------------------------------------------------------------------------------------
# Sealing and eviction


def _acquire(run: _Run, wait: bool) -> bool:
    """Take the run's seal lock. Never waits on the calling thread itself (a signal
    handler running inside a seal) and never forever."""
    if run.lock.acquire(False):
        run.owner = _get_ident()
        return True
    if not wait or run.owner == _get_ident():
        return False
    if not run.lock.acquire(True, _LOCK_TIMEOUT_S):
        return False
    run.owner = _get_ident()
    return True


def _release(run: _Run) -> None:
    run.owner = 0
    run.lock.release()


def _due(gen: _Gen) -> _Gen | None:
    """Seal ``gen`` because it is old or big (unless a seal is already running); return
    the generation to record into now."""
    run = gen.run
    if _acquire(run, False):
        try:
            if _gen is gen:
                _seal_locked(run)
        finally:
            _release(run)
    return _gen


def _seal_locked(run: _Run) -> None:
    """Publish the next generation (live events first), then encode the old one into the
    ring and evict. A generation without events is not emitted: it is just reopened
    in place (same object, same seq), so an event appended to it meanwhile stays valid."""
    global _gen
    old = _gen
    if old is None or old.run is not run:
        return
    t = _now()
    if not old.events:
        old.start_ns = t
        old.deadline = t + run.gen_interval_ns
        _emit_live(old, run)
        _evict(run, t)
        return
    new = _Gen(run, old.seq + 1, t)
    _emit_live(new, run)
    _gen = new  # from here on, a record that still appends to `old` will notice it (_late)
    if _run is not run:  # stop() ran meanwhile (a signal handler interrupting this seal)
        _gen = None
    # Take every event appended so far in one C-level call (atomic under the GIL): the
    # deque is drained up to a marker; a record still appending after it finds its event
    # left in the deque and takes it back (_late).
    old.events.append(_END)
    taken = list(iter(old.events.popleft, _END))
    if taken:  # else every event was taken back by its recording thread (_late)
        end_ns = _end_ns(taken, t)
        data = _encode(old, taken, end_ns)
        # Make room first: another thread may read stats() between any two bytecodes,
        # and must never see the ring over max_bytes.
        _evict(run, _now(), incoming=len(data))
        run.ring.append(_Sealed(old.seq, end_ns, data))
        run.ring_bytes += len(data)
        run.sealed += 1
        run.sealed_events += len(taken)
    _evict(run, _now())


def _emit_live(gen: _Gen, run: _Run) -> None:
    """Record the live table into a generation not yet published; its copy does not count
    towards sealing (with more live entries than a generation holds, e.g. 40,000 live
    asyncio tasks, each event would otherwise seal a generation and re-record them all)."""
    for kind, values in list(run.live.values()):
        _emit(gen, kind, values)
    gen.live_events = len(gen.events)
    gen.live_table_bytes = gen.table_bytes
    _add_table_bytes(gen, 0)


def _emit(gen: _Gen, kind: int, values: tuple[_Value, ...]) -> None:
    """Record a live event into a generation not yet published (no due check)."""
    ids = _intern_all(gen, values)
    try:
        tid = _tls.tid
    except AttributeError:
        tid = _init_tid()
    gen.events.append((tid, kind, _now(), ids))


def _evict(run: _Run, t: int, incoming: int = 0) -> None:
    """Drop the oldest generations while over max_bytes (counting ``incoming`` bytes
    about to be added), then while older than min_age."""
    ring = run.ring
    while ring and run.ring_bytes + incoming > run.max_bytes:
        run.ring_bytes -= len(ring.popleft().data)
        run.evicted += 1
    horizon = t - run.min_age_ns
    while ring and ring[0].end_ns < horizon:
        run.ring_bytes -= len(ring.popleft().data)
        run.evicted += 1


def _end_ns(events: list[_Event], t: int) -> int:
    """The seal time, or later if an event was appended while sealing."""
    last: int = max(map(_TIME, events))
    return max(t, last)


def seal() -> None:
    """Close the open generation into the ring (if it holds any event), open the next, evict."""
    run = _run
    if run is None or not _acquire(run, True):
        return
    try:
        _seal_locked(run)
    finally:
        _release(run)


def maybe_seal() -> None:
    """Seal if the open generation is due (age or size), then evict by age."""
    run = _run
    if run is None or not _acquire(run, False):
        return
    try:
        gen = _gen
        if gen is None or gen.run is not run:
            return
        t = _now()
        if t >= gen.deadline or len(gen.events) >= gen.limit:
            _seal_locked(run)
        else:
            _evict(run, t)
    finally:
        _release(run)


def snapshot() -> list[bytes]:
    """Seal, then return the ring's generations (framed bytes), oldest first."""
    run = _run
    if run is None:
        raise RuntimeError("the recording core is not running")
    locked = _acquire(run, True)
    try:
        if locked:
            _seal_locked(run)
        return [g.data for g in list(run.ring)]
    finally:
        if locked:
            _release(run)


def stats() -> dict[str, Any]:
    """Counters of the current run (of the last one, ring empty, when stopped)."""
    run = _run
    gen = _gen
    if run is None or gen is None or gen.run is not run:
        return dict(_stopped_stats)
    pending = len(gen.events)
    return {
        "enabled": True,
        "generations": len(run.ring),
        "ring_bytes": run.ring_bytes,
        "open_bytes": pending * _EVENT_BYTES + gen.table_bytes,
        "events": run.sealed_events + pending,
        "sealed": run.sealed,
        "evicted": run.evicted,
        "dropped_events": run.dropped,
        "seq": gen.seq,
        "stacks": run.stacks,
    }


# --------------------------------------------------------------------------------------
# Encoding (docs/format.md, "Generation")


def _table(table: dict[int, Any], default: Any) -> Iterator[Any]:
    """Entries 1..max id in id order; an id taken by a thread but not stored yet (its
    event is not in this generation) gets a harmless placeholder."""
    last = max(table, default=0)
    get = table.get
    return (get(i, default) for i in range(1, last + 1))


def _encode(gen: _Gen, events: list[_Event], end_ns: int) -> bytes:
    """Framed bytes of a generation holding ``events`` (in append order)."""
    # copy the tables newest-dependency first: a stack copied here has its frames in the
    # frame copy below, a frame its strings
    stacks = list(_table(gen.stacks.copy(), ()))
    frames = list(_table(gen.frames.copy(), (0, 0, 0)))
    strings = list(_table(gen.strings.copy(), ""))

    out = bytearray()
    put = put_varint
    put(out, gen.seq)
    put(out, gen.start_ns)
    put(out, end_ns)
    put(out, len(strings))
    for text in strings:
        put_string(out, text)
    put(out, len(frames))
    for function_sid, file_sid, line in frames:
        put(out, function_sid)
        put(out, file_sid)
        put(out, line)
    put(out, len(stacks))
    for frame_ids in stacks:
        put(out, len(frame_ids))
        for fid in frame_ids:
            put(out, fid)

    # one batch per thread: a stable sort by tid keeps each thread's recording order
    by_thread = [list(group) for _, group in groupby(sorted(events, key=_TID), key=_TID)]
    put(out, len(by_thread))
    for batch in by_thread:
        tid = batch[0][0]
        body = _encode_batch(batch)
        put(out, tid)
        put(out, batch[0][2])
        put(out, len(batch))
        put(out, len(body))
        out += body
    return frame_generation(out)


# Varint bytes of recent large values (object ids, wall times: ids repeat a lot).
_VARINT_CACHE: dict[int, bytes] = {}
_VARINT_CACHE_MAX: Final = 4096
_SMALL_VARINTS: Final = [bytes((b,)) for b in range(0x80)]  # last byte of a varint
_CONTINUED: Final = [bytes((b | 0x80,)) for b in range(0x80)]  # any other byte


def _large_varint(value: int) -> bytes:
    """Varint of a value >= 2**21 missing from the cache (which it then joins)."""
    data = varint(value)
    if len(_VARINT_CACHE) >= _VARINT_CACHE_MAX:
        _VARINT_CACHE.clear()
    _VARINT_CACHE[value] = data
    return data


def _encode_batch(batch: list[_Event]) -> bytes:
    """Events of one thread (in recording order) as the bytes of a batch.

    Pure-Python varint encoding is the cost of sealing, so the per-event work is pushed
    into C-level ``map``/``zip``/``chain`` and one list comprehension over all values,
    which encodes values below 2**21 from two small tables, without a call.
    """
    times = list(map(_TIME, batch))
    deltas = list(map(sub, times, chain(times[:1], times)))
    if min(deltas) < 0:  # a signal handler's event appended before the one it interrupted
        deltas = _clamped_deltas(times)
    # kind, time delta, args... of every event in one flat sequence of ints
    values = chain.from_iterable(map(add, zip(map(_KIND, batch), deltas, strict=True), map(_ARGS, batch)))
    small = _SMALL_VARINTS
    cont = _CONTINUED
    get = _VARINT_CACHE.get
    large = _large_varint
    return b"".join(
        [
            small[v]
            if v < 0x80
            else cont[v & 0x7F] + small[v >> 7]
            if v < 0x4000
            else cont[v & 0x7F] + cont[(v >> 7) & 0x7F] + small[v >> 14]
            if v < 0x200000
            else get(v) or large(v)
            for v in values
        ]
    )


def _clamped_deltas(times: list[int]) -> list[int]:
    """Deltas that never go back in time (an out-of-order event gets the previous time)."""
    out: list[int] = []
    prev = times[0]
    for t in times:
        if t < prev:
            out.append(0)
        else:
            out.append(t - prev)
            prev = t
    return out


def current_frames() -> dict[int, FrameType]:
    """Frames of the running threads by ident. Unlike the C core, this cannot exclude
    other interpreters' threads (sys._current_frames() returns them too). The GC is held
    off meanwhile, as in _walk: wrapping each thread's frame allocates."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if gc_was_on:
            gc.enable()
