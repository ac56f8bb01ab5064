"""Builds valid trace bytes by hand (docs/format.md), so reader tests need no recording core.

    gen = Gen(seq=1, start_ns=1000, end_ns=2000)
    gen.event(7, Kind.LOG, 1500, task=0, category="db", message="hi")  # thread, kind, time, args
    data = trace([gen])

Arguments go by name (or position). String arguments take a ``str`` (interned) and stack
arguments a sequence of ``(function, file, line)`` tuples, innermost first (interned);
either also takes an ``int``, written as a raw id, to build files with bad ids.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from pyflight.core.encoding import HEADER_FIXED, MAGIC, VERSION, frame_generation, put_string, put_varint
from pyflight.core.events import ARGS
from pyflight.format.writer import encode_header

#: kind number -> (name, ((type, arg_name), ...)): the kind table of a file.
KindTable = Mapping[int, tuple[str, Sequence[tuple[str, str]]]]

DEFAULT_META = {
    "pyflight.version": "0.1.0",
    "core": "python",
    "pid": "4242",
    "python": "3.11.7 (main) [GCC]",
    "platform": "linux",
    "argv": '["app.py", "--serve"]',
    "clock": "monotonic",
    "clock.monotonic_ns": "1000000000",
    "clock.wall_ns": "1700000000000000000",
    "min_age_ns": "10000000000",
    "max_bytes": "10485760",
    "snapshot_ns": "1900000000",
    "reason": "api",
}


def our_kinds() -> dict[int, tuple[str, tuple[tuple[str, str], ...]]]:
    """This pyflight's kind table, in the shape of ``Trace.kinds``."""
    return {int(k): (k.name, tuple((a.type, a.name) for a in args)) for k, args in sorted(ARGS.items())}


def header(meta: Mapping[str, str] | None = None, kinds: KindTable | None = None) -> bytes:
    """A file header; ``kinds`` replaces this pyflight's kind table (to declare extra kinds)."""
    meta = DEFAULT_META if meta is None else meta
    if kinds is None:
        return encode_header(meta)
    body = bytearray()
    put_varint(body, len(meta))
    for key, value in meta.items():
        put_string(body, key)
        put_string(body, value)
    put_varint(body, len(kinds))
    for number, (name, args) in kinds.items():
        put_varint(body, number)
        put_string(body, name)
        put_varint(body, len(args))
        for typ, arg_name in args:
            body.append(ord(typ))
            put_string(body, arg_name)
    return raw_header(bytes(body))


def raw_header(body: bytes, version: int = VERSION, flags: int = 0) -> bytes:
    """Fixed header fields (with a correct CRC) in front of ``body``."""
    return HEADER_FIXED.pack(MAGIC, version, flags, len(body), zlib.crc32(body)) + body


class Batch:
    """Events of one thread, in recording order: (kind, time, raw arg values)."""

    def __init__(self, tid: int, base_ns: int | None) -> None:
        self.tid = tid
        self.base_ns = base_ns
        self.events: list[tuple[int, int, list[int]]] = []

    def encode(self, out: bytearray) -> None:
        base = self.base_ns if self.base_ns is not None else (self.events[0][1] if self.events else 0)
        payload = bytearray()
        prev = base
        for kind, time, args in self.events:
            assert time >= prev, "events of a batch must not go back in time"
            payload.append(kind)
            put_varint(payload, time - prev)
            prev = time
            for value in args:
                put_varint(payload, value)
        put_varint(out, self.tid)
        put_varint(out, base)
        put_varint(out, len(self.events))
        put_varint(out, len(payload))
        out += payload


#: Arguments appended to a kind after format v1 shipped; tests may leave them out.
ADDED_LATER = frozenset({"cpu", "span"})


class Gen:
    """One generation under construction, with its own string, frame and stack tables."""

    def __init__(self, seq: int, start_ns: int, end_ns: int, kinds: KindTable | None = None) -> None:
        self.seq = seq
        self.start_ns = start_ns
        self.end_ns = end_ns
        table = our_kinds() if kinds is None else kinds
        self.types = {number: tuple(args) for number, (_name, args) in table.items()}
        self.strings: list[str] = []
        self.frames: list[tuple[int, int, int]] = []
        self.stacks: list[tuple[int, ...]] = []
        self.batches: list[Batch] = []
        self._sids: dict[str, int] = {}
        self._fids: dict[tuple[int, int, int], int] = {}
        self._kids: dict[tuple[int, ...], int] = {}

    def string(self, text: str) -> int:
        if text == "":
            return 0
        if text not in self._sids:
            self.strings.append(text)
            self._sids[text] = len(self.strings)
        return self._sids[text]

    def frame(self, function: str, file: str, line: int) -> int:
        key = (self.string(function), self.string(file), line)
        if key not in self._fids:
            self.frames.append(key)
            self._fids[key] = len(self.frames)
        return self._fids[key]

    def stack(self, frames: Sequence[tuple[str, str, int]]) -> int:
        if not frames:
            return 0
        key = tuple(self.frame(*f) for f in frames)
        if key not in self._kids:
            self.stacks.append(key)
            self._kids[key] = len(self.stacks)
        return self._kids[key]

    def batch(self, tid: int, base_ns: int | None = None) -> Batch:
        """Start a new batch (a thread may have several batches in one generation)."""
        b = Batch(tid, base_ns)
        self.batches.append(b)
        return b

    def event(self, thread: int, kind: int, time: int, /, *args: Any, **named: Any) -> None:
        """Append to ``thread``'s last batch (creating one if needed)."""
        spec = self.types[int(kind)]
        values = list(args) + [None] * (len(spec) - len(args))
        for i, (_typ, name) in enumerate(spec):
            if name in named:
                values[i] = named.pop(name)
        assert not named, f"unknown arguments {named}"
        raw = []
        for i, (_typ, name) in enumerate(spec):
            if values[i] is None and name in ADDED_LATER:
                values[i] = 0  # as the reader fills them in for older traces
        for (typ, name), value in zip(spec, values, strict=True):
            assert value is not None, f"missing argument {name}"
            if typ == "s" and isinstance(value, str):
                value = self.string(value)
            elif typ == "k" and not isinstance(value, int):
                value = self.stack(value)
            raw.append(int(value))
        for b in reversed(self.batches):
            if b.tid == thread:
                break
        else:
            b = self.batch(thread)
        b.events.append((int(kind), time, raw))

    def body(self) -> bytes:
        out = bytearray()
        for value in (self.seq, self.start_ns, self.end_ns, len(self.strings)):
            put_varint(out, value)
        for text in self.strings:
            put_string(out, text)
        put_varint(out, len(self.frames))
        for function_sid, file_sid, line in self.frames:
            put_varint(out, function_sid)
            put_varint(out, file_sid)
            put_varint(out, line)
        put_varint(out, len(self.stacks))
        for frame_ids in self.stacks:
            put_varint(out, len(frame_ids))
            for fid in frame_ids:
                put_varint(out, fid)
        put_varint(out, len(self.batches))
        for b in self.batches:
            b.encode(out)
        return bytes(out)

    def encode(self) -> bytes:
        """The framed generation: tag, length, CRC, body."""
        return frame_generation(self.body())


def trace(
    gens: Sequence[Gen | bytes], meta: Mapping[str, str] | None = None, head: bytes | None = None
) -> bytes:
    """A whole file: header then the generations (a ``bytes`` item is used as is)."""
    out = bytearray(header(meta) if head is None else head)
    for g in gens:
        out += g if isinstance(g, bytes) else g.encode()
    return bytes(out)


def reframe(framed: bytes) -> bytes:
    """Recompute a framed generation's length and CRC after its body was edited."""
    return frame_generation(framed[9:])


STACK_A = (("inner", "/app/a.py", 10), ("middle", "/app/a.py", 20), ("outer", "/app/main.py", 3))
STACK_B = (("wait", "/usr/lib/python3.11/threading.py", 320), ("outer", "/app/main.py", 3))


def sample_gens() -> list[Gen]:
    """Two generations, two threads, interleaved batches: a small file touching every table."""
    from pyflight.core.events import BlockReason, Kind, TaskOutcome, ThreadState

    g1 = Gen(seq=3, start_ns=1_000_000_000, end_ns=1_000_500_000)
    g1.event(11, Kind.THREAD_INFO, 1_000_000_010, tid=11, name="MainThread", ident=140001)
    g1.event(11, Kind.THREAD_INFO, 1_000_000_020, tid=12, name="worker", ident=140002)
    g1.event(11, Kind.TASK_INFO, 1_000_000_030, task=1, name="main", coro="main()", parent=0)
    g1.event(11, Kind.USER_TASK_INFO, 1_000_000_040, id=5, parent=0, name="GET /users")
    g1.event(11, Kind.TASK_STEP_BEGIN, 1_000_001_000, task=1)
    g1.event(12, Kind.BLOCK_BEGIN, 1_000_001_000, reason=BlockReason.LOCK, obj=140234523452, stack=STACK_B)
    g1.event(11, Kind.TASK_CREATE, 1_000_002_000, task=2, name="fetch", coro="fetch(url)", parent=1)
    g1.event(
        11, Kind.TASK_WAIT, 1_000_003_000, task=1, reason=BlockReason.AWAIT, what="Future", stack=STACK_A
    )
    g1.event(11, Kind.TASK_STEP_END, 1_000_003_500, task=1)
    g1.event(12, Kind.BLOCK_END, 1_000_300_000, reason=BlockReason.LOCK, obj=140234523452, waker=11)
    g1.event(12, Kind.LOG, 1_000_300_001, task=0, category="", message="unlocked")
    g2 = Gen(seq=4, start_ns=1_000_500_000, end_ns=1_002_000_000)
    g2.event(12, Kind.THREAD_INFO, 1_000_500_001, tid=11, name="MainThread", ident=140001)
    g2.event(12, Kind.THREAD_INFO, 1_000_500_002, tid=12, name="worker", ident=140002)
    g2.event(12, Kind.SAMPLE, 1_000_600_000, tid=11, task=2, stack=STACK_A, state=ThreadState.RUNNING)
    g2.event(11, Kind.TASK_DONE, 1_000_700_000, task=2, outcome=TaskOutcome.FAILED, error="KeyError('x')")
    g2.event(11, Kind.USER_TASK_BEGIN, 1_000_800_000, id=6, parent=5, name="query")
    g2.event(11, Kind.DATA_LOSS, 1_000_900_000, source="sampler", events=3, reason="queue full")
    g2.event(13, Kind.THREAD_START, 1_001_000_000, tid=13, name="late", ident=140003, parent=11)
    g2.event(13, Kind.COUNTER, 1_001_000_000, name="queue", value=7)
    g2.event(12, Kind.GC_BEGIN, 1_001_500_000, generation=2)
    g2.event(12, Kind.GC_END, 1_001_600_000, generation=2, collected=10, uncollectable=0)
    return [g1, g2]


def sample_trace() -> bytes:
    return trace(sample_gens())
