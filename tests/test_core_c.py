"""Tests specific to the C recording core ``pyflight._core`` (skipped when it is not built)."""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import Any, NamedTuple

import pytest

_core = pytest.importorskip("pyflight._core")

from pyflight.core.events import ARGS, Kind, arg_counts  # noqa: E402

BIG = 1 << 40
HERE = _core.HERE


class Frame(NamedTuple):
    function: str
    file: str
    line: int


class Ev(tuple[Any, ...]):
    """Stand-in for the reader's event type: a plain tuple subclass."""


# ------------------------------------------------------------------ a tiny local parser


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def parse_generation(frame: bytes) -> dict[str, Any]:
    """Check the framing and CRC of one generation and decode its body completely."""
    tag, length, crc = struct.unpack_from("<BII", frame)
    assert tag == 0x47
    body = frame[9:]
    assert len(body) == length
    assert zlib.crc32(body) == crc
    seq, pos = _varint(body, 0)
    start_ns, pos = _varint(body, pos)
    end_ns, pos = _varint(body, pos)
    assert end_ns >= start_ns
    n, pos = _varint(body, pos)
    strings = [""]
    for _ in range(n):
        size, pos = _varint(body, pos)
        strings.append(body[pos : pos + size].decode("utf-8", "surrogatepass"))
        pos += size
    assert len(set(strings)) == len(strings), "strings interned twice"
    n, pos = _varint(body, pos)
    frames = []
    for _ in range(n):
        fn, pos = _varint(body, pos)
        fl, pos = _varint(body, pos)
        line, pos = _varint(body, pos)
        frames.append(Frame(strings[fn], strings[fl], line))
    assert len(set(frames)) == len(frames), "frames interned twice"
    n, pos = _varint(body, pos)
    stacks: list[tuple[Frame, ...]] = [()]
    for _ in range(n):
        depth, pos = _varint(body, pos)
        ids = []
        for _ in range(depth):
            fid, pos = _varint(body, pos)
            ids.append(fid)
        stacks.append(tuple(frames[i - 1] for i in ids))
    assert len(set(stacks)) == len(stacks), "stacks interned twice"
    n, pos = _varint(body, pos)
    batches = []
    for _ in range(n):
        tid, pos = _varint(body, pos)
        base_ns, pos = _varint(body, pos)
        n_events, pos = _varint(body, pos)
        n_bytes, pos = _varint(body, pos)
        events = []
        epos, t = pos, base_ns
        while epos < pos + n_bytes:
            kind = Kind(body[epos])
            dt, epos = _varint(body, epos + 1)
            t += dt
            args: list[Any] = []
            for arg in ARGS[kind]:
                value, epos = _varint(body, epos)
                table = {"s": strings, "k": stacks}.get(arg.type)
                args.append(value if table is None else table[value])
            events.append((kind, t, tid, *args))
        assert epos == pos + n_bytes and len(events) == n_events
        batch = {"tid": tid, "base_ns": base_ns, "events": events, "offset": pos + 9, "n_bytes": n_bytes}
        batches.append(batch)
        pos += n_bytes
    assert pos == len(body)
    return {
        "seq": seq,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "strings": strings,
        "stacks": stacks,
        "batches": batches,
        "size": len(frame),
    }


def events_of(gen: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((e for b in gen["batches"] for e in b["events"]), key=lambda e: e[1])


def snapshot() -> list[dict[str, Any]]:
    return [parse_generation(g) for g in _core.snapshot()]


# ------------------------------------------------------------------ fixtures


def configure(**kw: int) -> None:
    settings = {"max_bytes": BIG, "min_age_ns": BIG, "gen_max_bytes": BIG, "gen_interval_ns": BIG}
    settings.update(kw)
    _core.configure(arg_counts(), **settings)


@pytest.fixture
def core():
    configure()
    _core.start()
    yield _core
    _core.stop()


@pytest.fixture
def restart():
    """Call restart(**settings) to (re)start the core with other settings."""

    def go(**kw: int) -> Any:
        _core.stop()
        configure(**kw)
        _core.start()
        return _core

    yield go
    _core.stop()


# ------------------------------------------------------------------ recording


def test_record_seal_snapshot_roundtrip(core):
    tid = threading.get_native_id()
    core.record(Kind.THREAD_NAME, 5, "main")
    core.record(Kind.COUNTER, "x", 2**64 - 1)
    core.record(Kind.COUNTER, "x", True)
    core.record(Kind.LOG, None, "", "h\u00e9llo \ud800")  # None and "" are id/value 0; surrogatepass
    gens = snapshot()
    assert len(gens) == 1
    g = gens[0]
    assert g["seq"] == 1 and g["strings"] == ["", "main", "x", "h\u00e9llo \ud800"]
    evs = events_of(g)
    assert [e[0] for e in evs] == [Kind.THREAD_NAME, Kind.COUNTER, Kind.COUNTER, Kind.LOG]
    assert [e[3:] for e in evs] == [(5, "main"), ("x", 2**64 - 1), ("x", 1), (0, "", "h\u00e9llo \ud800")]
    assert all(e[2] == tid for e in evs)
    times = [e[1] for e in evs]
    assert times == sorted(times) and g["start_ns"] <= times[0] and times[-1] <= g["end_ns"] <= core.now()
    core.record(Kind.GC_BEGIN, 0)
    gens2 = snapshot()
    assert [x["seq"] for x in gens2] == [1, 2]
    assert gens2[1]["start_ns"] == gens2[0]["end_ns"]
    st = core.stats()
    assert st == {
        "enabled": True,
        "generations": 2,
        "ring_bytes": sum(x["size"] for x in gens2),
        "open_bytes": 0,
        "events": 5,
        "sealed": 2,
        "evicted": 0,
        "dropped_events": 0,
        "seq": 3,
        "stacks": 0,
    }


def test_reader_loads_core_output(core):
    reader = pytest.importorskip("pyflight.format.reader")
    from pyflight.format.writer import encode_header

    core.record(Kind.THREAD_NAME, 1, "a")
    core.seal()
    core.record(Kind.SAMPLE, 1, 2, HERE, 3, 0, 0)
    trace = reader.loads(encode_header({}) + b"".join(core.snapshot()), strict=True)
    assert [e[0] for e in trace.events] == [Kind.THREAD_NAME, Kind.SAMPLE]
    assert trace.events[1][5][0][0] == "test_reader_loads_core_output"
    assert len(trace.generations) == 2 and not trace.warnings


def test_snapshot_empty_and_stopped():
    _core.stop()
    with pytest.raises(RuntimeError):
        _core.snapshot()
    _core.record(Kind.GC_BEGIN, 1)  # no-op when stopped
    _core.seal()
    _core.maybe_seal()
    _core.set_live("k", Kind.GC_BEGIN, 1)
    _core.clear_live("k")
    assert _core.stats()["enabled"] is False and _core.is_enabled() is False
    configure()
    _core.start()
    try:
        with pytest.raises(RuntimeError):
            _core.start()
        with pytest.raises(RuntimeError):
            configure()
        assert _core.snapshot() == []  # a generation with no events is not emitted
        assert _core.stats()["seq"] == 1
    finally:
        _core.stop()


def test_start_before_configure_fails(subprocess_env):
    code = "from pyflight import _core\ntry:\n  _core.start()\nexcept RuntimeError:\n  print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_configure_validation():
    _core.stop()
    with pytest.raises(TypeError):
        _core.configure(arg_counts(), max_bytes=1, min_age_ns=1, gen_max_bytes=1)
    with pytest.raises(ValueError):
        _core.configure(arg_counts()[:5], max_bytes=1, min_age_ns=1, gen_max_bytes=1, gen_interval_ns=1)
    with pytest.raises(ValueError):
        _core.configure(arg_counts(), max_bytes=-1, min_age_ns=1, gen_max_bytes=1, gen_interval_ns=1)
    with pytest.raises(ValueError):
        _core.configure(b"\x20" * 128, max_bytes=1, min_age_ns=1, gen_max_bytes=1, gen_interval_ns=1)


def _here_line() -> int:
    return sys._getframe(1).f_lineno


def test_here_and_frame_stacks(core):
    def inner():
        line = _here_line() + 1
        core.record(Kind.SAMPLE, 1, 0, HERE, 0, 0, 0)
        core.record(Kind.SAMPLE, 2, 0, sys._getframe(), 0, 0, 0)
        return line

    def outer():
        line = _here_line() + 1
        return inner(), line

    inner_line, outer_line = outer()
    evs = events_of(snapshot()[0])
    here_stack, frame_stack = evs[0][5], evs[1][5]
    assert here_stack[0] == Frame(inner.__qualname__, __file__, inner_line)
    assert here_stack[1] == Frame(outer.__qualname__, __file__, outer_line)
    assert here_stack[2][0] == "test_here_and_frame_stacks"
    assert frame_stack[0] == Frame(inner.__qualname__, __file__, inner_line + 1)
    assert frame_stack[1:] == here_stack[1:]


def test_repeated_stacks_keep_exact_lines_and_names(core):
    """Stacks seen again are looked up in a cache: it must still tell two lines of one
    function apart, and a function re-created (same name, other body) from the old one."""

    def at_two_lines() -> list[int]:
        lines = []
        for _ in range(3):
            lines.append(_here_line() + 1)
            core.record(Kind.SAMPLE, 1, 0, HERE, 0, 0, 0)
            lines.append(_here_line() + 1)
            core.record(Kind.SAMPLE, 1, 0, HERE, 0, 0, 0)
        return lines

    lines = at_two_lines()
    for body in ("    rec(50, 1, 0, here, 0, 0, 0)\n", "    x = 1\n    rec(50, 1, 0, here, 0, 0, 0)\n"):
        ns: dict[str, Any] = {}
        exec(compile("def made(rec, here):\n" + body, "<made>", "exec"), ns)
        ns.pop("made")(core.record, HERE)
    evs = events_of(snapshot()[0])
    seen = [ev[5][0] for ev in evs if ev[0] == Kind.SAMPLE]
    assert [f.line for f in seen[:6]] == lines
    assert {f.function for f in seen[:6]} == {at_two_lines.__qualname__}
    assert seen[6:] == [Frame("made", "<made>", 2), Frame("made", "<made>", 3)]


def test_max_stack_depth(restart):
    core = restart(max_stack_depth=3)

    def recurse(n: int) -> None:
        if n:
            recurse(n - 1)
        else:
            core.record(Kind.SAMPLE, 0, 0, HERE, 0, 0, 0)

    recurse(10)
    core.record(Kind.BLOCK_BEGIN, 0, 0, HERE)
    stacks = [e[5] for e in events_of(snapshot()[0]) if e[0] == Kind.SAMPLE]
    assert [f.function for f in stacks[0]] == [recurse.__qualname__] * 3
    core = restart(max_stack_depth=0)
    core.record(Kind.SAMPLE, 0, 0, HERE, 0, 0, 0)
    assert events_of(snapshot()[0])[0][5] == ()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((Kind.GC_BEGIN,), ValueError),
        ((Kind.GC_BEGIN, 1, 2), ValueError),
        ((0, 1), ValueError),
        ((200, 1), ValueError),
        ((-1, 1), ValueError),
        ((2**70, 1), ValueError),
        (("GC_BEGIN", 1), TypeError),
        ((), TypeError),
        ((Kind.GC_BEGIN, -1), OverflowError),
        ((Kind.GC_BEGIN, 2**64), OverflowError),
        ((Kind.GC_BEGIN, 1.0), TypeError),
        ((Kind.GC_BEGIN, b"x"), TypeError),
        ((Kind.COUNTER, type("S", (str,), {})("x"), 1), TypeError),
        ((Kind.COUNTER, "new-string", 1.5), TypeError),
        ((Kind.SAMPLE, 0, 0, HERE, -5, 0, 0), OverflowError),
    ],
)
def test_bad_arguments_record_nothing(core, args, error):
    with pytest.raises(error):
        core.record(*args)
    assert core.stats()["events"] == 0 and core.stats()["open_bytes"] == 0
    assert core.snapshot() == []


def test_set_live_rejects_stacks_and_odd_keys(core):
    with pytest.raises(TypeError):
        core.set_live("k", Kind.THREAD_EXCEPTION, 1, "a", "b", HERE)
    with pytest.raises(TypeError):
        core.set_live(object(), Kind.GC_BEGIN, 1)
    with pytest.raises(ValueError):
        core.set_live("k", Kind.GC_BEGIN)
    assert core.stats()["events"] == 0


def test_time_based_sealing(restart):
    core = restart(gen_interval_ns=2_000_000)
    core.record(Kind.GC_BEGIN, 1)
    time.sleep(0.005)
    core.record(Kind.GC_BEGIN, 2)  # finds the generation due: seals it first
    assert core.stats()["sealed"] == 1
    time.sleep(0.005)
    core.maybe_seal()  # the ticker's path
    gens = snapshot()
    assert [len(events_of(g)) for g in gens] == [1, 1]
    assert events_of(gens[1])[0][1] >= gens[1]["start_ns"] == gens[0]["end_ns"]


def test_size_based_sealing(restart):
    core = restart(gen_max_bytes=200)
    for i in range(1000):
        core.record(Kind.COUNTER, f"name{i % 7}", i)
    gens = snapshot()
    assert len(gens) > 20
    assert [g["seq"] for g in gens] == list(range(1, len(gens) + 1))
    for g in gens:
        assert g["size"] <= 200 + 60  # one event plus the section and batch headers
    assert sum(len(events_of(g)) for g in gens) == 1000


def test_eviction_by_max_bytes_under_storm(restart):
    core = restart(max_bytes=20_000, gen_max_bytes=2_000)
    record, stats = core.record, core.stats
    for i in range(1_000_000):
        record(Kind.COUNTER, "storm", i)
        if i % 5000 == 0:
            assert stats()["ring_bytes"] <= 20_000
    st = stats()
    assert st["ring_bytes"] <= 20_000 and st["evicted"] > 100 and st["events"] == 1_000_000
    frames = core.snapshot()
    assert sum(map(len, frames)) <= 20_000 + 2_000 + 64
    gens = [parse_generation(f) for f in frames]
    last = [e[4] for e in events_of(gens[-1])]
    assert last[-1] == 999_999


def test_eviction_by_min_age(restart):
    core = restart(min_age_ns=20_000_000)
    core.record(Kind.GC_BEGIN, 1)
    core.seal()
    core.record(Kind.GC_BEGIN, 2)
    core.seal()
    assert core.stats()["generations"] == 2
    time.sleep(0.03)
    core.record(Kind.GC_BEGIN, 3)
    core.maybe_seal()  # not due: only evicts by age
    st = core.stats()
    assert st["generations"] == 0 and st["evicted"] == 2
    assert [events_of(g)[0][3] for g in snapshot()] == [3]


def test_set_live_reemitted_each_generation(core):
    core.set_live(("thread", 7), Kind.THREAD_INFO, 7, "worker", 99)
    core.set_live("u1", Kind.USER_TASK_INFO, 1, 0, "job")
    core.set_live(("thread", 7), Kind.THREAD_INFO, 7, "renamed", 99)  # keeps its place
    core.record(Kind.GC_BEGIN, 0)
    core.seal()
    core.record(Kind.GC_BEGIN, 1)
    core.seal()
    core.clear_live("u1")
    core.clear_live("missing")
    core.record(Kind.GC_BEGIN, 2)
    core.seal()  # the next generation holds only the remaining live entry
    gens = snapshot()
    assert [e[3:] for e in events_of(gens[0])] == [(7, "worker", 99), (1, 0, "job"), (7, "renamed", 99), (0,)]
    assert [e[3:] for e in events_of(gens[1])] == [(7, "renamed", 99), (1, 0, "job"), (1,)]
    assert [e[3:] for e in events_of(gens[2])] == [(7, "renamed", 99), (1, 0, "job"), (2,)]
    assert [e[3:] for e in events_of(gens[3])] == [(7, "renamed", 99)]
    for g in gens[1:]:
        assert events_of(g)[0][1] == g["start_ns"]


def test_no_references_leak(core):
    text = "".join(["leak", "-check"])
    frame = sys._getframe()

    def f():
        core.record(Kind.SAMPLE, 0, 0, HERE, 0, 0, 0)

    code = f.__code__
    before = (sys.getrefcount(text), sys.getrefcount(frame), sys.getrefcount(code))
    for _ in range(10_000):
        core.record(Kind.LOG, 0, text, text)
        core.record(Kind.SAMPLE, 0, 0, frame, 0, 0, 0)
        f()
    core.seal()  # the generation's string table held `text`
    assert (sys.getrefcount(text), sys.getrefcount(frame), sys.getrefcount(code)) == before


def test_code_objects_not_kept_alive(core):
    import weakref

    ns: dict[str, Any] = {}
    exec("def g(rec, here):\n    rec(50, 0, 0, here, 0, 0, 0)\n", ns)
    g = ns.pop("g")
    g(core.record, HERE)
    ref = weakref.ref(g.__code__)
    del g
    gc.collect()
    assert ref() is None


def test_one_batch_per_thread(core):
    barrier = threading.Barrier(4)
    tids: dict[int, int] = {}

    def work(n: int) -> None:
        tids[n] = threading.get_native_id()
        barrier.wait()
        for i in range(1000):
            core.record(Kind.WAKE, n, i, 0, 0)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (gen,) = snapshot()
    assert len(gen["batches"]) == 4
    for b in gen["batches"]:
        (n,) = {e[3] for e in b["events"]}
        assert tids[n] == b["tid"]
        assert [e[4] for e in b["events"]] == list(range(1000))


def test_threads_with_small_generations_and_snapshots(restart):
    core = restart(max_bytes=8_000, gen_max_bytes=500, gen_interval_ns=1_000_000)
    stop = threading.Event()

    def work(n: int) -> None:
        i = 0
        while not stop.is_set():
            core.record(Kind.LOG, n, f"c{i % 9}", "m")
            core.record(Kind.SAMPLE, n, i, HERE, 0, 0, 0)
            i += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(100):
            frames = core.snapshot()
            assert sum(map(len, frames)) <= 8_000
            seqs = [parse_generation(f)["seq"] for f in frames]
            assert seqs == sorted(set(seqs))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert core.stats()["dropped_events"] == 0


def test_gc_callback_reentrancy_is_safe(core):
    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            core.record(Kind.GC_BEGIN, info["generation"])
        else:
            core.record(Kind.GC_END, info["generation"], info["collected"], info["uncollectable"])

    gc.callbacks.append(on_gc)
    try:
        for i in range(20_000):
            a: list[Any] = []
            a.append(a)  # garbage cycles make collections happen mid-record
            core.record(Kind.SAMPLE, 0, i, HERE, 0, 0, 0)
            core.set_live("k", Kind.USER_TASK_INFO, i, 0, f"t{i % 50}")
    finally:
        gc.callbacks.remove(on_gc)
    gens = snapshot()
    st = core.stats()  # counts the live entry re-recorded into the new open generation too
    assert sum(len(events_of(g)) for g in gens) + 1 == st["events"]


def test_fork_child_discards_everything(core):
    core.record(Kind.GC_BEGIN, 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = False
        try:
            core._after_fork_child()
            st = core.stats()
            core.record(Kind.GC_BEGIN, 1)
            configure()
            core.start()
            core.record(Kind.GC_BEGIN, 2)
            gens = [parse_generation(g) for g in core.snapshot()]
            ok = (
                not st["enabled"]
                and st["generations"] == 0
                and st["events"] == 0
                and [e[3] for e in events_of(gens[0])] == [2]
                and gens[0]["batches"][0]["tid"] == threading.get_native_id()
            )
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert [e[3] for e in events_of(snapshot()[0])] == [1]


# ------------------------------------------------------------------ decode_events


def _tables() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    types: list[bytes | None] = [None] * 128
    kinds: list[Any] = [None] * 128
    for kind, args in ARGS.items():
        types[kind] = "".join(a.type for a in args).encode()
        kinds[kind] = kind
    return tuple(types), tuple(kinds)


TYPES, KINDS = _tables()


def _decode_batch(frame: bytes, gen: dict[str, Any], batch: dict[str, Any], **override: Any) -> list[Any]:
    args = {
        "data": frame,
        "offset": batch["offset"],
        "end": batch["offset"] + batch["n_bytes"],
        "base_ns": batch["base_ns"],
        "tid": batch["tid"],
        "n_events": len(batch["events"]),
        "arg_types": TYPES,
        "kinds": KINDS,
        "strings": tuple(gen["strings"]),
        "stacks": tuple(gen["stacks"]),
        "event_type": Ev,
    }
    args.update(override)
    return _core.decode_events(*args.values())


def _sample_generation(core: Any) -> bytes:
    core.record(Kind.THREAD_START, 2**63, "t\u00e9", 3, 4)
    for i in range(50):
        core.record(Kind.SAMPLE, i, i * 1000, HERE, i % 6, 0, 0)
        core.record(Kind.LOG, i, "cat", f"message {i % 3}")
    (frame,) = core.snapshot()
    return frame


def test_decode_events_matches_local_parser(core):
    frame = _sample_generation(core)
    gen = parse_generation(frame)
    (batch,) = gen["batches"]
    events = _decode_batch(frame, gen, batch)
    assert all(type(e) is Ev for e in events)
    assert [tuple(e) for e in events] == batch["events"]
    assert _decode_batch(frame, gen, batch, strings=list(gen["strings"]))[5] == events[5]
    empty = _core.decode_events(frame, 3, 3, 0, 1, 0, TYPES, KINDS, ("",), ((),), Ev)
    assert empty == []


def test_decode_events_rejects_malformed(core):
    frame = _sample_generation(core)
    gen = parse_generation(frame)
    (batch,) = gen["batches"]
    start, end = batch["offset"], batch["offset"] + batch["n_bytes"]

    def bad(match: str = "", **override: Any) -> str:
        with pytest.raises(ValueError, match=r"at byte \d+$") as info:
            _decode_batch(frame, gen, batch, **override)
        assert match in str(info.value)
        return str(info.value)

    bad("does not match", n_events=len(batch["events"]) + 1)
    assert bad("left over", n_events=1).endswith(f"at byte {start + 15}")  # THREAD_START: 1+1+10+1+1+1
    bad("out of range", strings=("",))
    bad("out of range", stacks=((),))
    bad("not in the kind table", arg_types=(None,) * 128)
    bad("over 64 bits", base_ns=2**64 - 1)
    for cut in range(start, end):  # every truncation
        try:
            _decode_batch(frame, gen, batch, end=cut)
        except ValueError as exc:
            assert str(exc).rsplit("at byte ", 1)[1].isdigit()
        else:
            pytest.fail(f"truncation at {cut} accepted")
    overlong = b"\x28" + b"\xff" * 9 + b"\x02" + b"\x00"
    with pytest.raises(ValueError, match=r"over 64 bits at byte 1$"):
        _core.decode_events(overlong, 0, len(overlong), 0, 1, 1, TYPES, KINDS, ("",), ((),), Ev)
    with pytest.raises(ValueError):
        _core.decode_events(frame, 10, len(frame) + 1, 0, 1, 1, TYPES, KINDS, ("",), ((),), Ev)
    with pytest.raises(TypeError):
        _core.decode_events(frame, 0, 1, 0, 1, 1, TYPES, KINDS, ("",), ((),), list)


def test_decode_events_fuzz(core):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    frame = _sample_generation(core)
    gen = parse_generation(frame)
    (batch,) = gen["batches"]
    strings, stacks = tuple(gen["strings"]), tuple(gen["stacks"])

    @hypothesis.settings(max_examples=2000, deadline=None)
    @hypothesis.given(st.binary(max_size=64), st.integers(0, 40), st.integers(0, 2**64 - 1))
    def fuzz(data: bytes, n_events: int, base: int) -> None:
        try:
            events = _core.decode_events(
                data, 0, len(data), base, 7, n_events, TYPES, KINDS, strings, stacks, Ev
            )
        except ValueError as exc:
            assert str(exc).rsplit("at byte ", 1)[1].isdigit()
        else:
            assert len(events) == n_events

    @hypothesis.settings(max_examples=1000, deadline=None)
    @hypothesis.given(st.integers(0, batch["n_bytes"] - 1), st.integers(0, 255))
    def flip(at: int, value: int) -> None:
        data = bytearray(frame)
        data[batch["offset"] + at] = value
        try:
            _decode_batch(bytes(data), gen, batch)
        except ValueError:
            pass

    fuzz()
    flip()


# ------------------------------------------------------------------ speed (printed, not asserted)


def test_print_speed(core):
    n = 200_000
    record, kind = core.record, Kind.BLOCK_END
    loop = time.perf_counter_ns()
    for _ in range(n):
        pass
    loop = time.perf_counter_ns() - loop
    t0 = time.perf_counter_ns()
    for _ in range(n):
        record(kind, 1, 2, 3)
    enabled = (time.perf_counter_ns() - t0 - loop) / n
    (frame,) = core.snapshot()
    gen = parse_generation(frame)
    (batch,) = gen["batches"]
    t0 = time.perf_counter_ns()
    events = _decode_batch(frame, gen, batch)
    decode = len(events) / ((time.perf_counter_ns() - t0) / 1e9)
    core.stop()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        record(kind, 1, 2, 3)
    disabled = (time.perf_counter_ns() - t0 - loop) / n
    print(
        f"\nC core {sys.version.split()[0]}: record {enabled:.0f} ns enabled, {disabled:.0f} ns disabled; "
        f"decode {decode / 1e6:.1f} M events/s"
    )
