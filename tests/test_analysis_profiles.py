"""Profiles from a recorded program: the busy function dominates the CPU profile, the
lock-waiting one the LOCK blocking profile; folded output is well-formed."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import pytest

import pyflight
from pyflight.analysis import (
    Model,
    Profile,
    State,
    blocking_profile,
    build,
    cpu_profile,
    scheduling_profile,
    stall_profile,
    wall_profile,
)
from pyflight.core import BACKEND_NAME
from pyflight.core.events import BlockReason, Kind, ThreadState
from pyflight.format.reader import Frame, loads
from tracegen import Gen, trace

MS = 1_000_000
FOLDED = re.compile(r"^[^;\n]+(;[^;\n]+)* \d+$")


def burn_cpu(seconds: float) -> None:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += sum(range(100))


def wait_for_lock(lock: threading.Lock) -> None:
    with lock:
        pass


def _program(info: dict[str, Any]) -> None:
    lock = threading.Lock()
    lock.acquire()
    waiters = [threading.Thread(target=wait_for_lock, args=(lock,), name=f"waiter-{i}") for i in range(2)]
    burner = threading.Thread(target=burn_cpu, args=(0.6,), name="burner")
    for t in (*waiters, burner):
        t.start()
    time.sleep(0.15)
    lock.release()
    for t in (*waiters, burner):
        t.join()

    async def stalls() -> None:
        time.sleep(0.3)  # the watchdog (threshold 0.1 s) looks every 25 ms: room to spare

    asyncio.run(stalls())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    path = tmp_path_factory.mktemp("profiles") / "p.pyfl"
    info: dict[str, Any] = {}
    with pyflight.FlightRecorder(source_options={"sampler": {"interval": 0.005}}) as rec:
        _program(info)
        rec.write_to(path)
    return build(pyflight.load(path))


def _share(profile: Profile, function: str) -> float:
    """Fraction of the profile whose stack contains ``function``."""
    total = profile.total
    hit = sum(
        v
        for stack, v in profile.stacks.items()
        if any(f.function == function or f.function.endswith("." + function) for f in stack)
    )
    return hit / total if total else 0.0


def _check_folded(profile: Profile) -> None:
    lines = profile.folded()
    assert len(lines) == len(profile.stacks)
    for line in lines:
        assert FOLDED.match(line), line
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == profile.total


def test_cpu_profile_names_the_busy_function(model: Model) -> None:
    prof = cpu_profile(model)
    assert prof.unit == "nanoseconds" and prof.total > 0
    by_leaf: dict[str, int] = {}
    for stack, value in prof.stacks.items():
        leaf = stack[0].function if stack else ""
        by_leaf[leaf] = by_leaf.get(leaf, 0) + value
    assert max(by_leaf, key=by_leaf.__getitem__) == "burn_cpu", by_leaf
    assert _share(prof, "burn_cpu") >= 0.3, by_leaf
    top_stack, top_value = prof.top(1)[0]
    assert any(f.function == "burn_cpu" for f in top_stack)
    assert top_value == max(prof.stacks.values())
    _check_folded(prof)
    folded_top = prof.folded()[0]
    assert folded_top.rsplit(" ", 1)[0].split(";")[-1].startswith("burn_cpu (")  # innermost last


def test_wall_profile_has_everyone_but_the_recorder(model: Model) -> None:
    prof = wall_profile(model)
    assert _share(prof, "burn_cpu") > 0
    ours = {t.tid for t in model.threads.values() if t.is_pyflight}
    kept = [  # a thread's exit sample (its last CPU delta) is not a place it spent time
        s for s in model.samples if s.tid not in ours and s.os_state is not ThreadState.ZOMBIE
    ]
    # each sample stands for the wall time since its thread's previous one, so a thread's
    # samples add up to the time it was watched, however often the sampler got to run
    watched = {}
    for tid in {s.tid for s in kept}:
        times = [s.time for s in kept if s.tid == tid]
        watched[tid] = max(times) - min(times) + model.sampling_interval_ns
    assert ours and prof.total == sum(watched.values())
    _check_folded(prof)


@pytest.mark.skipif(BACKEND_NAME != "c", reason="locks are traced by the C core only")
def test_blocking_profile_names_the_lock_waiter(model: Model) -> None:
    prof = blocking_profile(model, BlockReason.LOCK)
    assert prof.total >= 2 * 100 * MS  # two waiters, ~150 ms each
    assert _share(prof, "wait_for_lock") >= 0.9
    (stack, _value) = prof.top(1)[0]
    assert stack[0].function == "wait_for_lock"
    _check_folded(prof)


def test_sleep_and_stall_profiles(model: Model) -> None:
    sleep = blocking_profile(model, BlockReason.SLEEP)
    assert _share(sleep, "_program") >= 0.5
    stall = stall_profile(model)
    assert stall.total >= 280 * MS
    assert _share(stall, "stalls") >= 0.9
    _check_folded(stall)
    _check_folded(scheduling_profile(model))


def test_profiles_of_a_hand_made_trace() -> None:
    stack = (("inner", "/a.py", 1), ("outer;odd", "/a.py", 2))
    g = Gen(seq=1, start_ns=0, end_ns=100 * MS)
    g.event(9, Kind.COUNTER, 1, name="sampler_interval_us", value=1000)
    for i in range(10):  # a sample every millisecond, the interval
        g.event(9, Kind.SAMPLE, (10 + i) * MS, tid=1, task=0, stack=stack, state=ThreadState.RUNNING)
        g.event(9, Kind.SAMPLE, (10 + i) * MS, tid=2, task=0, stack=(), state=ThreadState.SLEEPING)
    g.event(1, Kind.TASK_CREATE, 20 * MS, task=5, name="t", coro="job", parent=0)
    g.event(1, Kind.TASK_STEP_BEGIN, 30 * MS, task=5)
    g.event(1, Kind.TASK_STEP_END, 31 * MS, task=5)
    g.event(1, Kind.TASK_WAIT, 31 * MS, task=5, reason=BlockReason.AWAIT, what="Future", stack=0)
    g.event(1, Kind.TASK_STEP_BEGIN, 50 * MS, task=5)
    m = build(loads(trace([g])))
    cpu = cpu_profile(m)
    key = tuple(Frame(*f) for f in stack)
    assert cpu.stacks == {key: 10 * 1000 * 1000}
    (line,) = cpu.folded()
    assert line == "outer:odd (/a.py:2);inner (/a.py:1) 10000000"
    wall = wall_profile(m)
    assert wall.stacks[()] == 10 * MS and wall.folded()[-1] == "(no stack) 10000000"
    # slowed to a sample every 5 ms, the sampler's samples still stand for all that time
    slow = Gen(seq=1, start_ns=0, end_ns=100 * MS)
    slow.event(9, Kind.COUNTER, 1, name="sampler_interval_us", value=1000)
    for i in range(10):
        slow.event(9, Kind.SAMPLE, (10 + 5 * i) * MS, tid=2, task=0, stack=(), state=ThreadState.SLEEPING)
    assert wall_profile(build(loads(trace([slow])))).total == (1 + 9 * 5) * MS
    awaiting = blocking_profile(m, BlockReason.AWAIT)
    assert awaiting.stacks == {(Frame("job", "", 0),): 19 * MS}
    sched = scheduling_profile(m)
    assert sched.stacks == {(Frame("job", "", 0),): 10 * MS}
    assert stall_profile(m).total == 0 and stall_profile(m).folded() == []


def test_measured_cpu_is_charged_where_the_thread_ran_and_gil_waits_are_ready() -> None:
    """A thread seen blocked at its lock line used its CPU where it was seen running; a
    sample taken on demand (no CPU measure) adds nothing; time a thread neither blocked
    nor spent on a CPU while another thread computed is READY."""
    hashing = (("work", "/app/w.py", 21),)
    waiting = (("work", "/app/w.py", 19),)
    g = Gen(seq=1, start_ns=0, end_ns=100 * MS)
    g.event(9, Kind.COUNTER, 1, name="sampler_interval_us", value=10_000)
    g.event(1, Kind.THREAD_START, 1, tid=1, name="hasher", ident=1, parent=0)
    g.event(2, Kind.THREAD_START, 1, tid=2, name="other", ident=2, parent=0)
    g.event(
        9,
        Kind.SAMPLE,
        10 * MS,
        tid=1,
        task=0,
        stack=hashing,
        state=ThreadState.SLEEPING,
        cpu=4 * MS,
        span=10 * MS,
    )
    g.event(
        9,
        Kind.SAMPLE,
        10 * MS,
        tid=2,
        task=0,
        stack=hashing,
        state=ThreadState.SLEEPING,
        cpu=6 * MS,
        span=10 * MS,
    )
    g.event(1, Kind.BLOCK_BEGIN, 15 * MS, reason=BlockReason.LOCK, obj=7, stack=waiting)
    g.event(
        9,
        Kind.SAMPLE,
        20 * MS,
        tid=1,
        task=0,
        stack=waiting,
        state=ThreadState.SLEEPING,
        cpu=3 * MS,
        span=10 * MS,
    )
    g.event(9, Kind.SAMPLE, 21 * MS, tid=1, task=0, stack=waiting, state=ThreadState.RUNNING)  # on demand
    g.event(1, Kind.BLOCK_END, 25 * MS, reason=BlockReason.LOCK, obj=7, waker=0)
    m = build(loads(trace([g])))
    cpu = cpu_profile(m)
    key = tuple(Frame(*f) for f in hashing)
    assert cpu.stacks == {key: 13 * MS}  # 4 + 3 (hasher) + 6 (other): none at the lock line
    hasher = m.threads[1]
    ready = [iv for iv in hasher.intervals if iv.state is State.READY]
    # 10 ms running before the first sample, 4 on a CPU, the other thread used 6 meanwhile
    assert abs(sum(iv.duration for iv in ready) - 6 * MS) <= 1000
    assert all(iv.end <= 10 * MS for iv in ready)
