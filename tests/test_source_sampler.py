"""The stack sampler source, end to end: record with it, write a trace, read it back."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyflight
from pyflight.core.events import Kind, ThreadState
from pyflight.format.reader import Event, Trace
from pyflight.sources import SourceWarning
from pyflight.sources.sampler import THREAD_NAME, StackSampler, sample_thread_now


def sampler_of(rec: pyflight.FlightRecorder) -> StackSampler:
    (source,) = [s for s in rec.sources if isinstance(s, StackSampler)]
    return source


def samples(trace: Trace, tid: int) -> list[Event]:
    return [e for e in trace.events if e.kind == Kind.SAMPLE and e.arg("tid") == tid]


def functions(event: Event) -> list[str]:
    return [frame.function for frame in event.stack]


def interval_counters(trace: Trace) -> list[int]:
    return [
        e.arg("value")
        for e in trace.events
        if e.kind == Kind.COUNTER and e.arg("name") == "sampler_interval_us"
    ]


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def record(tmp_path: Path, seconds: float, **options: Any) -> Trace:
    """Run a recorder with only the sampler for ``seconds``; return what it wrote. No CPU
    budget: these tests are about what is sampled (the pure core's sampler, on a loaded
    machine, is over 1% and would be slowed; tests/test_budget.py covers that)."""
    rec = pyflight.FlightRecorder(sources=["sampler"], source_options={"sampler": options}, cpu_budget=None)
    with rec:
        time.sleep(seconds)
        rec.write_to(tmp_path / "trace.pyfl")
    return pyflight.load(tmp_path / "trace.pyfl")


def spin_here(stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            n += 1


def wait_here(event: threading.Event) -> None:
    event.wait()


@pytest.fixture(scope="module")
def busy_and_blocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trace, int, int]]:
    """One recording of a thread spinning in spin_here and one blocked in wait_here."""
    stop = threading.Event()
    spinner = threading.Thread(target=spin_here, args=(stop,), name="spinner")
    waiter = threading.Thread(target=wait_here, args=(stop,), name="waiter")
    spinner.start()
    waiter.start()
    try:
        trace = record(tmp_path_factory.mktemp("sampler"), 2.0)
    finally:
        stop.set()
        spinner.join()
        waiter.join()
    assert spinner.native_id and waiter.native_id
    yield trace, spinner.native_id, waiter.native_id


def test_busy_thread_is_sampled_running_in_its_function(busy_and_blocked: tuple[Trace, int, int]) -> None:
    trace, spinner, _ = busy_and_blocked
    found = samples(trace, spinner)
    assert len(found) >= 10
    in_spin = [e for e in found if functions(e)[0] == "spin_here"]
    assert len(in_spin) >= 0.9 * len(found)
    # HOLDING_GIL: read natively while it held the GIL (running too)
    running = [e for e in found if e.arg("state") in (ThreadState.RUNNING, ThreadState.HOLDING_GIL)]
    assert len(running) >= 0.7 * len(found), [ThreadState(e.arg("state")).name for e in found]
    sampler_tids = {e.thread for e in found}
    assert spinner not in sampler_tids and len(sampler_tids) == 1  # recorded by the sampler thread
    assert all(e.arg("task") == 0 for e in found)


def test_blocked_thread_is_sampled_sleeping_where_it_waits(busy_and_blocked: tuple[Trace, int, int]) -> None:
    trace, _, waiter = busy_and_blocked
    found = samples(trace, waiter)
    assert len(found) >= 10
    assert all("wait_here" in functions(e) for e in found)
    assert functions(found[0])[0] in ("Condition.wait", "Event.wait")
    sleeping = [e for e in found if e.arg("state") == ThreadState.SLEEPING]
    assert len(sleeping) >= 0.9 * len(found)


def test_the_sampler_does_not_sample_itself(busy_and_blocked: tuple[Trace, int, int]) -> None:
    trace = busy_and_blocked[0]
    sampler_tids = {e.thread for e in trace.events if e.kind == Kind.SAMPLE}
    assert not sampler_tids & {e.arg("tid") for e in trace.events if e.kind == Kind.SAMPLE}
    assert interval_counters(trace)  # the rate is in the trace


async def blocker(tasks: list[asyncio.Task[None]]) -> None:
    task = asyncio.current_task()
    assert task is not None
    # kept alive: a task's id is its address, which the next task made (asyncio.run's
    # shutdown tasks) may reuse once it is freed
    tasks.append(task)  # type: ignore[arg-type]
    time.sleep(0.3)  # blocks the event loop: what the sampler must catch


@pytest.mark.parametrize("task_class", ["default", "python"])
def test_asyncio_task_running_on_a_thread_is_attributed(tmp_path: Path, task_class: str) -> None:
    tasks: list[asyncio.Task[None]] = []

    async def main() -> None:
        if task_class == "python":  # pure-Python Task: the other _current_tasks path
            loop = asyncio.get_running_loop()
            loop.set_task_factory(lambda loop, coro: asyncio.tasks._PyTask(coro, loop=loop))  # type: ignore[attr-defined]
        await asyncio.create_task(blocker(tasks))

    rec = pyflight.FlightRecorder(sources=["sampler"])
    with rec:
        asyncio.run(main())
        rec.write_to(tmp_path / "trace.pyfl")
    trace = pyflight.load(tmp_path / "trace.pyfl")
    task_ids = [id(task) for task in tasks]
    found = [e for e in samples(trace, threading.get_native_id()) if "blocker" in functions(e)]
    # a stack read natively at the tick (the loop thread holding the GIL, on its way in or
    # out of the sleep) is recorded once the sampler has the GIL: by then the task may be
    # done, and it says 0 (not known) rather than guess
    read_holding = [e for e in found if e.arg("state") == ThreadState.HOLDING_GIL]
    found = [e for e in found if e not in read_holding]
    assert len(found) >= 5
    assert all(e.arg("task") == task_ids[0] for e in found)
    # a tick's states are read before its stacks: on a loaded machine one may find the
    # loop thread still runnable on its way into the sleep (or out of it) and its stack
    # in the sleep, once the sampler has the GIL
    assert sum(e.arg("state") != ThreadState.SLEEPING for e in found) <= 2, [e.arg("state") for e in found]
    assert all(e.arg("task") in (task_ids[0], 0) for e in read_holding)
    others = [e for e in samples(trace, threading.get_native_id()) if "blocker" not in functions(e)]
    assert all(e.arg("task") != task_ids[0] for e in others)


def test_small_budget_stretches_the_interval_and_holds_the_cpu_share(tmp_path: Path) -> None:
    idle = threading.Event()
    threads = [threading.Thread(target=wait_here, args=(idle,)) for _ in range(8)]
    for t in threads:
        t.start()
    budget = 0.005
    rec = pyflight.FlightRecorder(
        sources=["sampler"], source_options={"sampler": {"interval": 0.001, "cpu_budget": budget}}
    )
    try:
        with rec:
            sampler = sampler_of(rec)
            time.sleep(0.5)  # settle
            (thread,) = sampler_threads()
            assert thread.native_id
            clock = time.pthread_getcpuclockid(thread.ident or 0)
            cpu0, wall0 = time.clock_gettime_ns(clock), time.monotonic_ns()
            time.sleep(1.5)
            share = (time.clock_gettime_ns(clock) - cpu0) / (time.monotonic_ns() - wall0)
            rec.write_to(tmp_path / "trace.pyfl")
            interval = sampler.current_interval
    finally:
        idle.set()
        for t in threads:
            t.join()
    counters = interval_counters(pyflight.load(tmp_path / "trace.pyfl"))
    assert counters[0] == 1000  # the configured interval, first
    assert max(counters) >= 5000 and interval >= 0.005  # stretched at least 5x
    assert 0.2 * budget < share <= 2.5 * budget, share
    assert all(us <= 1_000_000 for us in counters)


def test_the_sampler_paces_itself_by_its_cpu_over_time_not_by_its_last_ticks() -> None:
    """The first tick that meets a program's new threads can cost ~10 ms (pure core, a
    loaded machine): pacing by an average cost per tick then kept the sampler at a tick
    a second for seconds, and the pure core missed the GIL holds gil-hog looks for. Now
    that is paid from the credit of a quiet start; steady ticks settle at cost / budget;
    a one-off spike (a GC the tick started) counts 3x the average at most; a lasting
    rise slows the sampler, and when it is over the pace is back at once."""
    ms = 1_000_000
    sampler = StackSampler(interval=0.01, cpu_budget=0.01)

    def tick(cost: int) -> float:
        sampler._adapt(cost, round(sampler.current_interval * 1e9))
        return sampler.current_interval

    tick(5 * ms)  # the first tick: start-up, not counted
    assert tick(9 * ms) == 0.01  # the costly first sight of the threads, from the credit
    for _ in range(60):  # steady ticks costing 0.3 ms: 3% at 10 ms apart, so 30 ms apart
        steady = tick(ms * 3 // 10)
    assert steady == pytest.approx(0.03, rel=0.05)
    assert tick(55 * ms) == pytest.approx(0.09, rel=0.1)  # a GC in the tick: 3x at most
    assert tick(ms * 3 // 10) == pytest.approx(0.03, rel=0.1)
    for _ in range(20):  # the ticks really cost 3 ms now (hundreds of threads)
        slow = tick(3 * ms)
    assert slow == pytest.approx(0.3, rel=0.05)
    assert tick(ms * 3 // 10) == pytest.approx(0.03, rel=0.1)  # and back at once


def test_a_thread_that_ends_between_ticks_reports_the_cpu_of_its_whole_life(tmp_path: Path) -> None:
    """A thread per request lives a few ms: it can start and end between two ticks (or
    all of a run, with the budget slowing the sampler). Its CPU is not lost: its exit
    records a last SAMPLE (ZOMBIE) with the CPU of its whole life, over its lifetime."""
    rec = pyflight.FlightRecorder(
        sources=["threads", "sampler"], source_options={"sampler": {"interval": 1.0}}, cpu_budget=None
    )
    with rec:  # the sampler's first tick is ~1 s away

        def work() -> None:
            end = time.thread_time() + 0.03
            while time.thread_time() < end:
                pass

        t = threading.Thread(target=work, name="request-1")
        t.start()
        t.join()
        rec.write_to(tmp_path / "trace.pyfl")
    trace = pyflight.load(tmp_path / "trace.pyfl")
    [last] = samples(trace, t.native_id or 0)
    assert last.arg("state") == ThreadState.ZOMBIE
    assert 30_000_000 <= last.arg("cpu") < 200_000_000
    assert last.arg("cpu") <= last.arg("span") < 2_000_000_000


def test_stop_removes_the_thread_promptly() -> None:
    rec = pyflight.FlightRecorder(sources=["sampler"], source_options={"sampler": {"interval": 1.0}})
    rec.start()
    source = sampler_of(rec)
    assert len(sampler_threads()) == 1
    started = time.monotonic()
    rec.stop()
    assert time.monotonic() - started < 0.5  # woken, not waiting out its 1 s interval
    assert sampler_threads() == []
    assert not source.installed and not source._procs  # stat files closed


def test_install_uninstall_cycles_leave_nothing_behind() -> None:
    with pyflight.FlightRecorder(sources=[]):
        sampler = StackSampler(interval=0.001)
        fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        for _ in range(5):
            sampler.install()
            time.sleep(0.02)
            sampler.uninstall()
            assert sampler_threads() == []
        if fds_before:
            assert len(os.listdir("/proc/self/fd")) == fds_before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() of a multi-threaded process
def test_fork_child_has_no_sampler_and_can_stop_cleanly() -> None:
    with pyflight.FlightRecorder(sources=["sampler"]) as rec:
        source = sampler_of(rec)
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:  # child: the recorder was stopped by the fork hook
            code = 0
            try:
                if sampler_threads() or source.installed or rec.enabled:
                    code = 1
                rec.stop()
                source.uninstall()
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(sampler_threads()) == 1  # the parent's goes on


def test_fault_in_a_tick_disables_the_source(tmp_path: Path) -> None:
    def boom(me: int) -> None:
        raise RuntimeError("boom in tick")

    rec = pyflight.FlightRecorder(sources=["sampler"], source_options={"sampler": {"interval": 0.005}})
    with rec, pytest.warns(SourceWarning, match="sampler.*boom in tick"):
        source = sampler_of(rec)
        source._tick = boom  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while source.disabled_reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for thread in sampler_threads():
            thread.join(2)
        rec.write_to(tmp_path / "trace.pyfl")
    assert not source.installed and sampler_threads() == []
    trace = pyflight.load(tmp_path / "trace.pyfl")
    disabled = [e for e in trace.events if e.kind == Kind.SOURCE_DISABLED]
    assert [e.arg("source") for e in disabled] == ["sampler"]
    assert "RuntimeError: boom in tick" in disabled[0].arg("reason")


def test_bad_option_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    rec = pyflight.FlightRecorder(sources=["sampler"], source_options={"sampler": {"interval": 0}})
    with pytest.warns(SourceWarning, match="interval"), rec:
        assert sampler_threads() == []
        rec.write_to(tmp_path / "trace.pyfl")
    disabled = [e for e in pyflight.load(tmp_path / "trace.pyfl").events if e.kind == Kind.SOURCE_DISABLED]
    assert [e.arg("source") for e in disabled] == ["sampler"]
    with pytest.raises(TypeError, match="intervall"):
        StackSampler(intervall=0.1).install()


def test_thread_state_can_be_turned_off(tmp_path: Path) -> None:
    stop = threading.Event()
    waiter = threading.Thread(target=wait_here, args=(stop,))
    waiter.start()
    try:
        trace = record(tmp_path, 0.2, thread_state=False)
    finally:
        stop.set()
        waiter.join()
    found = samples(trace, waiter.native_id or 0)
    assert found and all(e.arg("state") == ThreadState.UNKNOWN for e in found)


@pytest.mark.parametrize("installed", [True, False])
def test_sample_thread_now_records_one_sample_from_the_caller(tmp_path: Path, installed: bool) -> None:
    stop = threading.Event()
    waiter = threading.Thread(target=wait_here, args=(stop,))
    waiter.start()
    # a long interval: the only samples of the waiter are the ones asked for
    rec = pyflight.FlightRecorder(
        sources=["sampler"] if installed else [], source_options={"sampler": {"interval": 1.0}}
    )
    try:
        with rec:
            take: Callable[[int], bool] = (
                sampler_of(rec).sample_thread_now if installed else sample_thread_now
            )
            time.sleep(0.05)
            assert take(waiter.ident or 0)
            assert take(threading.get_ident())
            assert not take(123456789)  # no such thread
            rec.write_to(tmp_path / "trace.pyfl")
    finally:
        stop.set()
        waiter.join()
    assert not sample_thread_now(threading.get_ident())  # no recorder running: nothing recorded
    trace = pyflight.load(tmp_path / "trace.pyfl")
    mine = [e for e in samples(trace, waiter.native_id or 0) if e.thread == threading.get_native_id()]
    assert len(mine) == 1 and "wait_here" in functions(mine[0])
    assert mine[0].arg("state") in (ThreadState.SLEEPING, ThreadState.UNKNOWN)
    me = [e for e in samples(trace, threading.get_native_id()) if e.thread == threading.get_native_id()]
    assert len(me) == 1
    assert functions(me[0])[0] == sys._getframe().f_code.co_qualname


SUBINTERPRETERS = """
import pyflight
rec = pyflight.FlightRecorder().start()
import _testcapi
for _ in range(5):
    code = "import threading as T, time\\nt = T.Thread(target=time.sleep, args=(0.02,))\\nt.start(); t.join()"
    assert _testcapi.run_in_subinterp(code) == 0
rec.stop()
print("survived")
"""


def test_subinterpreters_do_not_crash_the_recorder(tmp_path: Path) -> None:
    """sys._current_frames() also returns other interpreters' frames; holding those after
    their interpreter is destroyed crashed CPython. The C core samples this interpreter only."""
    import subprocess

    from pyflight import core

    if core.BACKEND_NAME != "c":
        pytest.skip("only the C core can list this interpreter's threads alone")
    pytest.importorskip("_testcapi")
    script = tmp_path / "subinterp.py"
    script.write_text(SUBINTERPRETERS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "survived" in result.stdout


def test_sampler_does_not_keep_finished_threads_alive() -> None:
    """CPython's own test suites check that no Thread outlives its test."""
    import gc
    import weakref

    with pyflight.FlightRecorder(sources=["sampler"]):
        worker = threading.Thread(target=time.sleep, args=(0.15,))
        worker.start()
        worker.join()
        ref = weakref.ref(worker)
        del worker
        time.sleep(0.05)
        gc.collect()
        assert ref() is None


def test_a_thread_that_stops_running_is_not_reported_running(tmp_path: Path) -> None:
    """A thread sampled RUNNING that then blocks (using no CPU since) must read as sleeping."""
    from pyflight.core.events import Kind, ThreadState

    marks: dict[str, int] = {}
    release = threading.Event()

    def spin_then_wait() -> None:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        marks["blocked"] = time.monotonic_ns()
        release.wait(1.0)

    with pyflight.FlightRecorder(sources=["sampler"]) as rec:
        worker = threading.Thread(target=spin_then_wait)
        worker.start()
        time.sleep(0.9)
        release.set()
        worker.join()
        rec.write_to(tmp_path / "t.pyfl")
    trace = pyflight.load(tmp_path / "t.pyfl")
    late = [
        e.arg("state")
        for e in trace.events
        if e.kind == Kind.SAMPLE
        and e.arg("tid") == worker.native_id
        and marks["blocked"] + 100_000_000 < e.time < marks["blocked"] + 500_000_000
    ]
    assert late, "no samples while the thread was blocked"
    assert ThreadState.RUNNING not in late, late


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU clocks: Linux")
def test_samples_carry_the_cpu_each_thread_used(tmp_path: Path) -> None:
    """The CPU deltas of a thread's samples add up to what its own kernel clock says;
    a thread that sleeps gets (almost) none."""
    used: dict[str, float] = {}
    go = threading.Event()

    def burn() -> None:
        go.wait()
        began = time.thread_time()
        while time.thread_time() - began < 0.4:
            sum(range(1000))
        used["burn"] = time.thread_time() - began

    def nap() -> None:
        go.wait()
        time.sleep(0.4)

    rec = pyflight.FlightRecorder(sources=["sampler"])
    with rec:
        threads = [threading.Thread(target=burn), threading.Thread(target=nap)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(samples_of_threads(rec, threads)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # both seen by the sampler before the work begins
        go.set()
        for t in threads:
            t.join()
        rec.write_to(tmp_path / "trace.pyfl")
    trace = pyflight.load(tmp_path / "trace.pyfl")
    burn_tid, nap_tid = (t.native_id for t in threads)
    burned = sum(e.arg("cpu") for e in samples(trace, burn_tid)) / 1e9
    assert all(e.arg("span") > 0 for e in samples(trace, burn_tid))
    # the last span before the thread ended is not sampled: up to one (stretched) interval
    assert 0.5 * used["burn"] <= burned <= used["burn"] * 1.05, (burned, used)
    napped = sum(e.arg("cpu") for e in samples(trace, nap_tid)) / 1e9
    assert napped < 0.1 * burned


def samples_of_threads(rec: pyflight.FlightRecorder, threads: list[threading.Thread]) -> set[int]:
    """Native ids of ``threads`` the sampler has sampled already."""
    seen = set(sampler_of(rec)._procs)
    return {t.native_id for t in threads if t.native_id in seen}


def test_no_frame_is_held_while_a_tick_reads_thread_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame held by the sampler keeps the locals of a returned function alive; held
    across a GIL release (reading a new thread's /proc state) it kept a program's sqlite3
    cursor open while its thread committed ("SQL statements in progress"). States are
    read before the stacks, new threads' too."""
    from pyflight.core import backend
    from pyflight.sources import sampler as sampler_module

    me = threading.get_ident()  # the ticks run here (the sampler's own thread also ticks)
    holding = [False]
    read_while_holding: list[int] = []
    real_frames = backend.current_frames

    def current_frames() -> dict[int, Any]:
        if threading.get_ident() == me:
            holding[0] = True
        return real_frames()

    real_state = sampler_module.StackSampler._state

    def state(self: Any, tid: int, now: int) -> int:
        if holding[0] and threading.get_ident() == me:
            read_while_holding.append(tid)
        return real_state(self, tid, now)

    monkeypatch.setattr(backend, "current_frames", current_frames)
    monkeypatch.setattr(sampler_module.StackSampler, "_state", state)
    rec = pyflight.FlightRecorder(sources=["sampler"], source_options={"sampler": {"interval": 1.0}})
    with rec:
        source = sampler_of(rec)
        stop = threading.Event()
        for _ in range(3):  # threads the sampler meets for the first time, tick after tick
            worker = threading.Thread(target=stop.wait)
            worker.start()
            source._tick(me)
            holding[0] = False
            stop.set()
            worker.join()
            stop.clear()
    assert source.samples > 0
    assert read_while_holding == []
