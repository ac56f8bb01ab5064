"""Fuzzing the reader: whatever the bytes, a load ends in a complete read, a partial read
with a warning, or TraceFormatError, and what it returns is internally consistent.

Reproducible: hypothesis runs seeded and without an example database. Every test fuzzes
both decoders (C and Python) whichever core the run forces, so the C-core and the
pure-core runs of one interpreter draw different halves of each test's examples (their
seeds differ) instead of repeating one another.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, seed, settings
from hypothesis import strategies as st

import tracegen
from pyflight.core.encoding import HEADER_FIXED, MAGIC, put_varint
from pyflight.core.events import ARGS, Kind
from pyflight.errors import TraceFormatError
from pyflight.format import reader
from pyflight.format.reader import Event, Frame, Trace, decode_events_py, describe, loads
from tracegen import STACK_A, STACK_B, Gen

#: 0 in the C-core run, 1 in the pure-core run (see the module's docstring)
RUN_SEED = int(os.environ.get("PYFLIGHT_PURE_PYTHON", "").strip() not in ("", "0"))


def fuzz_settings(n: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``n`` examples over the two runs of an interpreter: half in each, seeded by it."""
    chosen = settings(
        max_examples=max(1, n // 2),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    def apply(test: Callable[..., None]) -> Callable[..., None]:
        return seed(RUN_SEED)(chosen(test))  # type: ignore[no-any-return]

    return apply


def _c_decode_events() -> Callable[..., list[Any]] | None:
    try:
        from pyflight import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(_core, "decode_events", None)


C_DECODE = _c_decode_events()
DECODERS: list[Callable[..., list[Any]]] = [decode_events_py] + ([C_DECODE] if C_DECODE is not None else [])

# ------------------------------------------------------------------ the base file

TABLE: dict[int, tuple[str, tuple[tuple[str, str], ...]]] = dict(tracegen.our_kinds())
TABLE[100] = ("FUTURE", (("u", "x"), ("s", "label"), ("k", "where")))
TABLE[127] = ("BARE", ())
TABLE[101] = ("WIDE", tuple(("usk"[i % 3], f"a{i}") for i in range(20)))  # no generated builder
HEAD = tracegen.header(kinds=TABLE)


def _third_gen() -> Gen:
    g = Gen(7, 1_002_000_000, 1_003_000_000, kinds=TABLE)
    a = g.batch(21, base_ns=1_002_000_000)
    b = g.batch(22)
    g.event(21, Kind.THREAD_NAME, 1_002_000_100, tid=21, name="renamed")
    g.event(21, 100, 1_002_000_200, x=2**63, label="future", where=STACK_B)
    g.event(22, Kind.TASK_CREATE, 1_002_000_150, task=9, name="t9", coro="c()", parent=2)
    g.event(22, 127, 1_002_000_200)
    g.event(22, 101, 1_002_000_300, *[(i, "w", STACK_A)[i % 3] for i in range(20)])
    g.event(21, Kind.THREAD_EXCEPTION, 1_002_100_000, tid=21, type="ValueError", message="é ✓", stack=STACK_A)
    g.event(22, Kind.LOOP_STALL, 1_002_900_000, loop=1, task=9, duration=2**40, stack=())
    assert a.events and b.events
    return g


GENS = [g.encode() for g in tracegen.sample_gens()] + [_third_gen().encode()]
BASE = HEAD + b"".join(GENS)
GEN_OFFSETS = [len(HEAD) + sum(len(g) for g in GENS[:i]) for i in range(len(GENS))]


# ------------------------------------------------------------------ the invariant


def check_consistent(t: Trace, data: bytes) -> None:
    """Everything a reader may return is self-consistent and fully resolved."""
    assert t.bytes_read + t.bytes_lost == len(data)
    assert (t.bytes_lost > 0) == bool(t.warnings)
    assert all(isinstance(w, str) and w for w in t.warnings)
    pos = t.generations[0].offset if t.generations else t.bytes_read
    previous = None
    for g in t.generations:
        assert g.offset == pos and g.size >= 9
        pos += g.size
        assert previous is None or g.seq > previous
        previous = g.seq
    assert pos == t.bytes_read
    assert sum(g.n_events for g in t.generations) == len(t.events) + t.skipped_events
    last = -1
    for e in t.events:
        assert type(e) is Event and type(e.kind) is Kind
        assert e.time >= last, "events not in time order"
        last = e.time
        spec = ARGS[e.kind]
        assert len(e) == 3 + len(spec)
        assert e.thread in t.threads
        for arg, value in zip(spec, e[3:], strict=True):
            if arg.type == "u":
                assert type(value) is int and 0 <= value < 2**64
            elif arg.type == "s":
                assert type(value) is str
            else:
                assert type(value) is tuple
                for f in value:
                    assert type(f) is Frame and type(f.function) is str and type(f.file) is str
                    assert type(f.line) is int
    for e in t.data_loss:
        assert e.kind in (Kind.DATA_LOSS, Kind.SOURCE_DISABLED)
    if t.events:
        assert t.count_by_kind().total() == len(t.events)
    assert isinstance(describe(t), str)


def summary(t: Trace) -> tuple[Any, ...]:
    """What two decoders must agree on (warning texts may word errors differently)."""
    return (t.generations, t.events, t.threads, t.tasks, t.user_tasks, t.bytes_read, len(t.warnings))


def read_checked(data: bytes) -> Trace | None:
    """Load ``data`` every way: non-strict and strict, with each available decoder."""
    results = []
    for decode in DECODERS:
        original = reader._select_decoder
        reader._select_decoder = lambda decode=decode: decode  # type: ignore[misc]
        try:
            results.append(_read_one(data))
        finally:
            reader._select_decoder = original
    first = results[0]
    if currently_in_test_context():  # outcome statistics: pytest --hypothesis-show-statistics
        event("format error" if first is None else "partial read" if first.warnings else "complete read")
    for other in results[1:]:
        assert (first is None) == (other is None)
        if first is not None and other is not None:
            assert summary(first) == summary(other)
    return first


def _read_one(data: bytes) -> Trace | None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t = loads(data)
        except TraceFormatError as exc:
            assert caught == []
            assert exc.offset is not None and 0 <= exc.offset <= len(data)
            with pytest.raises(TraceFormatError):
                loads(data, strict=True)
            return None
    assert [str(w.message) for w in caught] == t.warnings
    assert all(w.category is reader.TraceWarning for w in caught)
    check_consistent(t, data)
    if t.warnings:
        with pytest.raises(TraceFormatError) as info:
            loads(data, strict=True)
        assert info.value.offset is not None and t.bytes_read <= info.value.offset <= len(data)
    else:
        assert summary(loads(data, strict=True)) == summary(t)
    return t


def test_base_file_is_clean() -> None:
    t = read_checked(BASE)
    assert t is not None and t.warnings == [] and t.skipped_events == 3
    assert len(t.generations) == 3 and t.threads[21].name == "renamed"


# ------------------------------------------------------------------ cases


def test_truncation_at_every_offset() -> None:
    full = len(read_checked(BASE).events)  # type: ignore[union-attr]
    seen_partial = 0
    for cut in range(len(BASE)):
        t = read_checked(BASE[:cut])
        if cut < len(HEAD):
            assert t is None
            continue
        assert t is not None
        kept = sum(1 for off, g in zip(GEN_OFFSETS, GENS, strict=True) if off + len(g) <= cut)
        assert len(t.generations) == kept
        assert bool(t.warnings) == (cut not in GEN_OFFSETS)
        assert len(t.events) < full
        seen_partial += bool(t.warnings)
    assert seen_partial == len(BASE) - len(HEAD) - len(GENS)


@fuzz_settings(1000)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, len(BASE) - 1), st.integers(len(HEAD), len(BASE) - 1)), st.integers(0, 7)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_random_bit_flips(flips: list[tuple[int, int]]) -> None:
    data = bytearray(BASE)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    t = read_checked(bytes(data))
    if t is not None and min(pos for pos, _ in flips) >= len(HEAD):
        assert t.meta == tracegen.DEFAULT_META  # a flip after the header never changes it


@fuzz_settings(500)
@given(
    st.lists(
        st.tuples(st.integers(len(HEAD), len(BASE) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    )
)
def test_random_byte_overwrites(writes: list[tuple[int, int]]) -> None:
    data = bytearray(BASE)
    for pos, value in writes:
        data[pos] = value
    t = read_checked(bytes(data))
    assert t is not None  # the header is intact: never a format error
    changed = min(pos for pos, value in writes if BASE[pos] != value) if bytes(data) != BASE else len(BASE)
    intact = sum(1 for off, g in zip(GEN_OFFSETS, GENS, strict=True) if off + len(g) <= changed)
    assert len(t.generations) >= intact  # everything before the damage is kept


JUNK = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.binary(max_size=32).map(lambda b: b"G" + b),
    st.binary(max_size=32).map(lambda b: MAGIC[: 1 + len(b) % 8] + b),
    st.integers(0, 2**32 - 1).map(lambda n: b"G" + n.to_bytes(4, "little") + b"\0\0\0\0"),
)


@fuzz_settings(300)
@given(JUNK)
def test_appended_junk(junk: bytes) -> None:
    t = read_checked(BASE + junk)
    assert t is not None and len(t.generations) == 3
    assert len(t.warnings) == 1 and t.bytes_read == len(BASE) and t.bytes_lost == len(junk)


@fuzz_settings(150)
@given(st.integers(1, len(BASE)), st.booleans())
def test_two_snapshots_appended(cut: int, truncate_first: bool) -> None:
    first = BASE[: GEN_OFFSETS[-1]] if truncate_first else BASE
    t = read_checked(first + BASE[:cut])
    assert t is not None and len(t.warnings) == 1
    assert t.bytes_read == len(first)
    if cut >= len(MAGIC):
        assert "more than one snapshot" in t.warnings[0]


def _mutate(body: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(body)
    for op, where, value in ops:
        pos = where % (len(out) + 1)
        if op == 0 and pos < len(out):
            out[pos] = value
        elif op == 1:
            out[pos:pos] = bytes((value,))
        elif op == 2:
            del out[pos : pos + 1 + value % 3]
        elif op == 3 and pos < len(out):
            out[pos] ^= 1 << (value % 8)
        elif op == 4:  # a varint-ish run: long continuation bytes
            out[pos:pos] = b"\xff" * (1 + value % 11) + b"\x01"
    return bytes(out)


MUTATIONS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=5
)


@fuzz_settings(2000)
@given(st.integers(0, len(GENS) - 1), MUTATIONS)
def test_body_mutations_with_valid_crc(index: int, ops: list[tuple[int, int, int]]) -> None:
    """Reframed with a correct CRC, so the generation decoder itself is what is fuzzed."""
    framed = GENS[index]
    mutated = tracegen.reframe(framed[:9] + _mutate(framed[9:], ops))
    data = HEAD + b"".join(GENS[:index]) + mutated + b"".join(GENS[index + 1 :])
    t = read_checked(data)
    assert t is not None
    assert len(t.generations) >= index


@fuzz_settings(300)
@given(MUTATIONS)
def test_header_mutations_with_valid_crc(ops: list[tuple[int, int, int]]) -> None:
    body = _mutate(HEAD[HEADER_FIXED.size :], ops)
    head = HEADER_FIXED.pack(MAGIC, 1, 0, len(body), zlib.crc32(body)) + body
    read_checked(head + b"".join(GENS))


# ------------------------------------------------------------------ the batch decoders directly

_STRINGS = ("", "a", "bc", "déf")
_STACKS: tuple[tuple[Frame, ...], ...] = (
    (),
    (Frame("f", "x.py", 1),),
    (Frame("g", "y.py", 2), Frame("f", "x.py", 1)),
)
_ARG_TYPES = tuple(("".join(t for t, _ in TABLE[k][1]).encode() if k in TABLE else None) for k in range(128))
_OURS = {int(k) for k in Kind}
_KINDS = tuple((Kind(k) if k in _OURS else k) if k in TABLE else None for k in range(128))
_AT_BYTE = re.compile(r"at byte (\d+)$")


def _encode_events(events: list[tuple[int, int, list[int]]]) -> bytes:
    out = bytearray()
    for kind, dt, args in events:
        out.append(kind)
        put_varint(out, dt)
        for a in args:
            put_varint(out, a)
    return bytes(out)


_ARG_VALUES = {
    "u": st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)),
    "s": st.integers(0, len(_STRINGS)),  # the last one is out of range
    "k": st.integers(0, len(_STACKS)),
}


def _event_of(kind: int) -> st.SearchStrategy[tuple[int, int, list[int]]]:
    return st.tuples(
        st.just(kind),
        st.one_of(st.integers(0, 200), st.integers(0, 2**64 - 1)),
        st.tuples(*(_ARG_VALUES[t] for t, _ in TABLE[kind][1])).map(list),
    )


_EVENT = st.sampled_from(sorted(TABLE)).flatmap(_event_of)


def _decode_outcome(decode: Callable[..., list[Any]], args: tuple[Any, ...]) -> Any:
    try:
        out = decode(*args)
    except ValueError as exc:
        m = _AT_BYTE.search(str(exc))
        assert m is not None, str(exc)
        assert args[1] <= int(m.group(1)) <= args[2]
        return "error"
    assert all(type(e) is Event for e in out)
    return [tuple(e) for e in out]


@fuzz_settings(2000)
@given(
    st.lists(_EVENT, max_size=8),
    st.one_of(st.just([]), MUTATIONS),
    st.integers(0, 2**64 - 1),
    st.integers(-1, 2),
    st.binary(max_size=3),
)
def test_decoders_on_batches(
    events: list[tuple[int, int, list[int]]],
    ops: list[tuple[int, int, int]],
    base_ns: int,
    count_delta: int,
    prefix: bytes,
) -> None:
    payload = _mutate(_encode_events(events), ops) if ops else _encode_events(events)
    data = prefix + payload + b"\x99"  # the decoder must stay within [offset, end)
    n_events = max(0, len(events) + count_delta)
    args = (data, len(prefix), len(prefix) + len(payload), base_ns, 5, n_events, _ARG_TYPES, _KINDS,
            _STRINGS, _STACKS, Event)  # fmt: skip
    outcomes = [_decode_outcome(d, args) for d in DECODERS]
    event("decode error" if outcomes[0] == "error" else f"decoded ({min(len(outcomes[0]), 3)}+ events)")
    assert all(o == outcomes[0] for o in outcomes), outcomes
    exact = _decode_outcome(reader._decode_events_exact, args)
    assert exact == outcomes[0]
    if not ops:
        assert (outcomes[0] != "error") == (n_events == len(events) and _valid(events, base_ns))


def _valid(events: list[tuple[int, int, list[int]]], base_ns: int) -> bool:
    """Whether an unmutated event list must decode: ids in range, times within 64 bits."""
    limits = {"u": 2**64, "s": len(_STRINGS), "k": len(_STACKS)}
    for kind, _dt, args in events:
        for (typ, _name), value in zip(TABLE[kind][1], args, strict=True):
            if value >= limits[typ]:
                return False
    return base_ns + sum(dt for _, dt, _ in events) < 2**64
