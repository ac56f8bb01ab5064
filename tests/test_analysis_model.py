"""The analysis model on real recorded programs (both cores) and on cut or odd traces."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib.util
import itertools
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pyflight
from pyflight.analysis import (
    Interval,
    Model,
    State,
    build,
    task_breakdown,
    thread_breakdown,
)
from pyflight.analysis.cpu import WAITING_FOR_JOB, cpu_samples
from pyflight.core import BACKEND_NAME
from pyflight.core.events import BlockReason, Kind, TaskOutcome, ThreadState
from pyflight.format.reader import Trace, loads
from tracegen import Gen, trace

MS = 1_000_000
C_CORE = BACKEND_NAME == "c"

# --------------------------------------------------------------------------------------
# one recorded program with every scenario, shared by the tests below


def _lines_of(marker: str) -> int:
    """Line number of the source line carrying ``marker`` (in a comment) in this file."""
    for number, text in enumerate(Path(__file__).read_text().splitlines(), 1):
        if marker in text and "_lines_of" not in text:
            return number
    raise AssertionError(marker)


def _scenario(info: dict[str, Any]) -> None:
    lock = threading.Lock()
    held = threading.Event()

    def holder() -> None:
        info["holder"] = threading.get_native_id()
        with lock:
            held.set()
            time.sleep(0.05)

    def waiter() -> None:
        info["waiter"] = threading.get_native_id()
        held.wait()
        with lock:  # MARK-acquire
            pass

    def runner() -> None:  # a child's output read with communicate(): it waits in select
        info["runner"] = threading.get_native_id()
        child = [sys.executable, "-c", "import time; time.sleep(0.2)"]
        subprocess.run(child, capture_output=True, check=True)

    threads = [
        threading.Thread(target=holder, name="holder"),
        threading.Thread(target=waiter, name="waiter"),
        threading.Thread(target=runner, name="runner"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    info["main"] = threading.get_native_id()
    time.sleep(0.1)  # MARK-sleep

    async def napper() -> None:
        await asyncio.sleep(0.1)  # MARK-await

    async def staller() -> None:
        time.sleep(0.2)  # MARK-stall

    async def main() -> None:
        await asyncio.create_task(napper(), name="napper")
        await asyncio.create_task(staller(), name="staller")

    asyncio.run(main())
    gc.collect(2)
    with pyflight.task("job"):
        with pyflight.region("part"):
            time.sleep(0.03)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, dict[str, Any]]:
    info: dict[str, Any] = {}
    path = tmp_path_factory.mktemp("analysis") / "scenario.pyfl"
    with pyflight.FlightRecorder() as rec:
        _scenario(info)
        rec.write_to(path)
    return build(pyflight.load(path)), info


def _check_timeline(intervals: list[Interval], start: int, end: int) -> None:
    """Sorted, non-overlapping, covering [start, end] exactly."""
    if end == start:
        assert not intervals
        return
    assert intervals, (start, end)
    assert intervals[0].start == start
    assert intervals[-1].end == end
    for a, b in itertools.pairwise(intervals):
        assert a.end == b.start, (a, b)
    for i in intervals:
        assert i.end > i.start, i


def check_model(model: Model) -> None:
    assert model.start <= model.end
    for tl in model.threads.values():
        assert model.start <= tl.start <= tl.end <= model.end
        _check_timeline(tl.intervals, tl.start, tl.end)
    for task in model.all_tasks():
        _check_timeline(task.intervals, task.created, task.end)
        for step in task.steps:
            assert step.start <= step.end
    for loop in model.loops.values():
        for i in loop.busy + loop.idle:
            assert i.start <= i.end
        for stall in loop.stalls:
            assert stall.start <= stall.end and stall.duration == stall.end - stall.start
    for p in model.gc_pauses:
        assert p.start <= p.end
    for rows in (thread_breakdown(model, include_pyflight=True), task_breakdown(model)):
        for row in rows:
            parts = row.running + row.ready + row.blocked_total + row.gc + row.idle + row.unknown
            assert parts == row.total


# --------------------------------------------------------------------------------------
# real programs


@pytest.mark.skipif(not C_CORE, reason="locks are traced by the C core only")
def test_lock_wait_and_wake(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    waiter = model.threads[info["waiter"]]
    blocks = [i for i in waiter.intervals if i.state is State.BLOCKED and i.reason == BlockReason.LOCK]
    assert len(blocks) == 1
    block = blocks[0]
    assert 35 * MS <= block.duration <= 1000 * MS
    assert block.stack and block.stack[0].function.endswith("waiter")
    assert block.stack[0].line == _lines_of("MARK-acquire")
    wakes = [w for w in model.wakes if w.target == waiter.tid and w.reason == BlockReason.LOCK]
    assert [w.waker for w in wakes] == [info["holder"]]
    assert waiter.time_in(State.BLOCKED, BlockReason.LOCK) == block.duration


def test_sleep(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    main = model.threads[info["main"]]
    line = _lines_of("MARK-sleep")
    sleeps = [
        i for i in main.intervals if i.reason == BlockReason.SLEEP and i.stack and i.stack[0].line == line
    ]
    assert len(sleeps) == 1
    assert sleeps[0].state is State.BLOCKED
    assert 90 * MS <= sleeps[0].duration <= 2000 * MS
    assert sleeps[0].stack[0].function.endswith("_scenario")


def test_await_idle_and_steps(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    (napper,) = [t for t in model.all_tasks() if t.name == "napper"]
    assert napper.coro.endswith("napper")
    assert napper.thread == info["main"]
    assert napper.outcome == TaskOutcome.OK and napper.done is not None
    assert len(napper.steps) == 2
    awaits = [i for i in napper.intervals if i.state is State.BLOCKED and i.reason == BlockReason.AWAIT]
    assert len(awaits) == 1
    wait = awaits[0]
    assert wait.start == napper.steps[0].end and wait.end <= napper.steps[1].start
    assert 90 * MS <= wait.duration <= 2000 * MS
    running = [i for i in napper.intervals if i.state is State.RUNNING]
    assert next((i.start, i.end) for i in running) == (napper.steps[0].start, napper.steps[0].end)
    assert all(s.thread == info["main"] for s in napper.steps)
    # the loop sat idle in its selector meanwhile, and its thread shows IDLE
    (loop,) = [lp for lp in model.loops.values() if lp.tid == info["main"]]
    idle = sum(max(0, min(i.end, wait.end) - max(i.start, wait.start)) for i in loop.idle)
    assert idle >= 0.8 * wait.duration
    main = model.threads[info["main"]]
    assert main.is_loop_thread
    thread_idle = sum(
        max(0, min(i.end, wait.end) - max(i.start, wait.start))
        for i in main.intervals
        if i.state is State.IDLE
    )
    assert thread_idle >= 0.8 * wait.duration
    # the steps are the loop's busy time
    busy = {(i.start, i.end) for i in loop.busy}
    assert all((s.start, s.end) in busy for s in napper.steps)
    assert any(i.detail == "napper" for i in loop.busy)


def test_stall(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    (staller,) = [t for t in model.all_tasks() if t.name == "staller"]
    long_steps = [s for s in staller.steps if s.end - s.start >= 190 * MS]
    assert len(long_steps) == 1
    step = long_steps[0]
    stalls = [s for lp in model.loops.values() for s in lp.stalls if s.task == staller.id]
    assert len(stalls) == 1
    stall = stalls[0]
    assert (stall.start, stall.end) == (step.start, step.end)
    line = _lines_of("MARK-stall")
    assert any(f.line == line and f.function.endswith("staller") for stack in stall.stacks for f in stack)
    # the loop thread was blocked in time.sleep inside the step
    main = model.threads[info["main"]]
    assert any(i.reason == BlockReason.SLEEP and i.stack and i.stack[0].line == line for i in main.intervals)


def test_gc_pause(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    pauses = [p for p in model.gc_pauses if p.generation == 2 and p.tid == info["main"]]
    assert pauses
    main = model.threads[info["main"]]
    gc_time = main.time_in(State.GC)
    assert gc_time >= max(p.duration for p in pauses)


def test_user_task_and_region(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    (job,) = [u for u in model.user_tasks.values() if u.name == "job"]
    assert job.duration is not None and 25 * MS <= job.duration <= 2000 * MS
    assert job.thread == info["main"] and not job.clipped
    (part,) = job.regions
    assert part.name == "part" and part.task == job.id and part.duration is not None
    assert 25 * MS <= part.duration <= job.duration
    assert part in model.regions


def test_breakdown_adds_up(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    check_model(model)
    rows = {r.name: r for r in thread_breakdown(model)}
    main = model.threads[info["main"]]
    row = rows[f"{main.name} ({main.tid})"]
    lifetime = main.end - main.start
    assert abs(row.total - lifetime) <= 0.01 * lifetime
    assert row.blocked.get(BlockReason.SLEEP, 0) >= 290 * MS  # 0.1 + 0.2 + 0.03 s of sleeps
    assert row.idle >= 80 * MS
    assert not any(r.name.startswith("pyflight-") for r in rows.values())
    # the subprocess's communicate() blocked in select: counted as waiting for it
    runner = rows[f"runner ({info['runner']})"]
    assert runner.waiting_for.get("subprocess", 0) >= 150 * MS, runner
    assert runner.blocked.get(BlockReason.SELECT, 0) < 20 * MS, runner
    for task in model.all_tasks():
        covered = sum(i.duration for i in task.intervals)
        assert abs(covered - (task.end - task.created)) <= 0.01 * max(1, task.end - task.created)
    tasks = {r.name: r for r in task_breakdown(model)}
    napper = next(r for name, r in tasks.items() if name.endswith("napper"))
    assert napper.count == 1 and napper.blocked[BlockReason.AWAIT] >= 90 * MS
    staller = next(r for name, r in tasks.items() if name.endswith("staller"))
    assert staller.running >= 190 * MS
    totals = [r.total for r in tasks.values()]
    assert (
        list(tasks.values()) == sorted(tasks.values(), key=lambda r: -r.total)
        or totals == sorted(totals)[::-1]
    )


def test_samples_joined_to_states(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    assert model.samples and model.sampling_interval_ns > 0
    main = model.threads[info["main"]]
    for s in model.samples:
        if s.tid != main.tid or not main.start <= s.time < main.end:
            continue
        (inside,) = [i for i in main.intervals if i.start <= s.time < i.end] or [None]
        if inside is not None:
            assert s.state is inside.state and s.reason == inside.reason


def test_threads_are_named_and_flagged(recorded: tuple[Model, dict[str, Any]]) -> None:
    model, info = recorded
    assert model.threads[info["holder"]].name == "holder"
    assert any(t.is_pyflight for t in model.threads.values())
    assert not model.threads[info["holder"]].is_pyflight


def test_threads_asyncio_lifetimes_in_subwindows(recorded: tuple[Model, dict[str, Any]]) -> None:
    """Cutting the recorded events anywhere (a shorter window, lost events) never breaks
    the invariants."""
    model, _info = recorded
    events = model.trace.events
    rng = random.Random(5)
    for _ in range(30):
        a, b = sorted(rng.randrange(len(events) + 1) for _ in range(2))
        subset = events[a:b]
        if rng.random() < 0.5:
            subset = [e for e in subset if rng.random() < 0.8]
        cut = dataclasses.replace(model.trace, events=subset)
        check_model(build(cut))


# --------------------------------------------------------------------------------------
# hand-made traces

STACK = (("f", "/app/a.py", 10), ("main", "/app/main.py", 3))


def _load(*gens: Gen) -> Trace:
    return loads(trace(list(gens)))


def test_empty_traces() -> None:
    m = build(_load())
    assert m.threads == {} and m.start == m.end
    g = Gen(seq=1, start_ns=1000, end_ns=2000)
    m = build(_load(g))
    assert (m.start, m.end) == (1000, 2000) and m.threads == {}


def test_block_end_without_begin_and_begin_without_end() -> None:
    g = Gen(seq=1, start_ns=1000, end_ns=10_000)
    g.event(7, Kind.BLOCK_END, 3000, reason=BlockReason.LOCK, obj=5, waker=8)
    g.event(7, Kind.LOG, 4000, task=0, category="", message="x")
    g.event(7, Kind.BLOCK_BEGIN, 6000, reason=BlockReason.IO, obj=0, stack=STACK)
    g.event(
        8, Kind.BLOCK_END, 5000, reason=BlockReason.SLEEP, obj=0, waker=0
    )  # after other events? first own
    m = build(_load(g))
    check_model(m)
    t7 = m.threads[7]
    assert [(i.start, i.end, i.state, i.reason) for i in t7.intervals] == [
        (1000, 3000, State.BLOCKED, BlockReason.LOCK),
        (3000, 6000, State.RUNNING, None),
        (6000, 10_000, State.BLOCKED, BlockReason.IO),
    ]
    assert t7.intervals[-1].stack[0].function == "f"
    assert [(w.waker, w.target) for w in m.wakes] == [(8, 7)]
    assert m.threads[8].intervals[0].state is State.BLOCKED


def test_nested_and_mismatched_blocks() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=1000)
    g.event(1, Kind.THREAD_START, 10, tid=1, name="t", ident=1, parent=0)
    g.event(1, Kind.BLOCK_BEGIN, 100, reason=BlockReason.CONDITION, obj=1, stack=STACK)
    g.event(1, Kind.BLOCK_BEGIN, 200, reason=BlockReason.LOCK, obj=2, stack=STACK)
    g.event(1, Kind.BLOCK_END, 300, reason=BlockReason.CONDITION, obj=1, waker=0)  # pops both
    g.event(1, Kind.BLOCK_END, 400, reason=BlockReason.SLEEP, obj=0, waker=0)  # nothing to pop
    g.event(1, Kind.GC_BEGIN, 500, generation=0)
    g.event(1, Kind.GC_BEGIN, 550, generation=1)
    g.event(1, Kind.GC_END, 600, generation=1, collected=0, uncollectable=0)
    g.event(1, Kind.THREAD_END, 900, tid=1)
    m = build(_load(g))
    check_model(m)
    t = m.threads[1]
    assert (t.start, t.end) == (10, 900)
    states = [(i.start, i.end, i.state, i.reason) for i in t.intervals]
    assert states[:4] == [
        (10, 100, State.RUNNING, None),
        (100, 200, State.BLOCKED, BlockReason.CONDITION),
        (200, 300, State.BLOCKED, BlockReason.LOCK),
        (300, 500, State.RUNNING, None),
    ]
    assert t.time_in(State.GC) == 400  # the outer GC never ended: to the thread's end
    assert [(p.start, p.end, p.generation) for p in m.gc_pauses] == [(550, 600, 1)]


def test_odd_task_sequences() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=10_000)
    g.event(1, Kind.TASK_STEP_END, 100, task=9)  # began before the window
    g.event(1, Kind.TASK_WAIT, 100, task=9, reason=BlockReason.AWAIT, what="Future", stack=STACK)
    g.event(1, Kind.TASK_STEP_BEGIN, 200, task=9)
    g.event(1, Kind.TASK_STEP_BEGIN, 300, task=9)  # nested / duplicated begin
    g.event(1, Kind.TASK_STEP_END, 400, task=9)
    g.event(1, Kind.TASK_WAIT, 400, task=77, reason=99, what="", stack=0)  # unknown task, reason
    g.event(1, Kind.TASK_CREATE, 500, task=3, name="a", coro="coro_a", parent=0)
    g.event(1, Kind.TASK_STEP_BEGIN, 600, task=3)
    g.event(1, Kind.TASK_STEP_END, 700, task=3)
    g.event(1, Kind.TASK_WAIT, 700, task=3, reason=BlockReason.AWAIT, what="", stack=0)
    g.event(1, Kind.TASK_READY, 750, task=3)
    g.event(1, Kind.TASK_STEP_BEGIN, 800, task=3)
    g.event(1, Kind.TASK_STEP_END, 900, task=3)
    g.event(1, Kind.TASK_DONE, 900, task=3, outcome=TaskOutcome.OK, error="")
    g.event(1, Kind.TASK_CREATE, 1000, task=3, name="b", coro="coro_b", parent=0)  # id reused
    g.event(1, Kind.TASK_STEP_BEGIN, 1100, task=3)  # never ends
    g.event(2, Kind.WAKE, 1200, target=55, task=12345, reason=BlockReason.AWAIT, obj=0)
    g.event(1, Kind.LOOP_STALL, 1300, loop=42, task=3, duration=200, stack=STACK)
    g.event(1, Kind.TASK_DONE, 1400, task=4242, outcome=7, error="")
    m = build(_load(g))
    check_model(m)
    t9 = m.tasks[9]
    assert t9.intervals[0].state is State.RUNNING and t9.intervals[1].reason == BlockReason.AWAIT
    assert t9.intervals[1].stack[0].function == "f" and t9.intervals[1].detail == "Future"
    (old,) = [t for t in m.finished_tasks if t.id == 3]
    assert old.name == "a" and old.done == 900 and old.outcome == TaskOutcome.OK
    assert [i.state for i in old.intervals] == [
        State.READY,
        State.RUNNING,
        State.BLOCKED,
        State.READY,
        State.RUNNING,
    ]
    assert old.scheduling_delays == [100, 50]
    new = m.tasks[3]
    assert new.name == "b" and new.done is None and new.intervals[-1].state is State.RUNNING
    assert new.intervals[-1].end == m.end
    assert m.tasks[4242].outcome is None
    assert any(s.task == 3 for lp in m.loops.values() for s in lp.stalls)
    rows = {r.name: r for r in task_breakdown(m)}
    assert rows["coro_a"].count == 1 and rows["coro_a"].ready == 150


def test_loop_idle_callbacks_and_stall_window() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=10_000)
    g.event(1, Kind.LOOP_IDLE_END, 100, loop=42, events=1)  # idle since before the window
    g.event(1, Kind.CALLBACK_BEGIN, 100, loop=42, name="cb")
    g.event(1, Kind.CALLBACK_END, 5000, loop=42)
    g.event(2, Kind.LOOP_STALL, 3000, loop=42, task=0, duration=2900, stack=STACK)
    g.event(2, Kind.LOOP_STALL, 4000, loop=42, task=0, duration=3900, stack=STACK)
    g.event(2, Kind.SAMPLE, 4500, tid=1, task=0, stack=STACK, state=ThreadState.RUNNING)
    g.event(1, Kind.LOOP_IDLE_BEGIN, 6000, loop=42)
    m = build(_load(g))
    check_model(m)
    loop = m.loops[42]
    assert loop.tid == 1
    assert [(i.start, i.end, i.detail) for i in loop.busy] == [(100, 5000, "cb")]
    assert [(i.start, i.end) for i in loop.idle] == [(0, 100), (6000, 10_000)]
    (stall,) = loop.stalls
    assert (stall.start, stall.end, stall.duration) == (100, 5000, 4900)
    assert len(stall.stacks) == 3  # two LOOP_STALL stacks and one sample
    t1 = m.threads[1]
    assert t1.is_loop_thread and t1.intervals[-1].state is State.IDLE


def test_user_tasks_regions_logs_cut() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=10_000)
    g.event(1, Kind.USER_TASK_INFO, 5, id=1, parent=0, name="old")
    g.event(1, Kind.REGION_END, 50, task=1, name="r0")  # began before the window
    g.event(1, Kind.USER_TASK_END, 100, id=1)
    g.event(1, Kind.USER_TASK_END, 150, id=99)  # unknown
    g.event(1, Kind.USER_TASK_BEGIN, 200, id=2, parent=0, name="new")
    g.event(1, Kind.REGION_BEGIN, 300, task=2, name="r")
    g.event(1, Kind.LOG, 350, task=2, category="c", message="m")
    g.event(1, Kind.REGION_END, 400, task=2, name="r")
    g.event(1, Kind.REGION_BEGIN, 500, task=2, name="open")
    m = build(_load(g))
    check_model(m)
    old = m.user_tasks[1]
    assert old.clipped and old.start == 0 and old.end == 100 and old.regions[0].clipped
    assert m.user_tasks[99].clipped
    new = m.user_tasks[2]
    assert new.end is None and new.duration is None
    assert [(r.name, r.start, r.end) for r in new.regions] == [("r", 300, 400), ("open", 500, None)]
    assert new.logs == [(350, "c", "m")]
    assert m.logs[0].task == 2


def test_thread_without_info_and_samples_only() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=1000)
    g.event(5, Kind.SAMPLE, 100, tid=6, task=0, stack=STACK, state=ThreadState.SLEEPING)
    g.event(5, Kind.SAMPLE, 200, tid=6, task=0, stack=STACK, state=9)  # unknown OS state
    g.event(5, Kind.COUNTER, 300, name="sampler_interval_us", value=10_000)
    m = build(_load(g))
    check_model(m)
    t6 = m.threads[6]
    assert t6.name == "" and t6.intervals[0].state is State.UNKNOWN
    assert [s.os_state for s in m.samples] == [ThreadState.SLEEPING, ThreadState.UNKNOWN]
    assert m.sampling_interval_ns == 10 * MS
    assert m.counters["sampler_interval_us"] == [(300, 10_000)]


def test_progress_reported() -> None:
    g = Gen(seq=1, start_ns=0, end_ns=1000)
    g.event(1, Kind.LOG, 10, task=0, category="", message="x")
    seen: list[float] = []
    build(_load(g), progress=seen.append)
    assert seen[-1] == 1.0


def test_random_event_soup_never_raises() -> None:
    """Any sequence of well-typed events (what the reader can return) builds a model
    whose timelines keep their invariants."""
    from pyflight.core.events import ARGS
    from pyflight.format.reader import Event, Frame

    base = _load(Gen(seq=1, start_ns=1000, end_ns=1001))
    rng = random.Random(11)
    kinds = list(Kind)
    stacks = [(), (Frame("f", "a.py", 1),)]

    def value(typ: str) -> Any:
        if typ == "s":
            return rng.choice(["", "x", "pyflight-x"])
        if typ == "k":
            return rng.choice(stacks)
        return rng.choice([0, 1, 2, 3, 7, 99, 1000, 2**64 - 1])

    for _ in range(400):
        events = []
        t = 1000
        for _ in range(rng.randrange(1, 40)):
            kind = rng.choice(kinds)
            t += rng.randrange(0, 50)
            args = [value(a.type) for a in ARGS[kind]]
            events.append(Event((kind, t, rng.choice([1, 2, 3]), *args)))
        soup = dataclasses.replace(base, events=events, end_ns=t + rng.randrange(0, 100))
        model = build(soup)
        check_model(model)


def test_wait_becomes_ready_when_the_loop_wakes() -> None:
    """A loop sleeps in its selector only when nothing is ready: the part of a wait after
    its last wake-up is scheduling delay."""
    g = Gen(seq=1, start_ns=0, end_ns=10_000)
    g.event(1, Kind.TASK_CREATE, 100, task=3, name="a", coro="c", parent=0)
    g.event(1, Kind.TASK_STEP_BEGIN, 200, task=3)
    g.event(1, Kind.TASK_STEP_END, 300, task=3)
    g.event(1, Kind.TASK_WAIT, 300, task=3, reason=BlockReason.AWAIT, what="", stack=STACK)
    g.event(1, Kind.LOOP_IDLE_BEGIN, 400, loop=42)
    g.event(1, Kind.LOOP_IDLE_END, 1000, loop=42, events=1)
    g.event(1, Kind.CALLBACK_BEGIN, 1100, loop=42, name="cb")
    g.event(1, Kind.CALLBACK_END, 1500, loop=42)
    g.event(1, Kind.TASK_STEP_BEGIN, 1600, task=3)
    g.event(1, Kind.TASK_STEP_END, 1700, task=3)
    g.event(1, Kind.TASK_DONE, 1700, task=3, outcome=TaskOutcome.OK, error="")
    m = build(_load(g))
    check_model(m)
    task = m.tasks[3]
    assert [(i.start, i.end, i.state) for i in task.intervals] == [
        (100, 200, State.READY),
        (200, 300, State.RUNNING),
        (300, 1000, State.BLOCKED),
        (1000, 1600, State.READY),
        (1600, 1700, State.RUNNING),
    ]
    assert task.intervals[3].stack[0].function == "f"
    assert task.scheduling_delays == [100, 600]


def test_events_are_read_by_name_outside_the_reader() -> None:
    """The analysis side reads raw events through named accessors (``e.time``, handlers
    unpacking by the vocabulary's names), never by position (``e[3]``)."""
    import re
    from pathlib import Path

    import pyflight

    root = Path(pyflight.__file__).parent
    positional = re.compile(r"\b(?:e|ev|evt|event)\[\d+\]")
    found = [
        f"{path.relative_to(root)}:{n}"
        for package in ("analysis", "export", "report", "viewer")
        for path in sorted((root / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if positional.search(line)
    ]
    assert found == []


def test_sample_taken_after_the_wake_up_says_ready() -> None:
    """A thread sampled between the notify that woke it and the end of its wait was
    waiting for the GIL: the sample says READY, like the interval it falls in (a loaded
    run found it still BLOCKED in test_samples_joined_to_states)."""
    g = Gen(seq=1, start_ns=0, end_ns=10_000_000)
    g.event(1, Kind.BLOCK_BEGIN, 1_000_000, reason=BlockReason.CONDITION, obj=7, stack=STACK)
    g.event(2, Kind.WAKE, 2_000_000, target=1, task=0, reason=BlockReason.CONDITION, obj=7)
    g.event(
        9,
        Kind.SAMPLE,
        3_000_000,
        tid=1,
        task=0,
        stack=STACK,
        state=ThreadState.SLEEPING,
        cpu=50_000,
        span=3_000_000,
    )
    g.event(1, Kind.BLOCK_END, 5_000_000, reason=BlockReason.CONDITION, obj=7, waker=2)
    m = build(_load(g))
    check_model(m)
    states = [(iv.start, iv.end, iv.state) for iv in m.threads[1].intervals if iv.start >= 1_000_000]
    assert states[:2] == [(1_000_000, 2_000_000, State.BLOCKED), (2_000_000, 5_000_000, State.READY)]
    (sample,) = m.samples
    assert sample.state is State.READY and sample.reason is None


def test_sleep_past_the_time_asked_for_is_a_wait_for_the_gil() -> None:
    """time.sleep(0.01) that returned 40 ms late (another thread held the GIL when it
    ended): 10 ms asleep, then READY, and a sample taken in the late part says READY. A
    sleep that ended on time, and one from a trace without the time asked (obj 0), stay
    asleep whole."""
    g = Gen(seq=1, start_ns=0, end_ns=200 * MS)
    sleeps = ((10 * MS, 60 * MS, 10 * MS), (80 * MS, 90 * MS, 10 * MS), (100 * MS, 150 * MS, 0))
    for begin, end, asked in sleeps:
        g.event(1, Kind.BLOCK_BEGIN, begin, reason=BlockReason.SLEEP, obj=asked, stack=STACK)
        g.event(1, Kind.BLOCK_END, end, reason=BlockReason.SLEEP, obj=asked, waker=0)
    g.event(
        9, Kind.SAMPLE, 30 * MS, tid=1, task=0, stack=STACK, state=ThreadState.SLEEPING, cpu=0, span=30 * MS
    )
    m = build(_load(g))
    check_model(m)
    states = [(iv.start, iv.end, iv.state) for iv in m.threads[1].intervals if 10 * MS <= iv.start < 160 * MS]
    assert states == [
        (10 * MS, 20 * MS, State.BLOCKED),
        (20 * MS, 60 * MS, State.READY),
        (60 * MS, 80 * MS, State.RUNNING),
        (80 * MS, 90 * MS, State.BLOCKED),
        (90 * MS, 100 * MS, State.RUNNING),
        (100 * MS, 150 * MS, State.BLOCKED),
        (150 * MS, 200 * MS, State.RUNNING),
    ]
    (sample,) = m.samples
    assert sample.state is State.READY


def test_pool_worker_between_jobs_is_idle_and_its_cpu_goes_where_it_ran() -> None:
    """A ThreadPoolExecutor worker waits for work in a SimpleQueue (C code, no event): the
    time between its jobs is IDLE, and the CPU of a sample that finds it there is charged
    where it was seen running a job, not at the queue's line."""
    job_stack = (("handle", "/app/server.py", 40), ("_worker", "/py/thread.py", 92))
    queue_stack = (("_worker", "/py/thread.py", 89),)
    g = Gen(seq=1, start_ns=0, end_ns=100 * MS)
    g.event(1, Kind.THREAD_START, 0, tid=7, name="pool_0", ident=70, parent=1)
    queued = {"function": "handle", "file": "/app/server.py", "line": 38, "max_workers": 4, "task": 0}
    for job, (begin, end) in enumerate([(10 * MS, 20 * MS), (40 * MS, 50 * MS)], start=1):
        g.event(2, Kind.POOL_JOB_QUEUED, begin - 1, pool=9, job=job, **queued)
        g.event(7, Kind.POOL_JOB_BEGIN, begin, pool=9, job=job)
        g.event(7, Kind.POOL_JOB_END, end, pool=9, job=job)
    for at, stack, os_state, cpu, span in (
        (15, job_stack, ThreadState.RUNNING, 5, 5),
        (30, queue_stack, ThreadState.SLEEPING, 5, 15),
        (60, queue_stack, ThreadState.SLEEPING, 10, 30),
    ):
        g.event(
            5, Kind.SAMPLE, at * MS, tid=7, task=0, stack=stack, state=os_state, cpu=cpu * MS, span=span * MS
        )
    m = build(_load(g))
    check_model(m)
    idle = [(iv.start, iv.end) for iv in m.threads[7].intervals if iv.state is State.IDLE]
    assert idle == [(20 * MS, 40 * MS), (50 * MS, m.threads[7].end)]
    assert {iv.detail for iv in m.threads[7].intervals if iv.state is State.IDLE} == {WAITING_FOR_JOB}
    assert [s.state for s in m.samples] == [State.RUNNING, State.IDLE, State.IDLE]
    charged: dict[str, int] = {}
    for s, ns in cpu_samples(m):
        charged[s.stack[0].function] = charged.get(s.stack[0].function, 0) + ns
    assert charged == {"handle": 20 * MS}  # all of it, none at the queue's line


def _model_repr(m: Model) -> str:
    tasks = [
        (
            t.id,
            t.name,
            t.created,
            t.done,
            t.end,
            t.thread,
            t.steps,
            t.intervals,
            t.scheduling_delays,
            t.columns,
        )
        for t in m.all_tasks()
    ]
    loops = [(k, lp.busy, lp.idle, lp.stalls) for k, lp in sorted(m.loops.items())]
    threads = [(k, th.intervals, th.is_loop_thread) for k, th in m.threads.items()]
    columns = [t.columns for t in m.all_tasks()]
    return repr((tasks, columns, loops, threads, m.blocks, m.wakes, m.samples))


@pytest.mark.skipif(importlib.util.find_spec("pyflight.analysis._steps") is None, reason="C steps not built")
def test_step_handlers_in_c_build_the_same_model(
    recorded: tuple[Model, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """analysis/c/_steps.c (TASK_STEP_BEGIN / TASK_STEP_END) builds the model the Python
    handlers build, on a recorded trace and on random soups of task events (steps out of
    order, lost begins, reused ids, waits split where the loop woke from idle)."""
    from pyflight.analysis.builder import Builder
    from pyflight.core import FORCE_PURE_ENV
    from pyflight.format.reader import Event, Frame

    def both(trace: Trace) -> tuple[str, str]:
        monkeypatch.delenv(FORCE_PURE_ENV, raising=False)
        assert "_steps" in type(Builder(trace).handlers[Kind.TASK_STEP_BEGIN].__self__).__module__
        fast = _model_repr(build(trace))
        monkeypatch.setenv(FORCE_PURE_ENV, "1")
        assert Builder(trace).handlers[Kind.TASK_STEP_BEGIN].__func__ is Builder.task_step_begin  # type: ignore[attr-defined]
        return fast, _model_repr(build(trace))

    model, _info = recorded
    fast, pure = both(model.trace)
    assert "Step(" in fast and fast == pure
    base = _load(Gen(seq=1, start_ns=1000, end_ns=1001))
    rng = random.Random(5)
    stack = (Frame("f", "a.py", 1),)
    for _ in range(300):
        events = []
        t = 1000
        for _ in range(rng.randrange(1, 60)):
            t += rng.choice([0, 1, 5, 20])
            tid, task = rng.choice([1, 1, 2]), rng.choice([3, 4, 5])
            kind = rng.choice(
                [Kind.TASK_STEP_BEGIN, Kind.TASK_STEP_END] * 4
                + [Kind.TASK_WAIT, Kind.TASK_BLOCK, Kind.TASK_READY, Kind.TASK_DONE, Kind.TASK_CREATE]
                + [Kind.LOOP_IDLE_BEGIN, Kind.LOOP_IDLE_END, Kind.WAKE]
            )
            args: tuple[Any, ...] = {
                Kind.TASK_WAIT: (task, BlockReason.AWAIT, "Future", stack),
                Kind.TASK_BLOCK: (task, BlockReason.CONDITION, 7, "Queue.get", 0, stack),
                Kind.TASK_DONE: (task, TaskOutcome.OK, ""),
                Kind.TASK_CREATE: (task, "t", "c", 0),
                Kind.LOOP_IDLE_BEGIN: (42,),
                Kind.LOOP_IDLE_END: (42, 1),
                Kind.WAKE: (tid, task, BlockReason.AWAIT, 0),
            }.get(kind, (task,))
            events.append(Event((kind, t, tid, *args)))
        soup = dataclasses.replace(base, events=events, end_ns=t + 10)
        fast, pure = both(soup)
        assert fast == pure
