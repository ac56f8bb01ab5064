"""Reads trace files (docs/format.md) into a :class:`Trace`.

The reader is the only part of pyflight that sees bytes written by another process,
possibly cut short by a crash or damaged on disk, so it never trusts a count or an id:
header problems raise :class:`TraceFormatError`, damage in a generation keeps everything
before it and warns (or raises with ``strict=True``). Events are decoded per batch by
``pyflight._core.decode_events`` when the C core is in use, else by
:func:`decode_events_py`, its pure-Python twin with the same contract.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gc
import os
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from pyflight.core.encoding import FRAME_FIXED, GENERATION_TAG, HEADER_FIXED, MAGIC, MAX_VARINT_BYTES, VERSION
from pyflight.core.events import ARGS, KIND_TABLE_SIZE, BlockReason, Kind, TaskOutcome, ThreadState
from pyflight.errors import TraceFormatError

__all__ = [
    "Event",
    "Frame",
    "Generation",
    "TaskInfo",
    "ThreadInfo",
    "Trace",
    "TraceWarning",
    "UserTaskInfo",
    "decode_events_py",
    "describe",
    "load",
    "loads",
]


class TraceWarning(UserWarning):
    """A trace was damaged; what could be read was read (see ``Trace.warnings``)."""


class Frame(NamedTuple):
    """One Python frame of a stack: code object's qualified name, file, line."""

    function: str
    file: str
    line: int


# Per-kind lookups for Event's accessors, built once from the vocabulary.
_ARG_NAMES: dict[int, tuple[str, ...]] = {k: tuple(a.name for a in args) for k, args in ARGS.items()}
_ARG_INDEX: dict[int, dict[str, int]] = {
    k: {a.name: 3 + i for i, a in enumerate(args)} for k, args in ARGS.items()
}
_TASK_INDEX: dict[int, int] = {k: idx["task"] for k, idx in _ARG_INDEX.items() if "task" in idx}
_STACK_INDEX: dict[int, int] = {
    k: 3 + [a.type for a in args].index("k") for k, args in ARGS.items() if any(a.type == "k" for a in args)
}


def _enum_args() -> dict[tuple[int, str], Callable[[int], Any]]:
    """Arguments whose integers are enum values: shown by name in reprs."""
    table: dict[tuple[int, str], Callable[[int], Any]] = {}
    for kind, args in ARGS.items():
        for a in args:
            if a.name == "reason" and a.type == "u":
                table[(kind, a.name)] = BlockReason
            elif a.name == "outcome":
                table[(kind, a.name)] = TaskOutcome
            elif a.name == "state":
                table[(kind, a.name)] = ThreadState
    return table


_ENUM_OF_ARG = _enum_args()


def _field(index: int, doc: str) -> Any:
    """A fast read-only accessor of item ``index`` (namedtuple's own, where it exists)."""
    try:
        from collections import _tuplegetter  # type: ignore[attr-defined]

        return _tuplegetter(index, doc)
    except ImportError:  # another Python implementation
        return property(itemgetter(index), doc=doc)


class Event(tuple[Any, ...]):
    """One recorded event: ``(kind, time_ns, thread_tid, *args)`` with ids resolved.

    A plain tuple underneath (cheap to build by the million, sortable by ``itemgetter(1)``);
    the properties name its parts using the vocabulary of ``pyflight.core.events``.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def kind(self) -> Kind: ...

        @property
        def time(self) -> int:
            """Monotonic nanoseconds (``CLOCK_MONOTONIC``)."""

        @property
        def thread(self) -> int:
            """Native id of the thread that recorded the event."""

    else:  # C-level getters (as namedtuple's): the model reads millions of events by them
        kind = _field(0, "The event's ``Kind`` (an int for a kind this pyflight does not know).")
        time = _field(1, "Monotonic nanoseconds (``CLOCK_MONOTONIC``).")
        thread = _field(2, "Native id of the thread that recorded the event.")

    @property
    def args(self) -> dict[str, Any]:
        """Arguments by name (strings as ``str``, stacks as tuples of :class:`Frame`)."""
        return dict(zip(_ARG_NAMES.get(self[0], ()), self[3:], strict=False))

    def arg(self, name: str, default: Any = None) -> Any:
        """The argument ``name``, or ``default`` if this kind has none by that name."""
        index = _ARG_INDEX.get(self[0], {}).get(name)
        if index is None or index >= len(self):
            return default
        return self[index]

    @property
    def task(self) -> int | None:
        """The ``task`` argument if the kind has one, else None."""
        index = _TASK_INDEX.get(self[0])
        return None if index is None or index >= len(self) else self[index]

    @property
    def stack(self) -> tuple[Frame, ...]:
        """The first stack argument (innermost frame first), or ``()``."""
        index = _STACK_INDEX.get(self[0])
        return () if index is None or index >= len(self) else self[index]

    def __repr__(self) -> str:
        kind = self[0]
        name = kind.name if isinstance(kind, Kind) else str(kind)
        parts = [f"Event({name} t={self[1]} thread={self[2]}"]
        for arg_name, value in zip(_ARG_NAMES.get(kind, ()), self[3:], strict=False):
            if isinstance(value, tuple):
                shown = f"<{len(value)} frames>" if value else "()"
            elif isinstance(value, str):
                shown = repr(value)
            else:
                convert = _ENUM_OF_ARG.get((kind, arg_name))
                shown = str(value)
                if convert is not None:
                    try:
                        shown = convert(value).name
                    except ValueError:
                        pass
            parts.append(f"{arg_name}={shown}")
        return " ".join(parts) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Event, (tuple(self),))


@dataclasses.dataclass
class Generation:
    """Where one generation sits in the file and what it covers."""

    seq: int
    start_ns: int
    end_ns: int
    offset: int
    size: int  # bytes including the 9-byte frame (tag, length, CRC)
    n_events: int  # events stored, including kinds this pyflight skips


@dataclasses.dataclass
class ThreadInfo:
    tid: int
    name: str
    ident: int  # threading.get_ident() value, 0 if unknown


@dataclasses.dataclass
class TaskInfo:
    """An asyncio task; ``parent`` is the task that created it (0 = none)."""

    id: int
    name: str
    coro: str
    parent: int


@dataclasses.dataclass
class UserTaskInfo:
    """A ``pyflight.task`` span; ``parent`` 0 = none."""

    id: int
    name: str
    parent: int


@dataclasses.dataclass(repr=False)
class Trace:
    """Everything read from one snapshot."""

    path: str | None
    meta: dict[str, str]
    kinds: dict[int, tuple[str, tuple[tuple[str, str], ...]]]
    generations: list[Generation]
    events: list[Event]
    threads: dict[int, ThreadInfo]
    tasks: dict[int, TaskInfo]
    user_tasks: dict[int, UserTaskInfo]
    warnings: list[str]
    bytes_read: int  # header plus the generations that were read
    bytes_lost: int  # the rest of the file, not read because of damage
    skipped_events: int  # events of kinds this pyflight does not know
    start_ns: int
    end_ns: int
    data_loss: list[Event]  # DATA_LOSS and SOURCE_DISABLED events

    def __repr__(self) -> str:  # the default would print every event
        return (
            f"<Trace {self.path or '(from bytes)'}: {len(self.generations)} generations, "
            f"{len(self.events)} events, {len(self.threads)} threads, {len(self.warnings)} warnings>"
        )

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def count_by_kind(self) -> Counter[Kind]:
        """How many events of each kind (a fresh Counter)."""
        return Counter(map(itemgetter(0), self.events))

    def wall_time_ns(self, t: int) -> int | None:
        """Wall-clock nanoseconds (Unix epoch) of monotonic time ``t``, None if unknown."""
        try:
            mono = int(self.meta["clock.monotonic_ns"])
            wall = int(self.meta["clock.wall_ns"])
        except (KeyError, ValueError):
            return None
        return wall + (t - mono)


# --------------------------------------------------------------------------------------
# Damage handling


class _Bad(Exception):
    """Internal: a decoding problem at an absolute byte offset."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.offset = offset


_AT_BYTE = re.compile(r"^(.*?)\s*\bat byte (\d+)\s*$", re.S)


def _split_decoder_error(exc: BaseException, fallback_offset: int) -> _Bad:
    """Turn decode_events' ``ValueError("... at byte N")`` into a problem and offset."""
    text = str(exc) or type(exc).__name__
    match = _AT_BYTE.match(text)
    if match is None:
        return _Bad(text, fallback_offset)
    return _Bad(match.group(1), int(match.group(2)))


# --------------------------------------------------------------------------------------
# Primitive decoding (header and generation tables; not the per-event hot path)


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one LEB128 varint in ``data[pos:end]``; returns (value, next position)."""
    if pos < end:
        b = data[pos]
        if b < 0x80:
            return b, pos + 1
    start = pos
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Bad("truncated varint", start)
        if shift >= 7 * MAX_VARINT_BYTES:
            raise _Bad("varint longer than 10 bytes", start)
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    if value >> 64:
        raise _Bad("varint does not fit in 64 bits", start)
    return value, pos


def _count(data: bytes, pos: int, end: int, what: str, min_size: int) -> tuple[int, int]:
    """A count of items each at least ``min_size`` bytes: must fit in the bytes left."""
    n, after = _varint(data, pos, end)
    if n * min_size > end - after:
        raise _Bad(f"{what} count {n} does not fit in the {end - after} bytes left", pos)
    return n, after


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def _string(data: bytes, pos: int, end: int) -> tuple[str, int]:
    n, after = _varint(data, pos, end)
    if n > end - after:
        raise _Bad(f"string of {n} bytes runs past its section", pos)
    return _text(data[after : after + n]), after + n


# --------------------------------------------------------------------------------------
# Event decoding: the pure-Python twin of _core.decode_events

DecodeEvents = Callable[..., list[Any]]

_TOKEN = re.compile(rb"[\x80-\xff]*[\x00-\x7f]")  # one complete varint
_TYPE_LETTERS = frozenset(b"usk")


class _VarintValues(dict[bytes, int]):
    """Varint token -> value. 1- and 2-byte tokens are precomputed; longer ones computed
    on a miss (and remembered, up to a bound), so decoding is a C-level ``map``."""

    _MAX_EXTRA = 1 << 16

    def __init__(self) -> None:
        super().__init__()
        for b in range(0x80):
            self[bytes((b,))] = b
        for hi in range(0x80):
            high = hi << 7
            for lo in range(0x80, 0x100):
                self[bytes((lo, hi))] = (lo & 0x7F) | high
        self._base = len(self)

    def __missing__(self, token: bytes) -> int:
        if len(token) > MAX_VARINT_BYTES:
            raise ValueError("varint longer than 10 bytes")
        value = 0
        shift = 0
        for b in token:
            value |= (b & 0x7F) << shift
            shift += 7
        if value >> 64:
            raise ValueError("varint does not fit in 64 bits")
        if len(self) < self._base + self._MAX_EXTRA:
            self[token] = value
        return value


_values: _VarintValues | None = None


@functools.lru_cache(maxsize=256)
def _event_factory(types: bytes) -> Callable[..., Callable[..., Any]]:
    """Generated code building one kind's event from the varint values at ``v[i:]``.

    A straight-line function per argument signature (``u``/``s``/``k``) costs one call
    per event instead of a loop over the arguments.
    """
    if not set(types) <= _TYPE_LETTERS:
        raise ValueError(f"unknown argument type in {types!r}")
    if len(types) > _MAX_GENERATED_ARGS:
        return functools.partial(_generic_builder, types)
    parts = []
    for index, letter in enumerate(types):
        item = f"v[i + {index + 2}]"
        parts.append(f"S[{item}]" if letter == 0x73 else f"K[{item}]" if letter == 0x6B else item)
    items = "".join(f", {p}" for p in parts)
    source = (
        "def make(KO, S, K, E):\n"
        "    def build(v, i, t, tid):\n"
        f"        return E((KO, t, tid{items}))\n"
        "    return build\n"
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # the source is built from the letters u, s and k only
    factory: Callable[..., Callable[..., Any]] = namespace["make"]
    return factory


_MAX_GENERATED_ARGS = 16  # a file may declare kinds with thousands of arguments: no code for those


def _generic_builder(types: bytes, KO: Any, S: Any, K: Any, E: type) -> Callable[..., Any]:
    """The slow equivalent of a generated builder, for kinds with very many arguments."""
    tables = [S if letter == 0x73 else K if letter == 0x6B else None for letter in types]
    n = len(types)

    def build(v: list[int], i: int, t: int, tid: int) -> Any:
        values = v[i + 2 : i + 2 + n]
        if len(values) < n:
            raise IndexError("event cut short")
        return E(
            (KO, t, tid, *[x if table is None else table[x] for table, x in zip(tables, values, strict=True)])
        )

    return build


_Plan = dict[bytes, tuple[Callable[..., Any], int]]
# (tables the plan was built for, plan): one object, so threads never see a torn pair
_plan_cache: tuple[tuple[Any, ...], _Plan] = ((), {})


def _get_plan(
    arg_types: Sequence[bytes | None],
    kinds: Sequence[Any],
    strings: Sequence[str],
    stacks: Sequence[tuple[Frame, ...]],
    event_type: type,
) -> _Plan:
    """Per-kind builders for one generation's tables (cached: batches share them)."""
    global _plan_cache
    key = (arg_types, kinds, strings, stacks, event_type)
    cached_key, cached_plan = _plan_cache
    if len(cached_key) == len(key) and all(a is b for a, b in zip(cached_key, key, strict=True)):
        return cached_plan
    plan: _Plan = {}
    for number, types in enumerate(arg_types):
        if types is not None and number < 0x80:
            build = _event_factory(bytes(types))(kinds[number], strings, stacks, event_type)
            plan[bytes((number,))] = (build, len(types) + 2)
    _plan_cache = (key, plan)
    return plan


def decode_events_py(
    data: bytes,
    offset: int,
    end: int,
    base_ns: int,
    tid: int,
    n_events: int,
    arg_types: Sequence[bytes | None],
    kinds: Sequence[Any],
    strings: Sequence[str],
    stacks: Sequence[tuple[Frame, ...]],
    event_type: type,
) -> list[Any]:
    """Pure-Python ``_core.decode_events``: same arguments, results and errors.

    Fast path: split the batch into varints with one regex (kind numbers are below 128,
    so a kind byte is a one-byte varint too), map them to ints through a lookup table,
    then build each event with generated code. Anything wrong makes it fall back to a
    byte-by-byte decoder that finds the exact problem and offset.
    """
    global _values
    if not 0 <= offset <= end <= len(data) or n_events < 0:
        raise ValueError(f"bad batch bounds or event count at byte {offset}")
    if offset < end and data[end - 1] < 0x80:
        if _values is None:
            _values = _VarintValues()
        try:
            plan = _get_plan(arg_types, kinds, strings, stacks, event_type)
            tokens = _TOKEN.findall(data, offset, end)
            values = list(map(_values.__getitem__, tokens))
            out: list[Any] = []
            append = out.append
            i = 0
            n = len(tokens)
            t = base_ns
            while i < n:
                build, step = plan[tokens[i]]
                t += values[i + 1]
                append(build(values, i, t, tid))
                i += step
            if len(out) == n_events and not t >> 64:
                return out
        except Exception:
            pass
    elif offset >= end and n_events == 0:
        return []
    return _decode_events_exact(
        data, offset, end, base_ns, tid, n_events, arg_types, kinds, strings, stacks, event_type
    )


def _decode_events_exact(
    data: bytes,
    offset: int,
    end: int,
    base_ns: int,
    tid: int,
    n_events: int,
    arg_types: Sequence[bytes | None],
    kinds: Sequence[Any],
    strings: Sequence[str],
    stacks: Sequence[tuple[Frame, ...]],
    event_type: type,
) -> list[Any]:
    """Byte-by-byte reference decoder; raises ``ValueError("... at byte N")``."""
    out: list[Any] = []
    pos = offset
    t = base_ns
    try:
        while pos < end:
            if len(out) >= n_events:
                raise _Bad(f"bytes left over after the batch's {n_events} events", pos)
            at = pos
            kind = data[pos]
            types = arg_types[kind] if kind < len(arg_types) else None
            if types is None:
                raise _Bad(f"event kind {kind} is not in the kind table", pos)
            pos += 1
            dt, pos = _varint(data, pos, end)
            t += dt
            if t >> 64:
                raise _Bad("event time over 64 bits", at)
            event: list[Any] = [kinds[kind], t, tid]
            for letter in bytes(types):
                start = pos
                value, pos = _varint(data, pos, end)
                if letter == 0x73:  # s
                    if value >= len(strings):
                        raise _Bad(f"string id {value} out of range ({len(strings) - 1} strings)", start)
                    event.append(strings[value])
                elif letter == 0x6B:  # k
                    if value >= len(stacks):
                        raise _Bad(f"stack id {value} out of range ({len(stacks) - 1} stacks)", start)
                    event.append(stacks[value])
                elif letter == 0x75:  # u
                    event.append(value)
                else:
                    raise _Bad(f"unknown argument type {letter:#04x} of kind {kind}", start)
            out.append(event_type(event))
        if len(out) != n_events:
            raise _Bad(f"batch declares {n_events} events but holds {len(out)}", pos)
    except _Bad as bad:
        raise ValueError(f"{bad.problem} at byte {bad.offset}") from None
    return out


def _select_decoder() -> DecodeEvents:
    """``_core.decode_events`` when the C core is the active backend, else the twin."""
    try:
        from pyflight import core

        if core.BACKEND_NAME == "c":
            decode = getattr(core.backend, "decode_events", None)
            if callable(decode):
                return decode  # type: ignore[no-any-return]
    except Exception:
        pass
    return decode_events_py


# --------------------------------------------------------------------------------------
# File structure

_KNOWN_KINDS = frozenset(int(k) for k in Kind)
_TABLE_KINDS = frozenset(
    {
        Kind.THREAD_INFO,
        Kind.THREAD_START,
        Kind.THREAD_NAME,
        Kind.TASK_CREATE,
        Kind.TASK_INFO,
        Kind.USER_TASK_BEGIN,
        Kind.USER_TASK_INFO,
        Kind.DATA_LOSS,
        Kind.SOURCE_DISABLED,
    }
)


class _Header(NamedTuple):
    meta: dict[str, str]
    kinds: dict[int, tuple[str, tuple[tuple[str, str], ...]]]
    arg_types: tuple[bytes | None, ...]
    kind_objects: tuple[Any, ...]
    unknown_declared: bool
    end: int
    #: known kinds whose argument list differs in the file (another pyflight version):
    #: kind number -> (Kind, for each of our arguments its index in the file's or None)
    remap: dict[int, tuple[Kind, tuple[int | None, ...]]] = {}
    #: the file declares TASK_STEP or CALLBACK (one event per short step): expand them
    one_event_steps: bool = False


def _read_header(data: bytes) -> _Header:
    """Parse and check the header; any problem is a TraceFormatError (nothing is readable)."""
    size = len(data)
    if data[: len(MAGIC)] != MAGIC[: min(size, len(MAGIC))]:
        raise TraceFormatError("not a pyflight trace (wrong magic)", 0)
    if size < HEADER_FIXED.size:
        raise TraceFormatError(f"truncated header: the file has only {size} bytes", size)
    _magic, version, _flags, body_len, crc = HEADER_FIXED.unpack_from(data, 0)
    if version != VERSION:
        raise TraceFormatError(f"unsupported format version {version} (this pyflight reads {VERSION})", 8)
    start = HEADER_FIXED.size
    end = start + body_len
    if end > size:
        raise TraceFormatError(
            f"truncated header: its body needs {body_len} bytes, the file has {size - start}", size
        )
    if zlib.crc32(data[start:end]) != crc:
        raise TraceFormatError("header CRC mismatch", 16)
    try:
        return _parse_header_body(data, start, end)
    except _Bad as bad:
        raise TraceFormatError(f"bad header: {bad.problem}", bad.offset) from None


def _parse_header_body(data: bytes, pos: int, end: int) -> _Header:
    meta: dict[str, str] = {}
    n_meta, pos = _count(data, pos, end, "metadata", 2)
    for _ in range(n_meta):
        key, pos = _string(data, pos, end)
        value, pos = _string(data, pos, end)
        meta[key] = value
    kinds: dict[int, tuple[str, tuple[tuple[str, str], ...]]] = {}
    arg_types: list[bytes | None] = [None] * KIND_TABLE_SIZE
    kind_objects: list[Any] = [None] * KIND_TABLE_SIZE
    remap: dict[int, tuple[Kind, tuple[int | None, ...]]] = {}
    unknown = False
    n_kinds, pos = _count(data, pos, end, "kind", 3)
    for _ in range(n_kinds):
        entry = pos
        number, pos = _varint(data, pos, end)
        if number >= KIND_TABLE_SIZE:
            raise _Bad(f"kind number {number} out of range (kinds are below {KIND_TABLE_SIZE})", entry)
        if number in kinds:
            raise _Bad(f"kind {number} declared twice in the kind table", entry)
        name, pos = _string(data, pos, end)
        n_args, pos = _count(data, pos, end, "argument", 2)
        args = []
        for _ in range(n_args):
            if pos >= end:
                raise _Bad("truncated kind table", pos)
            letter = data[pos]
            if letter not in _TYPE_LETTERS:
                raise _Bad(f"kind {number} ({name}): unknown argument type {letter:#04x}", pos)
            arg_name, pos = _string(data, pos + 1, end)
            args.append((chr(letter), arg_name))
        types = "".join(letter for letter, _ in args)
        if number in _KNOWN_KINDS:
            kind = Kind(number)
            ours = "".join(a.type for a in ARGS[kind])
            if types == ours and tuple(n for _, n in args) == tuple(a.name for a in ARGS[kind]):
                kind_objects[number] = kind
            else:  # written by another version: map the arguments by name
                remap[number] = (kind, _map_args(kind, args, entry))
                kind_objects[number] = number
                unknown = True
        else:
            kind_objects[number] = number  # decoded, then skipped
            unknown = True
        kinds[number] = (name, tuple(args))
        arg_types[number] = types.encode("ascii")
    if pos != end:
        raise _Bad(f"{end - pos} bytes left over at the end of the header", pos)
    one_event_steps = any(kind_objects[k] is not None for k in _ONE_EVENT_KINDS)
    return _Header(meta, kinds, tuple(arg_types), tuple(kind_objects), unknown, end, remap, one_event_steps)


_DEFAULTS = {"u": 0, "s": "", "k": ()}


def _map_args(kind: Kind, args: list[tuple[str, str]], entry: int) -> tuple[int | None, ...]:
    """Where each of our arguments of ``kind`` sits among the file's, by name (None:
    absent, read as its type's zero). The same name with another type is an error."""
    index = {name: (i, letter) for i, (letter, name) in enumerate(args)}
    mapping: list[int | None] = []
    for arg in ARGS[kind]:
        found = index.get(arg.name)
        if found is not None and found[1] != arg.type:
            raise _Bad(
                f"kind table disagrees with this pyflight: kind {int(kind)} ({kind.name}) argument "
                f"{arg.name!r} has type {found[1]!r} in the file, {arg.type!r} here",
                entry,
            )
        mapping.append(None if found is None else found[0])
    return tuple(mapping)


def _remapped(event: Event, remap: dict[int, tuple[Kind, tuple[int | None, ...]]]) -> Event:
    kind, mapping = remap[event[0]]
    values = event[3:]
    args = [
        _DEFAULTS[arg.type] if i is None or i >= len(values) else values[i]
        for arg, i in zip(ARGS[kind], mapping, strict=True)
    ]
    return Event((kind, event[1], event[2], *args))


class _GenerationData(NamedTuple):
    generation: Generation
    events: list[Event]
    tids: list[int]
    skipped: int


def _read_generation(
    data: bytes, offset: int, start: int, end: int, header: _Header, decode: DecodeEvents
) -> _GenerationData:
    """Decode one CRC-checked generation body ``data[start:end]``; raises _Bad."""
    seq, pos = _varint(data, start, end)
    start_ns, pos = _varint(data, pos, end)
    end_ns, pos = _varint(data, pos, end)

    n, pos = _count(data, pos, end, "string", 1)
    strings = [""]
    for _ in range(n):
        text, pos = _string(data, pos, end)
        strings.append(text)
    strings_t = tuple(strings)
    n_strings = len(strings)

    n, pos = _count(data, pos, end, "frame", 3)
    frames: list[Frame] = []
    for _ in range(n):
        at = pos
        function_sid, pos = _varint(data, pos, end)
        file_sid, pos = _varint(data, pos, end)
        line, pos = _varint(data, pos, end)
        if function_sid >= n_strings or file_sid >= n_strings:
            bad_sid = function_sid if function_sid >= n_strings else file_sid
            raise _Bad(f"frame refers to string id {bad_sid} out of range ({n_strings - 1} strings)", at)
        frames.append(Frame(strings[function_sid], strings[file_sid], line))
    n_frames = len(frames)

    n, pos = _count(data, pos, end, "stack", 1)
    stacks: list[tuple[Frame, ...]] = [()]
    for _ in range(n):
        depth, pos = _count(data, pos, end, "stack depth", 1)
        stack = []
        for _ in range(depth):
            at = pos
            frame_id, pos = _varint(data, pos, end)
            if not 1 <= frame_id <= n_frames:
                raise _Bad(f"stack refers to frame id {frame_id} out of range ({n_frames} frames)", at)
            stack.append(frames[frame_id - 1])
        stacks.append(tuple(stack))
    stacks_t = tuple(stacks)

    events: list[Event] = []
    tids: list[int] = []
    declared = 0
    n, pos = _count(data, pos, end, "batch", 4)
    for _ in range(n):
        at = pos
        tid, pos = _varint(data, pos, end)
        base_ns, pos = _varint(data, pos, end)
        n_events, pos = _varint(data, pos, end)
        n_bytes, pos = _varint(data, pos, end)
        if n_bytes > end - pos:
            raise _Bad(f"batch of {n_bytes} bytes runs past the generation", at)
        if n_events * 2 > n_bytes:  # an event is at least a kind byte and a time delta
            raise _Bad(f"batch count of {n_events} events does not fit in its {n_bytes} bytes", at)
        try:
            batch = decode(
                data,
                pos,
                pos + n_bytes,
                base_ns,
                tid,
                n_events,
                header.arg_types,
                header.kind_objects,
                strings_t,
                stacks_t,
                Event,
            )
        except Exception as exc:
            raise _split_decoder_error(exc, at) from None
        events += batch
        tids.append(tid)
        declared += n_events
        pos += n_bytes
    if pos != end:
        raise _Bad(f"{end - pos} bytes left over at the end of the generation", pos)

    skipped = 0
    if header.unknown_declared:
        remap = header.remap
        if remap:
            events = [_remapped(e, remap) if type(e[0]) is int and e[0] in remap else e for e in events]
        kept = [e for e in events if type(e[0]) is Kind]
        skipped = len(events) - len(kept)
        events = kept
    if header.one_event_steps:
        events = _expander(decode)(events)
    generation = Generation(seq, start_ns, end_ns, offset, end - offset, declared)
    return _GenerationData(generation, events, tids, skipped)


#: (one-event kind, the BEGIN and the END it stands for[, a mark put after the END, with
#: the END's argument: TASK_SENT for a step that sent on a socket])
_STEP_RULES: tuple[tuple[Kind, ...], ...] = (
    (Kind.TASK_STEP, Kind.TASK_STEP_BEGIN, Kind.TASK_STEP_END),
    (Kind.TASK_STEP_SENT, Kind.TASK_STEP_BEGIN, Kind.TASK_STEP_END, Kind.TASK_SENT),
    (Kind.CALLBACK, Kind.CALLBACK_BEGIN, Kind.CALLBACK_END),
)
_RULE_OF = {rule[0]: rule[1:] for rule in _STEP_RULES}
_ONE_EVENT_KINDS = frozenset(_RULE_OF)


def _expander(decode: DecodeEvents) -> Callable[[list[Event]], list[Event]]:
    """The C twin of :func:`_expand_steps` when ``decode`` is the C core's decoder."""
    c_expand = getattr(getattr(decode, "__self__", None), "expand_steps", None)
    if c_expand is None:
        return _expand_steps
    return lambda events: c_expand(events, _STEP_RULES, Event)  # type: ignore[no-any-return]


def _expand_steps(events: list[Event]) -> list[Event]:
    """Each TASK_STEP / CALLBACK (a whole step in one event, dated at its end) replaced by
    the END it stands for at its time (its first argument), and the BEGIN at ``time -
    duration`` (its arguments but the duration) put before it and before the events of
    the same thread just before it that are later (those recorded during the step): each
    batch stays in time order; a rule's mark, if it has one, follows the END.
    ``_core.expand_steps`` is the C twin."""
    found = list(compress(range(len(events)), map(_ONE_EVENT_KINDS.__contains__, map(itemgetter(0), events))))
    if not found:
        return events
    out: list[Event] = []
    append = out.append
    start = 0
    for i in found:
        out += events[start:i]
        kind, t, tid, *args = events[i]
        begin_kind, end_kind, *mark = _RULE_OF[kind]
        t0 = t - args[-1] if t > args[-1] else 0
        j = len(out)
        while j and out[j - 1][2] == tid and out[j - 1][1] > t0:
            j -= 1
        out.insert(j, Event((begin_kind, t0, tid, *args[:-1])))
        append(Event((end_kind, t, tid, args[0])))
        if mark:
            append(Event((mark[0], t, tid, args[0])))
        start = i + 1
    out += events[start:]
    return out


def _read(data: bytes, path: str | None, strict: bool) -> Trace:
    # A load allocates millions of small tuples and no cycles: the cyclic GC would only
    # rescan them again and again (it more than halves throughput), so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _read_unpaused(data, path, strict)
    finally:
        if gc_was_enabled:
            gc.enable()


def _read_unpaused(data: bytes, path: str | None, strict: bool) -> Trace:
    header = _read_header(data)
    decode = _select_decoder()
    size = len(data)
    problems: list[str] = []
    generations: list[Generation] = []
    events: list[Event] = []
    tids: set[int] = set()
    skipped = 0
    pos = header.end

    def damage(message: str, problem: str, offset: int) -> None:
        if strict:
            raise TraceFormatError(problem, offset)
        problems.append(message)

    while pos < size:
        lost = size - pos
        tag = data[pos]
        if tag != GENERATION_TAG:
            if data.startswith(MAGIC, pos):
                damage(
                    f"the file holds more than one snapshot; only the first is read "
                    f"(another header at byte {pos}: {lost} bytes ignored)",
                    "a second snapshot follows the first",
                    pos,
                )
            else:
                damage(
                    f"{lost} bytes at byte {pos} are not a generation (appended junk?); ignored",
                    f"not a generation (tag {tag:#04x})",
                    pos,
                )
            break
        if pos + FRAME_FIXED.size > size:
            damage(
                f"generation at byte {pos} is cut short (truncated file): {lost} bytes lost",
                "truncated generation frame",
                pos,
            )
            break
        _tag, body_len, crc = FRAME_FIXED.unpack_from(data, pos)
        body = pos + FRAME_FIXED.size
        end = body + body_len
        if end > size:
            damage(
                f"generation at byte {pos} is cut short (truncated file): its body needs {body_len} "
                f"bytes, {size - body} remain; {lost} bytes lost",
                f"truncated generation: body needs {body_len} bytes, {size - body} remain",
                pos,
            )
            break
        if zlib.crc32(data[body:end]) != crc:
            damage(
                f"generation at byte {pos}: CRC mismatch; it and the rest of the file ({lost} bytes) "
                "were not read",
                "generation CRC mismatch",
                pos,
            )
            break
        try:
            gen = _read_generation(data, pos, body, end, header, decode)
            if generations and gen.generation.seq <= generations[-1].seq:
                raise _Bad(
                    f"sequence number {gen.generation.seq} does not increase "
                    f"(previous {generations[-1].seq})",
                    body,
                )
        except _Bad as bad:
            damage(
                f"generation at byte {pos} does not decode: {bad.problem} at byte {bad.offset}; "
                f"it and the rest of the file ({lost} bytes) were not read",
                bad.problem,
                bad.offset,
            )
            break
        generations.append(gen.generation)
        events += gen.events
        tids.update(gen.tids)
        skipped += gen.skipped
        pos = end

    events.sort(key=itemgetter(1))  # stable: batch and file order kept for equal times
    special = list(compress(events, map(_TABLE_KINDS.__contains__, map(itemgetter(0), events))))
    threads, tasks, user_tasks = _tables(special, tids)
    return Trace(
        path=path,
        meta=header.meta,
        kinds=header.kinds,
        generations=generations,
        events=events,
        threads=threads,
        tasks=tasks,
        user_tasks=user_tasks,
        warnings=problems,
        bytes_read=pos,
        bytes_lost=size - pos,
        skipped_events=skipped,
        start_ns=min((g.start_ns for g in generations), default=0),
        end_ns=max((g.end_ns for g in generations), default=0),
        data_loss=[e for e in special if e[0] in (Kind.DATA_LOSS, Kind.SOURCE_DISABLED)],
    )


def _tables(
    special: Iterable[Event], tids: Iterable[int]
) -> tuple[dict[int, ThreadInfo], dict[int, TaskInfo], dict[int, UserTaskInfo]]:
    """Thread, task and user-task tables from the info events, later facts winning."""
    threads: dict[int, ThreadInfo] = {tid: ThreadInfo(tid, "", 0) for tid in tids}
    tasks: dict[int, TaskInfo] = {}
    user_tasks: dict[int, UserTaskInfo] = {}
    for e in special:
        kind = e[0]
        if kind in (Kind.THREAD_INFO, Kind.THREAD_START, Kind.THREAD_NAME):
            tid = e[3] or e[2]
            info = threads.get(tid)
            if info is None:
                info = threads[tid] = ThreadInfo(tid, "", 0)
            if e[4]:
                info.name = e[4]
            if kind != Kind.THREAD_NAME and e[5]:
                info.ident = e[5]
        elif kind in (Kind.TASK_CREATE, Kind.TASK_INFO):
            task = tasks.get(e[3])
            if task is None:
                tasks[e[3]] = TaskInfo(e[3], e[4], e[5], e[6])
            else:
                task.name = e[4] or task.name
                task.coro = e[5] or task.coro
                task.parent = e[6] or task.parent
        elif kind in (Kind.USER_TASK_BEGIN, Kind.USER_TASK_INFO):
            user = user_tasks.get(e[3])
            if user is None:
                user_tasks[e[3]] = UserTaskInfo(e[3], e[5], e[4])
            else:
                user.name = e[5] or user.name
                user.parent = e[4] or user.parent
    return (
        dict(sorted(threads.items())),
        dict(sorted(tasks.items())),
        dict(sorted(user_tasks.items())),
    )


def loads(data: bytes, *, strict: bool = False, name: str | None = None) -> Trace:
    """Read a trace from bytes (``name``: the file they came from). See :func:`load`."""
    trace = _read(bytes(data), name, strict)
    for message in trace.warnings:
        warnings.warn(message, TraceWarning, stacklevel=2)
    return trace


def load(path: str | os.PathLike[str], *, strict: bool = False) -> Trace:
    """Read a trace file.

    Header problems raise :class:`TraceFormatError`. Damage further on keeps the
    generations before it, notes it in ``trace.warnings`` and warns with
    :class:`TraceWarning`; ``strict=True`` raises :class:`TraceFormatError` instead.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    trace = _read(data, name, strict)
    for message in trace.warnings:
        warnings.warn(message, TraceWarning, stacklevel=2)
    return trace


# --------------------------------------------------------------------------------------
# describe(): the text of `pyflight info FILE`


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _seconds(ns: int) -> str:
    s = ns / 1e9
    if s >= 100:
        return f"{s:,.1f} s"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def _iso(wall_ns: int | None) -> str | None:
    if wall_ns is None:
        return None
    try:
        moment = datetime.datetime.fromtimestamp(wall_ns / 1e9, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _table(rows: Sequence[Sequence[str]], indent: str = "  ", right: Sequence[int] = ()) -> list[str]:
    """Rows as aligned columns; column indexes in ``right`` are right-aligned."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _short(text: str, width: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def describe(trace: Trace) -> str:
    """A readable summary of a trace: what ``pyflight info FILE`` prints."""
    meta = trace.meta
    out: list[str] = []

    def line(label: str, value: str) -> None:
        out.append(f"{label:<13}{value}".rstrip())

    line("trace", trace.path if trace.path is not None else "(from bytes)")
    writer = f"pyflight {meta.get('pyflight.version', '?')}"
    if "core" in meta:
        writer += f", {meta['core']} core"
    line("written by", writer)
    process = [f"pid {meta['pid']}"] if "pid" in meta else []
    process += [meta[k] for k in ("platform",) if k in meta]
    if process:
        line("process", _short(", ".join(process)))
    if "python" in meta:
        line("python", _short(meta["python"].split("\n")[0]))
    if "argv" in meta:
        line("argv", _short(meta["argv"], 80))
    if "reason" in meta:
        line("reason", _short(meta["reason"]))
    min_age, max_bytes = _int(meta.get("min_age_ns")), _int(meta.get("max_bytes"))
    window = [f"min_age {_seconds(min_age)}"] if min_age is not None else []
    window += [f"max_bytes {_bytes(max_bytes)}"] if max_bytes is not None else []
    if window:
        line("window", ", ".join(window))
    dropped_g, dropped_e = _int(meta.get("dropped_generations")), _int(meta.get("dropped_events"))
    if dropped_g or dropped_e:
        line("dropped", f"{dropped_g or 0} generations, {dropped_e or 0} events before this snapshot")

    out.append("")
    if trace.generations:
        start = _iso(trace.wall_time_ns(trace.start_ns))
        line("time span", _seconds(trace.duration_ns) + (f", from {start}" if start else ""))
        snapshot = _int(meta.get("snapshot_ns"))
        if snapshot is not None:
            taken = _iso(trace.wall_time_ns(snapshot))
            after = _seconds(max(0, snapshot - trace.end_ns))
            line("snapshot", f"taken {after} after the last generation" + (f", at {taken}" if taken else ""))
        first, last = trace.generations[0].seq, trace.generations[-1].seq
        size = _bytes(sum(g.size for g in trace.generations))
        line("generations", f"{len(trace.generations)} (seq {first}..{last}), {size}")
    else:
        line("generations", "none")

    out.append("")
    line("events", f"{len(trace.events):,}")
    counts = trace.count_by_kind().most_common()
    out += _table([(kind.name, f"{n:,}") for kind, n in counts], right=(1,))
    if trace.skipped_events:
        out.append(f"  ({trace.skipped_events:,} events of kinds unknown to this pyflight skipped)")

    out.append("")
    line("threads", str(len(trace.threads)))
    per_thread = Counter(map(itemgetter(2), trace.events))
    rows = [("tid", "name", "events")]
    rows += [
        (str(t.tid), _short(t.name, 40) or "?", f"{per_thread[t.tid]:,}") for t in trace.threads.values()
    ]
    if len(rows) > 1:
        out += _table(rows, right=(0, 2))

    def some(names: Iterable[str], limit: int = 5) -> str:
        distinct = [_short(n, 30) for n in dict.fromkeys(names) if n]
        more = f", ... ({len(distinct) - limit} more names)" if len(distinct) > limit else ""
        return ": " + ", ".join(distinct[:limit]) + more if distinct else ""

    line("tasks", f"{len(trace.tasks):,}{some(t.name for t in trace.tasks.values())}")
    line("user tasks", f"{len(trace.user_tasks):,}{some(t.name for t in trace.user_tasks.values())}")

    out.append("")
    if trace.data_loss:
        line("data loss", f"{len(trace.data_loss)} report" + ("s" if len(trace.data_loss) > 1 else ""))
        for e in trace.data_loss[:10]:
            reason = _short(str(e.arg("reason")))
            if e.kind == Kind.DATA_LOSS:
                out.append(f"  {e.arg('source')}: {e.arg('events'):,} events lost ({reason})")
            else:
                out.append(f"  {e.arg('source')}: disabled ({reason})")
        if len(trace.data_loss) > 10:
            out.append(f"  ... ({len(trace.data_loss) - 10} more)")
    else:
        line("data loss", "none")
    if trace.warnings:
        line("warnings", str(len(trace.warnings)))
        out += [f"  {w}" for w in trace.warnings]
        out.append(f"  {trace.bytes_lost:,} of {trace.bytes_read + trace.bytes_lost:,} bytes not read")
    else:
        line("warnings", "none")
    return "\n".join(out)
