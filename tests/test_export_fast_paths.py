"""The Perfetto and Chrome exports on a synthetic trace full of odd cases (ends without
begins, things open at the end, wake-ups by the thousand), and the fast paths they use
(varints, microsecond formatting, the paused GC) against the plain way of doing each.

When the exporters were rewritten for speed, their output was checked byte for byte
against the previous implementation on this trace and on a recorded one; the content
itself is checked by tests/test_export.py."""

from __future__ import annotations

import gc
import json
import random

import pytest

from pyflight.core.events import BlockReason, Kind, TaskOutcome, ThreadState
from pyflight.export import export, gc_paused
from pyflight.export.chrome import _us
from pyflight.export.protobuf import encode_varint, timestamp_varint_encoder
from pyflight.format.reader import Trace, loads
from tracegen import STACK_A, STACK_B, Gen, trace

# --------------------------------------------------------------------------------------
# A synthetic trace with the odd cases: ends without begins, things open at the end,
# reused task ids, overlapping regions and steps, repeated wakes of one condition,
# timestamps above 2**42 ns, large ids, non-ASCII and JSON-special text


def synthetic(rounds: int = 400, seed: int = 7) -> Trace:
    rnd = random.Random(seed)
    t0 = 5_000_000_000_000
    now = t0

    def tick() -> int:
        nonlocal now
        now += rnd.randrange(1, 40_000)
        return now

    main, worker, other = 11, 12, 13
    g = Gen(seq=1, start_ns=t0, end_ns=t0 + rounds * 2_000_000)
    for tid, name in ((main, "MainThread"), (worker, "wörker"), (other, 'other "3"')):
        g.event(tid, Kind.THREAD_INFO, tick(), tid=tid, name=name, ident=tid * 1000)
    g.event(other, Kind.USER_TASK_INFO, tick(), id=999_999, parent=0, name="known\tname")
    # ends whose begins are before the window
    g.event(worker, Kind.BLOCK_END, tick(), reason=BlockReason.LOCK, obj=0x7F00DEAD, waker=main)
    g.event(main, Kind.CALLBACK_END, tick(), loop=1)
    g.event(other, Kind.REGION_END, tick(), task=0, name="orphan")
    g.event(other, Kind.USER_TASK_END, tick(), id=999_999)
    g.event(main, Kind.TASK_STEP_END, tick(), task=0x7F0000000040)
    g.event(main, Kind.GC_END, tick(), generation=1, collected=3, uncollectable=0)
    condition = 0x7F00BEEF
    for i in range(rounds):
        task = 0x7F0000000000 + (i % 37) * 64  # addresses: reused
        g.event(main, Kind.CALLBACK_BEGIN, tick(), loop=1, name=f"cb{i % 5}")
        g.event(main, Kind.TASK_CREATE, tick(), task=task, name=f"Task-{i}", coro="work()", parent=0)
        g.event(main, Kind.TASK_READY, tick(), task=task)
        g.event(main, Kind.TASK_STEP_BEGIN, tick(), task=task)
        if i % 3 == 0:  # a region spanning two steps: overflows into a second lane
            g.event(main, Kind.REGION_BEGIN, tick(), task=0, name="span")
        what = ("Future", "", "Queue.get")[i % 3]
        g.event(main, Kind.TASK_WAIT, tick(), task=task, reason=BlockReason.AWAIT, what=what, stack=STACK_A)
        g.event(main, Kind.TASK_STEP_END, tick(), task=task)
        g.event(main, Kind.CALLBACK_END, tick(), loop=1)
        # the worker waits on a condition the main thread notifies (many wakes, one key)
        g.event(worker, Kind.BLOCK_BEGIN, tick(), reason=BlockReason.CONDITION, obj=condition, stack=STACK_B)
        g.event(main, Kind.WAKE, tick(), target=worker, task=0, reason=BlockReason.CONDITION, obj=condition)
        g.event(main, Kind.WAKE, tick(), target=worker, task=0, reason=BlockReason.CONDITION, obj=condition)
        g.event(worker, Kind.BLOCK_END, tick(), reason=BlockReason.CONDITION, obj=condition, waker=main)
        g.event(worker, Kind.WAKE, tick(), target=main, task=task, reason=BlockReason.AWAIT, obj=0)
        g.event(main, Kind.TASK_READY, tick(), task=task)
        g.event(main, Kind.TASK_STEP_BEGIN, tick(), task=task)
        if i % 3 == 0:
            g.event(main, Kind.REGION_END, tick(), task=0, name="span")
        g.event(main, Kind.TASK_STEP_END, tick(), task=task)
        outcome = (TaskOutcome.OK, TaskOutcome.FAILED, TaskOutcome.CANCELLED)[i % 3]
        error = "ValueError('é \"x\"')" if outcome == TaskOutcome.FAILED else ""
        g.event(main, Kind.TASK_DONE, tick(), task=task, outcome=outcome, error=error)
        uid = i + 1
        g.event(other, Kind.USER_TASK_BEGIN, tick(), id=uid, parent=0, name="job" if i % 4 else "")
        g.event(other, Kind.REGION_BEGIN, tick(), task=uid, name="work")
        g.event(other, Kind.REGION_END, tick(), task=uid, name="work")
        g.event(other, Kind.USER_TASK_END, tick(), id=uid)
        if i % 25 == 0:
            g.event(worker, Kind.GC_BEGIN, tick(), generation=i % 3)
            g.event(worker, Kind.GC_END, tick(), generation=i % 3, collected=i, uncollectable=0)
            g.event(other, Kind.COUNTER, tick(), name="queue", value=rnd.randrange(0, 1 << 40))
            g.event(other, Kind.LOG, tick(), task=0, category="db", message=f'said "hi"\n{i} ✓')
            g.event(main, Kind.SAMPLE, tick(), tid=main, task=task, stack=STACK_A, state=ThreadState.RUNNING)
            g.event(main, Kind.SAMPLE, tick(), tid=worker, task=0, stack=STACK_B, state=ThreadState.SLEEPING)
        if i % 100 == 0:
            g.event(main, Kind.LOOP_STALL, tick(), loop=1, task=task, duration=123_456, stack=STACK_A)
            g.event(
                worker, Kind.THREAD_EXCEPTION, tick(), tid=worker, type="KeyError", message="'k'", stack=()
            )
            g.event(main, Kind.TRIGGER, tick(), reason="slow", detail="p99 > 1 s")
            g.event(main, Kind.DATA_LOSS, tick(), source="sampler", events=i, reason="queue full")
            g.event(main, Kind.SOURCE_DISABLED, tick(), source="gc", reason="error")
    # left open at the end of the window
    g.event(worker, Kind.BLOCK_BEGIN, tick(), reason=BlockReason.LOCK, obj=0x7F00DEAD, stack=STACK_B)
    g.event(main, Kind.TASK_CREATE, tick(), task=0x7F00000FFFC0, name="forever", coro="", parent=0)
    g.event(main, Kind.TASK_STEP_BEGIN, tick(), task=0x7F00000FFFC0)
    g.event(main, Kind.TASK_WAIT, tick(), task=0x7F00000FFFC0, reason=BlockReason.SLEEP, what="", stack=())
    g.event(other, Kind.USER_TASK_BEGIN, tick(), id=rounds + 10, parent=0, name="unfinished")
    g.event(other, Kind.REGION_BEGIN, tick(), task=rounds + 10, name="unfinished region")
    g.event(worker, Kind.GC_BEGIN, tick(), generation=2)
    assert now < g.end_ns
    return loads(trace([g]))


@pytest.fixture(scope="module")
def odd() -> Trace:
    return synthetic()


# --------------------------------------------------------------------------------------
# What the synthetic trace exports to


def test_synthetic_trace_has_the_odd_cases(odd: Trace) -> None:
    doc = json.loads(export(odd, "chrome"))
    names = {e["name"] for e in doc["traceEvents"]}
    assert {"blocked: condition", "blocked: lock", "orphan", "span", "forever", "trigger"} <= names
    assert any(e["tid"] < 0 for e in doc["traceEvents"] if e["ph"] == "M")  # an overflow lane
    assert any(isinstance(e.get("ts"), float) and e["ts"] > 1000 for e in doc["traceEvents"])


# --------------------------------------------------------------------------------------
# The fast paths


def _varint_reference(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_encode_varint() -> None:
    rnd = random.Random(1)
    values = [0, 1, 127, 128, 0x3FFF, 0x4000, (1 << 28) - 1, 1 << 28, (1 << 42) - 1, 1 << 42]
    values += [(1 << 63) - 1, (1 << 64) - 1, -1, -2, -(1 << 40), -(1 << 63)]
    values += [rnd.getrandbits(bits) for bits in range(1, 65) for _ in range(20)]
    timestamps = timestamp_varint_encoder()
    for v in values:
        assert encode_varint(v) == _varint_reference(v), v
        assert timestamps(v) == _varint_reference(v), v
        assert timestamps(v) == _varint_reference(v), v  # from its cache
    assert encode_varint(BlockReason.LOCK) == _varint_reference(int(BlockReason.LOCK))


def test_microseconds_as_json_writes_them() -> None:
    rnd = random.Random(2)
    values = [0, 1, 999, 1000, 1001, 10**15 - 1, 10**15, 10**18 + 7, -1, -1000, -123_456_789]
    values += [rnd.randrange(0, 10**digits) for digits in range(1, 17) for _ in range(2000)]
    for ns in values:
        assert _us(ns) == json.dumps(round(ns / 1000, 3)), ns


def test_gc_paused_restores_the_gc_state() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ZeroDivisionError), gc_paused():
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_export_leaves_gc_enabled(odd: Trace) -> None:
    for fmt in ("perfetto", "chrome", "pprof", "folded", "speedscope"):
        export(odd, fmt)
        assert gc.isenabled()
