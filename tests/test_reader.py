"""The trace reader on hand-built files (tests/tracegen.py): decoding, tables, damage."""

from __future__ import annotations

import pickle
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracegen
from pyflight.core.encoding import frame_generation, put_varint
from pyflight.core.events import ARGS, BlockReason, Kind, TaskOutcome
from pyflight.errors import TraceFormatError
from pyflight.format import reader
from pyflight.format.reader import (
    Event,
    Frame,
    TraceWarning,
    decode_events_py,
    describe,
    load,
    loads,
)
from tracegen import STACK_A, STACK_B, Gen, trace

HEADER = tracegen.header()
HEAD_LEN = len(HEADER)


def frames(stack: tuple[tuple[str, str, int], ...]) -> tuple[Frame, ...]:
    return tuple(Frame(*f) for f in stack)


def load_quiet(data: bytes, **kw: Any) -> reader.Trace:
    """loads() expecting damage warnings: returns the trace, checks the warnings match."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = loads(data, **kw)
    assert [str(w.message) for w in caught] == t.warnings
    assert all(issubclass(w.category, TraceWarning) for w in caught)
    return t


@pytest.fixture(params=["python", "c"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test with each available event decoder."""
    if request.param == "c":
        decode = _c_decode_events()
        if decode is None:
            pytest.skip("pyflight._core.decode_events not available")
        monkeypatch.setattr(reader, "_select_decoder", lambda: decode)
    else:
        monkeypatch.setattr(reader, "_select_decoder", lambda: decode_events_py)
    yield request.param


def _c_decode_events() -> Callable[..., list[Any]] | None:
    try:
        from pyflight import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(_core, "decode_events", None)


# ------------------------------------------------------------------ a complete read


def test_sample_trace_reads_completely(decoder: str) -> None:
    data = tracegen.sample_trace()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = loads(data)
    assert t.path is None
    assert t.warnings == [] and t.bytes_lost == 0 and t.bytes_read == len(data)
    assert t.meta == tracegen.DEFAULT_META
    assert t.kinds == tracegen.our_kinds()
    assert t.skipped_events == 0
    assert len(t.events) == 21
    assert [(g.seq, g.start_ns, g.end_ns, g.n_events) for g in t.generations] == [
        (3, 1_000_000_000, 1_000_500_000, 11),
        (4, 1_000_500_000, 1_002_000_000, 10),
    ]
    g1, g2 = tracegen.sample_gens()
    assert t.generations[0].offset == HEAD_LEN and t.generations[0].size == len(g1.encode())
    assert t.generations[1].offset == HEAD_LEN + len(g1.encode()) and t.generations[1].size == len(
        g2.encode()
    )
    assert (t.start_ns, t.end_ns, t.duration_ns) == (1_000_000_000, 1_002_000_000, 2_000_000)
    assert repr(t) == "<Trace (from bytes): 2 generations, 21 events, 3 threads, 0 warnings>"


def test_every_field_resolves(decoder: str) -> None:
    t = loads(tracegen.sample_trace())
    by_kind = {e.kind: e for e in t.events}
    wait = by_kind[Kind.TASK_WAIT]
    assert wait.time == 1_000_003_000 and wait.thread == 11
    assert wait.args == {"task": 1, "reason": BlockReason.AWAIT, "what": "Future", "stack": frames(STACK_A)}
    assert wait.stack[0] == Frame("inner", "/app/a.py", 10)  # innermost first
    assert wait.stack[-1] == Frame("outer", "/app/main.py", 3)
    assert wait.task == 1 and wait.arg("what") == "Future" and wait.arg("nope", 5) == 5
    block = by_kind[Kind.BLOCK_BEGIN]
    assert block.stack == frames(STACK_B) and block.task is None and block.arg("obj") == 140234523452
    log = by_kind[Kind.LOG]
    assert log.arg("category") == "" and log.arg("message") == "unlocked"  # string id 0 -> ""
    sample = by_kind[Kind.SAMPLE]
    assert sample.stack is wait.stack or sample.stack == wait.stack  # interned per generation
    assert sample.task == 2 and sample.arg("tid") == 11
    done = by_kind[Kind.TASK_DONE]
    assert done.arg("outcome") == TaskOutcome.FAILED and done.arg("error") == "KeyError('x')"
    gc_end = by_kind[Kind.GC_END]
    assert gc_end.stack == () and gc_end.args == {"generation": 2, "collected": 10, "uncollectable": 0}
    for e in t.events:
        assert isinstance(e, Event) and type(e.kind) is Kind
        assert len(e) == 3 + len(ARGS[e.kind])
        assert list(e.args) == [a.name for a in ARGS[e.kind]]


def test_empty_ids_and_tables(decoder: str) -> None:
    g = Gen(1, 100, 200)
    g.event(5, Kind.BLOCK_BEGIN, 110, reason=0, obj=0, stack=())  # stack id 0
    g.event(5, Kind.THREAD_EXCEPTION, 120, tid=5, type="", message="boom", stack=0)
    g.event(5, Kind.COUNTER, 130, name="", value=2**64 - 1)
    t = loads(trace([g]))
    a, b, c = t.events
    assert a.stack == () and a.args["stack"] == ()
    assert b.args == {"tid": 5, "type": "", "message": "boom", "stack": ()}
    assert c.arg("name") == "" and c.arg("value") == 2**64 - 1


def test_event_api() -> None:
    e = Event((Kind.TASK_WAIT, 10, 7, 3, BlockReason.AWAIT, "fut", (Frame("f", "x.py", 1),)))
    assert (e.kind, e.time, e.thread, e.task) == (Kind.TASK_WAIT, 10, 7, 3)
    assert e.stack == (Frame("f", "x.py", 1),)
    assert e.arg("reason") == BlockReason.AWAIT
    text = repr(e)
    assert text.startswith("Event(TASK_WAIT t=10 thread=7")
    assert "reason=AWAIT" in text and "what='fut'" in text and "<1 frames>" in text
    assert pickle.loads(pickle.dumps(e)) == e and type(pickle.loads(pickle.dumps(e))) is Event
    assert not hasattr(e, "__dict__")
    plain = Event((Kind.GC_BEGIN, 1, 2, 0))
    assert plain.task is None and plain.stack == () and plain.arg("task", "none") == "none"
    assert repr(Event((Kind.SAMPLE, 1, 2, 3, 4, (), 99))).endswith("state=99)")  # not a ThreadState


# ------------------------------------------------------------------ merging


def test_merge_order_across_batches_and_generations(decoder: str) -> None:
    g1 = Gen(1, 0, 100)
    a = g1.batch(1)
    b = g1.batch(2)
    c = g1.batch(1, base_ns=0)  # a second batch of thread 1 in the same generation
    for batch, times in ((a, (10, 20, 20, 50)), (b, (5, 20, 60)), (c, (20, 70))):
        for n, time in enumerate(times):
            batch.events.append((int(Kind.GC_BEGIN), time, [batch.tid * 100 + n + (50 if batch is c else 0)]))
    g2 = Gen(2, 100, 200)
    g2.event(2, Kind.GC_BEGIN, 100, generation=900)
    g2.event(1, Kind.GC_BEGIN, 100, generation=901)
    t = loads(trace([g1, g2]))
    got = [(e.time, e.arg("generation")) for e in t.events]
    # time order; equal times keep file order (batch a, then b, then c; events in batch order)
    assert got == [
        (5, 200),
        (10, 100),
        (20, 101),
        (20, 102),
        (20, 201),
        (20, 150),
        (50, 103),
        (60, 202),
        (70, 151),
        (100, 900),
        (100, 901),
    ]
    assert set(t.threads) == {1, 2}


def test_batch_times_are_deltas_from_base(decoder: str) -> None:
    g = Gen(1, 0, 10**12)
    b = g.batch(9, base_ns=5_000)
    b.events += [
        (int(Kind.GC_BEGIN), 5_000, [0]),
        (int(Kind.GC_BEGIN), 9_000_000, [1]),
        (int(Kind.GC_BEGIN), 9_000_000, [2]),
    ]
    t = loads(trace([g]))
    assert [e.time for e in t.events] == [5_000, 9_000_000, 9_000_000]


# ------------------------------------------------------------------ tables


def test_threads_tasks_and_user_tasks(decoder: str) -> None:
    t = loads(tracegen.sample_trace())
    assert {tid: (i.name, i.ident) for tid, i in t.threads.items()} == {
        11: ("MainThread", 140001),
        12: ("worker", 140002),
        13: ("late", 140003),
    }
    assert {k: (v.name, v.coro, v.parent) for k, v in t.tasks.items()} == {
        1: ("main", "main()", 0),
        2: ("fetch", "fetch(url)", 1),
    }
    assert {k: (v.name, v.parent) for k, v in t.user_tasks.items()} == {5: ("GET /users", 0), 6: ("query", 5)}
    assert [e.kind for e in t.data_loss] == [Kind.DATA_LOSS]


def test_thread_names_follow_renames_and_unknown_threads_appear(decoder: str) -> None:
    g = Gen(1, 0, 100)
    g.event(1, Kind.THREAD_INFO, 1, tid=1, name="main", ident=7)
    g.event(1, Kind.THREAD_NAME, 2, tid=1, name="renamed")
    g.event(1, Kind.THREAD_INFO, 3, tid=3, name="", ident=0)  # nameless info: keeps what is known
    g.event(2, Kind.GC_BEGIN, 4, generation=0)  # thread 2: a batch, no info
    g.event(1, Kind.USER_TASK_BEGIN, 5, id=1, parent=0, name="job")
    g.event(1, Kind.USER_TASK_INFO, 6, id=1, parent=0, name="job")
    g.event(1, Kind.SOURCE_DISABLED, 7, source="sampler", reason="crashed")
    t = loads(trace([g]))
    assert t.threads[1].name == "renamed" and t.threads[1].ident == 7
    assert t.threads[2].name == "" and t.threads[3].name == ""
    assert list(t.threads) == [1, 2, 3]
    assert list(t.user_tasks) == [1]
    assert [e.kind for e in t.data_loss] == [Kind.SOURCE_DISABLED]


def test_counts_and_wall_time() -> None:
    t = loads(tracegen.sample_trace())
    counts = t.count_by_kind()
    assert counts[Kind.THREAD_INFO] == 4 and counts[Kind.LOG] == 1 and sum(counts.values()) == len(t.events)
    # meta: monotonic 1e9 <-> wall 1.7e18
    assert t.wall_time_ns(1_000_000_000) == 1_700_000_000_000_000_000
    assert t.wall_time_ns(1_000_000_500) == 1_700_000_000_000_000_500
    meta = dict(tracegen.DEFAULT_META)
    del meta["clock.wall_ns"]
    assert loads(trace(tracegen.sample_gens(), meta=meta)).wall_time_ns(5) is None


def test_header_only_file() -> None:
    t = loads(HEADER)
    assert t.generations == [] and t.events == [] and t.threads == {}
    assert (t.start_ns, t.end_ns, t.duration_ns) == (0, 0, 0)
    assert t.bytes_read == HEAD_LEN and t.bytes_lost == 0
    assert "generations  none" in describe(t)


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "a.pyfl"
    path.write_bytes(tracegen.sample_trace())
    t = load(path)
    assert t.path == str(path) and len(t.events) == 21
    assert load(str(path)).path == str(path)
    with pytest.raises(OSError):
        load(tmp_path / "missing.pyfl")


# ------------------------------------------------------------------ header damage


def _header_error(data: bytes) -> TraceFormatError:
    with pytest.raises(TraceFormatError) as info:
        loads(data)
    return info.value


def test_wrong_magic() -> None:
    err = _header_error(b"\x89PNG\r\n\x1a\n" + tracegen.sample_trace()[8:])
    assert err.offset == 0 and "magic" in str(err)
    assert _header_error(b"GIF89a").offset == 0


@pytest.mark.parametrize("size", [0, 1, 8, 19])
def test_truncated_fixed_header(size: int) -> None:
    err = _header_error(tracegen.sample_trace()[:size])
    assert "truncated header" in str(err) and err.offset == size


def test_truncated_header_body() -> None:
    err = _header_error(HEADER[:-1])
    assert "truncated header" in str(err) and err.offset == HEAD_LEN - 1


def test_unknown_version() -> None:
    data = bytearray(tracegen.sample_trace())
    struct.pack_into("<H", data, 8, 2)
    err = _header_error(bytes(data))
    assert "version 2" in str(err) and err.offset == 8


def test_unknown_flags_are_ignored() -> None:
    data = bytearray(tracegen.sample_trace())
    struct.pack_into("<H", data, 10, 0xBEEF)
    assert len(loads(bytes(data)).events) == 21


def test_header_crc_mismatch() -> None:
    data = bytearray(tracegen.sample_trace())
    data[25] ^= 0x01
    err = _header_error(bytes(data))
    assert "CRC" in str(err) and err.offset == 16


def _kinds(**changes: Any) -> dict[int, tuple[str, list[tuple[str, str]]]]:
    table = {n: (name, list(args)) for n, (name, args) in tracegen.our_kinds().items()}
    for key, value in changes.items():
        number = int(key[1:])
        if value is None:
            del table[number]
        else:
            table[number] = value
    return table


def test_kind_table_types_must_agree_with_ours() -> None:
    head = tracegen.header(kinds=_kinds(k65=("LOG", [("u", "task"), ("u", "category"), ("s", "message")])))
    err = _header_error(head)
    assert "kind table" in str(err) and "LOG" in str(err) and "'category'" in str(err)
    assert err.offset is not None and 20 < err.offset < len(head)


def test_other_versions_argument_lists_map_by_name() -> None:
    """A file from a pyflight whose LOG had no `message` but an extra `level` still reads."""
    from pyflight.core.encoding import put_varint

    kinds = _kinds(k65=("LOG", [("u", "level"), ("s", "category"), ("u", "task")]))
    head = tracegen.header(kinds=kinds)
    body = bytearray()
    for value in (1, 0, 10):  # seq, start, end
        put_varint(body, value)
    body += b"\x01\x02db"  # one string: id 1 = "db"
    body += b"\x00\x00"  # no frames, no stacks
    events = bytes([65, 5, 3, 1, 7])  # LOG dt=5 level=3 category=1 task=7
    body += b"\x01"  # one batch
    for value in (42, 0, 1, len(events)):
        put_varint(body, value)
    body += events
    trace = loads(head + frame_generation(bytes(body)))
    (event,) = trace.events
    assert event.kind == Kind.LOG and event.time == 5 and event.thread == 42
    assert event.args == {"task": 7, "category": "db", "message": ""}
    assert trace.warnings == [] and trace.skipped_events == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x00\x01\x80\x01\x01A\x00", "kind number 128 out of range"),
        (b"\x00\x02\x7f\x01A\x00\x7f\x01B\x00", "declared twice"),
        (b"\x00\x01\x7f\x01A\x01x\x01a", "unknown argument type"),
        (b"\x00\x01\x7f\x01A\x01", "argument count 1 does not fit"),
        (b"\x00\x01\x7f\x01A\x02u\x02ab", "truncated kind table"),
        (b"\xff\xff\xff\x0f", "does not fit"),
        (b"\x00\x00\x00", "left over"),
        (b"\x01\x05ab", "runs past"),
    ],
)
def test_bad_header_bodies(body: bytes, problem: str) -> None:
    err = _header_error(tracegen.raw_header(body))
    assert problem in str(err)
    assert err.offset is not None and 20 <= err.offset <= 20 + len(body)


def test_header_may_omit_known_kinds_and_meta() -> None:
    head = tracegen.header(meta={}, kinds=_kinds(k65=None))
    g = Gen(1, 0, 10)
    g.event(1, Kind.GC_BEGIN, 1, generation=0)
    t = loads(trace([g], head=head))
    assert t.meta == {} and 65 not in t.kinds and len(t.events) == 1
    assert t.wall_time_ns(5) is None
    describe(t)


# ------------------------------------------------------------------ generation damage


def _two_gens() -> tuple[bytes, bytes, bytes]:
    g1, g2 = tracegen.sample_gens()
    return HEADER, g1.encode(), g2.encode()


def _expect_partial(
    data: bytes, keep: int, offset: int, pattern: str, strict_offset: int | None = None
) -> None:
    """``keep`` generations read, a warning naming ``offset`` and the problem; strict raises."""
    with pytest.warns(TraceWarning, match=pattern):
        t = loads(data)
    assert len(t.generations) == keep
    assert len(t.warnings) == 1 and f"at byte {offset}" in t.warnings[0]
    assert t.bytes_read == offset and t.bytes_lost == len(data) - offset
    assert f"{t.bytes_lost} bytes" in t.warnings[0]
    assert all(e.time <= t.end_ns + 1 for e in t.events)
    assert "warnings     1" in describe(t)
    with pytest.raises(TraceFormatError) as info:
        loads(data, strict=True)
    assert info.value.offset == (offset if strict_offset is None else strict_offset)


@pytest.mark.parametrize("cut", [1, 5, 9, 10, 50, -1])
def test_truncated_generation(cut: int) -> None:
    head, g1, g2 = _two_gens()
    whole = head + g1 + g2
    start2 = len(head) + len(g1)
    data = whole[: start2 + cut] if cut > 0 else whole[:cut]
    _expect_partial(data, 1, start2, "cut short")
    t = load_quiet(data)
    assert len(t.events) == 11 and "truncated" in t.warnings[0]


def test_crc_mismatch() -> None:
    head, g1, g2 = _two_gens()
    bad = bytearray(g2)
    bad[20] ^= 0x40
    _expect_partial(head + g1 + bytes(bad), 1, len(head) + len(g1), "CRC mismatch")


def test_crc_mismatch_in_first_generation_keeps_nothing() -> None:
    head, g1, g2 = _two_gens()
    bad = bytearray(g1)
    bad[5] ^= 0x40  # the CRC field itself
    _expect_partial(head + bytes(bad) + g2, 0, len(head), "CRC mismatch")


def _gen_with(mutate: Callable[[Gen], None]) -> Gen:
    g = Gen(2, 100, 200)
    g.event(1, Kind.BLOCK_BEGIN, 110, reason=1, obj=2, stack=STACK_A)
    g.event(1, Kind.LOG, 120, task=0, category="c", message="m")
    mutate(g)
    return g


def _first_gen() -> bytes:
    g = Gen(1, 0, 100)
    g.event(1, Kind.GC_BEGIN, 10, generation=0)
    return g.encode()


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda g: g.event(1, Kind.LOG, 130, task=0, category=99, message="m"), "string id 99 out of range"),
        (lambda g: g.event(1, Kind.LOG, 130, task=0, category=8, message="m"), "string id 8 out of range"),
        (lambda g: g.event(1, Kind.SAMPLE, 130, tid=1, task=0, stack=2, state=0), "stack id 2 out of range"),
        (lambda g: g.stacks.append((4,)), "frame id 4 out of range"),
        (lambda g: g.stacks.append((0,)), "frame id 0 out of range"),
        (lambda g: g.frames.append((1, 77, 3)), "string id 77 out of range"),
    ],
)
def test_ids_out_of_range(mutate: Callable[[Gen], None], problem: str, decoder: str) -> None:
    head, first = HEADER, _first_gen()
    data = head + first + _gen_with(mutate).encode()  # tracegen computes a valid CRC
    with pytest.warns(TraceWarning, match="does not decode"):
        t = loads(data)
    what, number = problem.split(" out of range")[0].rsplit(" ", 1)  # e.g. "string id", "99"
    assert re.search(f"{what} ({number} )?out of range", t.warnings[0]), t.warnings[0]
    assert len(t.generations) == 1 and len(t.events) == 1
    start2 = len(head) + len(first)
    assert f"generation at byte {start2}" in t.warnings[0]
    with pytest.raises(TraceFormatError) as info:
        loads(data, strict=True)
    assert info.value.offset is not None and start2 < info.value.offset < len(data)


def test_kind_not_in_kind_table(decoder: str) -> None:
    head = tracegen.header(kinds=_kinds(k65=None))
    g = _gen_with(lambda g: None)  # holds a LOG event, which this file's table lacks
    data = head + _first_gen() + g.encode()
    t = load_quiet(data)
    assert len(t.generations) == 1 and "does not decode" in t.warnings[0]
    assert decoder == "c" or "kind 65" in t.warnings[0]


def test_sequence_must_increase() -> None:
    a = Gen(5, 0, 10)
    a.event(1, Kind.GC_BEGIN, 1, generation=0)
    b = Gen(5, 10, 20)
    b.event(1, Kind.GC_BEGIN, 11, generation=0)
    data = trace([a, b])
    _expect_partial(
        data,
        1,
        HEAD_LEN + len(a.encode()),
        "sequence number 5 does not increase",
        strict_offset=HEAD_LEN + len(a.encode()) + 9,
    )
    c = Gen(4, 10, 20)
    t = load_quiet(trace([a, c]))
    assert "does not increase" in t.warnings[0]


def _raw_gen_body(seq: int, tail: bytes) -> bytes:
    body = bytearray()
    for v in (seq, 0, 10):
        put_varint(body, v)
    return tracegen.reframe(b"\x00" * 9 + bytes(body) + tail)


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        (b"\x00\x00\x00\x00\x00", "left over"),  # empty tables, no batches, one extra byte
        (b"\x05", "string count 5 does not fit"),
        (b"\x01\x7f", "runs past"),
        (b"\x00\x01\x01\x01", "frame count"),
        (b"\x00\x00\x01\x05\x01", "stack depth"),
        (b"\x00\x00\x00\x01\x01\x00\x00\x05", "runs past the generation"),
        (b"\x00\x00\x00\x01\x01\x00\x05\x04\x02\x00\x00\x00", "does not fit in its 4 bytes"),
        (b"\x00\x00\x00\x01\x01\x00\x01\x02\x28\x00", "truncated varint"),  # GC_BEGIN lacks its arg
        (b"\x00\x00\x00\x01\x01\x00\x01\x03\x28\x00\x80", "truncated varint"),
        (b"\x00\x00\x00\x01\x01\x00\x01\x03\x28\x00\x00", ""),  # valid (a control)
        (b"\x00\x00\x00\x01\x01\x00\x01\x0c\x28\x00" + b"\xff" * 9 + b"\x7f", "64 bits"),
        (b"\x00\x00\x00\x01\x01\x00\x01\x0d\x28\x00" + b"\x80" * 10 + b"\x00", "64 bits|10 bytes"),
        (b"\x00\x00\x00\x01\x01\x00\x01\x05\x28\x00\x00\x28\x00", "left over"),
        (b"\x00\x00\x00\x01\x01\x00\x02\x04\x28\x00\x00\x7e", "kind 126"),
        (b"\x00\x00\x00\x01\x01\x00\x01\x03\xa8\x00\x00", "kind 168"),
        (b"\x00\x00\x00\x01\x01" + b"\xff" * 9 + b"\x01\x01\x03\x28\x01\x00", "time over 64 bits"),
    ],
)
def test_undecodable_bodies(tail: bytes, problem: str, decoder: str) -> None:
    data = HEADER + _first_gen() + _raw_gen_body(2, tail)
    t = load_quiet(data)
    if not problem:
        assert t.warnings == [] and len(t.generations) == 2
        return
    assert len(t.generations) == 1, t.warnings
    assert len(t.warnings) == 1 and "does not decode" in t.warnings[0]
    if decoder == "python" or "bits" in problem or "truncated" in problem:  # C words others its own way
        assert re.search(problem, t.warnings[0]), t.warnings[0]
    with pytest.raises(TraceFormatError):
        loads(data, strict=True)


def test_appended_junk() -> None:
    whole = tracegen.sample_trace()
    data = whole + b"hello, this is not a generation"
    _expect_partial(data, 2, len(whole), "not a generation")
    t = load_quiet(data)
    assert len(t.events) == 21 and t.bytes_lost == 31


def test_junk_starting_like_a_generation() -> None:
    whole = tracegen.sample_trace()
    _expect_partial(whole + b"G\x01", 2, len(whole), "cut short")
    _expect_partial(whole + b"G\xff\xff\xff\xff\x00\x00\x00\x00", 2, len(whole), "cut short")


def test_two_snapshots_concatenated() -> None:
    first = tracegen.sample_trace()
    g = Gen(9, 5_000_000_000, 5_000_000_100)
    g.event(77, Kind.GC_BEGIN, 5_000_000_001, generation=1)
    second = trace([g])
    data = first + second
    _expect_partial(data, 2, len(first), "more than one snapshot")
    t = load_quiet(data)
    assert 77 not in t.threads and len(t.events) == 21


def test_strict_mode_on_a_clean_file() -> None:
    t = loads(tracegen.sample_trace(), strict=True)
    assert t.warnings == [] and len(t.events) == 21


# ------------------------------------------------------------------ kinds unknown to this pyflight


def test_declared_unknown_kinds_are_skipped(decoder: str) -> None:
    wide = [("usk"[i % 3], f"a{i}") for i in range(40)]
    table = _kinds(
        k100=("FUTURE", [("u", "x"), ("s", "label"), ("k", "where")]), k127=("BARE", []), k99=("W", wide)
    )
    head = tracegen.header(kinds=table)
    g = Gen(1, 0, 100, kinds=table)
    g.event(1, Kind.GC_BEGIN, 10, generation=0)
    g.event(1, 100, 20, x=5, label="hi", where=STACK_A)
    g.event(2, 127, 25)
    g.event(2, 99, 26, *[(i, "s", STACK_B)[i % 3] for i in range(40)])
    g.event(1, Kind.GC_END, 30, generation=0, collected=1, uncollectable=0)
    t = loads(trace([g], head=head))
    assert t.warnings == [] and t.skipped_events == 3
    assert [e.kind for e in t.events] == [Kind.GC_BEGIN, Kind.GC_END]
    assert t.kinds[100] == ("FUTURE", (("u", "x"), ("s", "label"), ("k", "where")))
    assert t.generations[0].n_events == 5
    assert "3 events of kinds unknown" in describe(t)
    # what was skipped was decoded all the same (here with the non-generated builder)
    _bare, wide_event = decode_events_py(*_batches(trace([g], head=head))[1])  # thread 2's batch
    assert wide_event[0] == 99 and wide_event[3:6] == (0, "s", frames(STACK_B))
    # their ids are still checked
    bad = Gen(2, 100, 200, kinds=table)
    bad.event(1, 100, 120, x=5, label=42, where=0)
    t = load_quiet(trace([g, bad], head=head))
    assert len(t.generations) == 1 and "string id" in t.warnings[0]
    assert decoder == "c" or "string id 42" in t.warnings[0]


# ------------------------------------------------------------------ one event per short step


def _steps_gen(kinds: Any = None, one_event: bool = True) -> Gen:
    """Thread 1: a task step (5 at 100..130), a callback, then a step with a TASK_CREATE
    inside it, then the pair of a step that spanned a seal; thread 2: a GC during the
    first step."""
    g = Gen(1, 0, 1000, kinds=kinds)
    g.event(1, Kind.TASK_READY, 90, task=5)
    if one_event:
        g.event(1, Kind.TASK_STEP, 130, task=5, duration=30)
        g.event(1, Kind.CALLBACK, 200, loop=9, name="on_ready", duration=50)
    else:
        g.event(1, Kind.TASK_STEP_BEGIN, 100, task=5)
        g.event(1, Kind.TASK_STEP_END, 130, task=5)
        g.event(1, Kind.CALLBACK_BEGIN, 150, loop=9, name="on_ready")
        g.event(1, Kind.CALLBACK_END, 200, loop=9)
    if one_event:  # what the step recorded is written before it
        g.event(1, Kind.TASK_CREATE, 310, task=6, name="t", coro="c", parent=5)
        g.event(1, Kind.TASK_STEP, 320, task=5, duration=20)
    else:
        g.event(1, Kind.TASK_STEP_BEGIN, 300, task=5)
        g.event(1, Kind.TASK_CREATE, 310, task=6, name="t", coro="c", parent=5)
        g.event(1, Kind.TASK_STEP_END, 320, task=5)
    g.event(1, Kind.TASK_STEP_BEGIN, 400, task=6)
    g.event(1, Kind.TASK_STEP_END, 420, task=6)
    g.event(2, Kind.GC_BEGIN, 110, generation=0)
    return g


def test_one_event_steps_read_as_begin_end_pairs(decoder: str) -> None:
    """TASK_STEP / CALLBACK (a whole step, dated at its end) read as the pair they stand for,
    in order with the other events, exactly as a file with the pairs written out."""
    t = loads(trace([_steps_gen()]))
    pairs = loads(trace([_steps_gen(one_event=False)]))
    assert t.events == pairs.events
    assert [(e.kind, e.time, e.thread, e.args) for e in t.events] == [
        (Kind.TASK_READY, 90, 1, {"task": 5}),
        (Kind.TASK_STEP_BEGIN, 100, 1, {"task": 5}),
        (Kind.GC_BEGIN, 110, 2, {"generation": 0}),
        (Kind.TASK_STEP_END, 130, 1, {"task": 5}),
        (Kind.CALLBACK_BEGIN, 150, 1, {"loop": 9, "name": "on_ready"}),
        (Kind.CALLBACK_END, 200, 1, {"loop": 9}),
        (Kind.TASK_STEP_BEGIN, 300, 1, {"task": 5}),
        (Kind.TASK_CREATE, 310, 1, {"task": 6, "name": "t", "coro": "c", "parent": 5}),
        (Kind.TASK_STEP_END, 320, 1, {"task": 5}),
        (Kind.TASK_STEP_BEGIN, 400, 1, {"task": 6}),
        (Kind.TASK_STEP_END, 420, 1, {"task": 6}),
    ]
    assert t.generations[0].n_events == 8  # as written: three of them stand for two each
    assert Kind.TASK_STEP not in t.count_by_kind() and Kind.CALLBACK not in t.count_by_kind()


def test_expansion_keeps_each_thread_in_time_order(decoder: str) -> None:
    """The BEGIN a TASK_STEP / CALLBACK stands for goes before the events its thread
    recorded during the step (they precede the one event in the batch), not before
    another thread's; the C expansion and the pure-Python one agree."""
    events = [
        Event((Kind.TASK_READY, 90, 1, 5)),
        Event((Kind.TASK_CREATE, 310, 1, 6, "t", "c", 5)),
        Event((Kind.TASK_BLOCK, 315, 1, 5, 1, 7, "asyncio.Lock.acquire", 3, ())),
        Event((Kind.TASK_STEP, 320, 1, 5, 20)),
        Event((Kind.GC_BEGIN, 305, 2, 0)),
        Event((Kind.CALLBACK, 330, 2, 9, "cb", 30)),
        Event((Kind.TASK_STEP, 400, 2, 8, 0)),
    ]
    expand = reader._expander(reader._select_decoder())
    out = expand(list(events))
    assert [(e.kind, e.time, e.thread) for e in out] == [
        (Kind.TASK_READY, 90, 1),
        (Kind.TASK_STEP_BEGIN, 300, 1),
        (Kind.TASK_CREATE, 310, 1),
        (Kind.TASK_BLOCK, 315, 1),
        (Kind.TASK_STEP_END, 320, 1),
        (Kind.CALLBACK_BEGIN, 300, 2),
        (Kind.GC_BEGIN, 305, 2),
        (Kind.CALLBACK_END, 330, 2),
        (Kind.TASK_STEP_BEGIN, 400, 2),
        (Kind.TASK_STEP_END, 400, 2),
    ]
    assert out[5].args == {"loop": 9, "name": "cb"} and out[7].args == {"loop": 9}
    assert all(type(e) is Event for e in out)
    assert out == reader._expand_steps(list(events))
    assert expand(events[:1]) == events[:1]


def test_a_step_that_sent_reads_as_its_pair_and_a_task_sent(decoder: str) -> None:
    """TASK_STEP_SENT (a step that sent on a socket) reads as the step's BEGIN/END pair,
    then TASK_SENT(task) at the END's time; the C expansion and the pure-Python one agree."""
    events = [
        Event((Kind.TASK_BLOCK, 315, 1, 5, 1, 7, "asyncio.Lock.acquire", 3, ())),
        Event((Kind.TASK_STEP_SENT, 320, 1, 5, 20)),
        Event((Kind.TASK_STEP, 400, 1, 5, 10)),
    ]
    expand = reader._expander(reader._select_decoder())
    out = expand(list(events))
    assert [(e.kind, e.time, e.thread, e.args) for e in out] == [
        (Kind.TASK_STEP_BEGIN, 300, 1, {"task": 5}),
        (Kind.TASK_BLOCK, 315, 1, out[1].args),
        (Kind.TASK_STEP_END, 320, 1, {"task": 5}),
        (Kind.TASK_SENT, 320, 1, {"task": 5}),
        (Kind.TASK_STEP_BEGIN, 390, 1, {"task": 5}),
        (Kind.TASK_STEP_END, 400, 1, {"task": 5}),
    ]
    assert all(type(e) is Event for e in out)
    assert out == reader._expand_steps(list(events))
    # in a file, as written by a recorder
    g = Gen(1, 0, 1000)
    g.event(1, Kind.TASK_STEP_SENT, 130, task=5, duration=30)
    t = loads(trace([g]))
    assert [(e.kind, e.time) for e in t.events] == [
        (Kind.TASK_STEP_BEGIN, 100),
        (Kind.TASK_STEP_END, 130),
        (Kind.TASK_SENT, 130),
    ]


def test_traces_without_one_event_steps_still_read(decoder: str) -> None:
    """A file from a writer that predates TASK_STEP / CALLBACK (not in its kind table)."""
    old = _kinds(k18=None, k25=None)
    t = loads(trace([_steps_gen(old, one_event=False)], head=tracegen.header(kinds=old)))
    assert 18 not in t.kinds and 25 not in t.kinds
    assert t.events == loads(trace([_steps_gen()])).events
    assert t.warnings == [] and t.skipped_events == 0


# ------------------------------------------------------------------ describe


def test_describe() -> None:
    t = loads(tracegen.sample_trace())
    text = describe(t)
    for needle in (
        "written by   pyflight 0.1.0, python core",
        "process      pid 4242, linux",
        "reason       api",
        "python       3.11.7",
        "window       min_age 10.000 s, max_bytes 10.0 MiB",
        "time span    2.000 ms",
        "2023-11-14T22:13:20.000Z",  # wall clock of start_ns
        "generations  2 (seq 3..4)",
        "events       21",
        "THREAD_INFO",
        "MainThread",
        "worker",
        "tasks        2: main, fetch",
        "user tasks   2: GET /users, query",
        "sampler: 3 events lost (queue full)",
        "warnings     none",
    ):
        assert needle in text, needle
    lines = text.splitlines()
    # event counts sorted by count, then aligned in columns
    kind_lines = [ln for ln in lines if re.match(r"^  [A-Z_]+ +\d", ln)]
    assert kind_lines[0].split()[0] == "THREAD_INFO"
    assert len({len(ln) for ln in kind_lines}) == 1
    thread_lines = [ln for ln in lines if re.match(r"^ +\d+  \w", ln)]
    assert [ln.split()[1] for ln in thread_lines] == ["MainThread", "worker", "late"]
    assert thread_lines[0].split()[-1] == "11"


def test_describe_damaged_and_odd_meta() -> None:
    meta = dict(tracegen.DEFAULT_META, min_age_ns="x", **{"clock.wall_ns": "9" * 40})
    data = trace(tracegen.sample_gens(), meta=meta)[:-3]
    text = describe(load_quiet(data))
    assert "warnings     1" in text and "cut short" in text and "bytes not read" in text


# ------------------------------------------------------------------ the two decoders


def _batches(data: bytes) -> list[tuple[Any, ...]]:
    """The decode_events calls a load of ``data`` makes."""
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any) -> list[Any]:
        calls.append(args)
        return decode_events_py(*args)

    original = reader._select_decoder
    reader._select_decoder = lambda: spy
    try:
        load_quiet(data)
    finally:
        reader._select_decoder = original
    return calls


def _outcome(decode: Callable[..., list[Any]], args: tuple[Any, ...]) -> Any:
    try:
        result = decode(*args)
    except ValueError as exc:
        assert re.search(r"at byte \d+$", str(exc)), str(exc)
        return "error"
    assert all(type(e) is Event for e in result)
    return [tuple(e) for e in result]


def test_python_decoder_edge_cases() -> None:
    (args,) = _batches(trace([_gen_with(lambda g: None)]))
    args = list(args)
    data, offset, end = args[0], args[1], args[2]
    assert len(decode_events_py(*args)) == 2
    for change, pattern in (
        ({5: 3}, "declares 3 events but holds 2"),
        ({5: 1}, "left over after the batch's 1 events"),
        ({2: end - 1}, "holds 1|truncated varint"),
        ({1: offset + 1}, "kind"),
        ({2: len(data) + 1}, "bad batch bounds"),
        ({3: 2**64 - 5}, "over 64 bits"),
    ):
        bad = list(args)
        for index, value in change.items():
            bad[index] = value
        with pytest.raises(ValueError, match=pattern):
            decode_events_py(*bad)
    empty = list(args)
    empty[1] = empty[2] = offset
    empty[5] = 0
    assert decode_events_py(*empty) == []


def test_valid_batches_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def exact(*args: Any) -> list[Any]:
        raise AssertionError("the byte-by-byte decoder is only for damaged batches")

    monkeypatch.setattr(reader, "_select_decoder", lambda: decode_events_py)
    monkeypatch.setattr(reader, "_decode_events_exact", exact)
    assert len(loads(tracegen.sample_trace()).events) == 21


def test_python_fast_and_exact_paths_agree() -> None:
    for args in _batches(tracegen.sample_trace()):
        assert decode_events_py(*args) == reader._decode_events_exact(*args)


@pytest.mark.skipif(_c_decode_events() is None, reason="pyflight._core.decode_events not available")
def test_c_and_python_decoders_agree() -> None:
    c_decode = _c_decode_events()
    assert c_decode is not None
    calls = _batches(tracegen.sample_trace())
    calls += _batches(trace([_gen_with(lambda g: None)]))
    assert calls
    for args in calls:
        assert _outcome(c_decode, args) == _outcome(decode_events_py, args)
        data, offset, end = args[0], args[1], args[2]
        for cut in range(offset, end):  # every truncation and count of each batch
            shorter = (data, offset, cut, *args[3:])
            assert _outcome(c_decode, shorter) == _outcome(decode_events_py, shorter)
        for n in range(0, args[5] + 2):
            other = (*args[:5], n, *args[6:])
            assert _outcome(c_decode, other) == _outcome(decode_events_py, other)
        for pos in range(offset, end):  # every single-byte change
            for value in (0x00, 0x28, 0x7F, 0x80, 0xFF):
                mutated = bytearray(data)
                mutated[pos] = value
                changed = (bytes(mutated), *args[1:])
                assert _outcome(c_decode, changed) == _outcome(decode_events_py, changed)


@pytest.mark.skipif(_c_decode_events() is None, reason="pyflight._core.decode_events not available")
def test_c_and_python_loads_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tracegen.sample_trace()
    c_decode = _c_decode_events()
    monkeypatch.setattr(reader, "_select_decoder", lambda: c_decode)
    from_c = loads(data)
    monkeypatch.setattr(reader, "_select_decoder", lambda: decode_events_py)
    from_py = loads(data)
    assert from_c == from_py


def test_select_decoder_follows_backend() -> None:
    from pyflight import core

    chosen = reader._select_decoder()
    if core.BACKEND_NAME == "c" and hasattr(core.backend, "decode_events"):
        assert chosen is core.backend.decode_events
    else:
        assert chosen is decode_events_py


# ------------------------------------------------------------------ size limits


def test_huge_counts_do_not_allocate() -> None:
    """Counts that cannot fit in the bytes left are errors, found without allocating."""
    for tail in (
        b"\xff\xff\xff\xff\x0f",  # 4 billion strings
        b"\x00\xff\xff\xff\xff\x0f",  # frames
        b"\x00\x00\xff\xff\xff\xff\x0f",  # stacks
        b"\x00\x00\x01\xff\xff\xff\xff\x0f",  # stack depth
        b"\x00\x00\x00\xff\xff\xff\xff\x0f",  # batches
        b"\x00\x00\x00\x01\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00",  # events
    ):
        t = load_quiet(HEADER + _raw_gen_body(1, tail))
        assert t.generations == [] and len(t.warnings) == 1
    body = bytearray()
    put_varint(body, 2**62)  # metadata entries
    assert "metadata count" in str(_header_error(tracegen.raw_header(bytes(body))))
